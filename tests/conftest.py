"""Shared test helpers: randomized BatchNorm statistics and layer scales."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for every test module (library calls such as the bench or
    ``--threads`` may change it; it is reset per module). Tests use tiny inputs that gain
    nothing from two threads, and on a loaded 2-core machine spinning threads cost ~5x."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "apple"


def randomize_bn_and_scales(model: nn.Module, seed: int = 0, eps: float | None = None) -> None:
    """Give every BatchNorm non-trivial statistics/affine terms and every layer scale values
    far from their tiny init, so fusion bugs cannot hide behind identity statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                if eps is not None:
                    m.eps = eps
        for name, p in model.named_parameters():
            if "layer_scale" in name or name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.05)


@pytest.fixture
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"official fixtures not found at {FIXTURES}")
    return FIXTURES
