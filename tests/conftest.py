"""Shared test helpers: official fixtures, randomized BatchNorm statistics and layer scales.

Fixtures: ``tests/fixtures/apple-mini/`` (in the repository, always used) holds outputs of the
official implementation on two narrow configurations. The full-size ones
(``../shared/fixtures/apple`` next to the repository, or ``$FASTVIT_APPLE_FIXTURES``) are an
optional extra check: tests that take ``full_fixtures`` skip when the folder is absent.

Markers: ``slow`` marks the longest end-to-end checks (DDP, torch.compile, learning runs,
subprocess CLI runs). Plain ``pytest`` deselects them (pyproject addopts) so the default suite
stays within its time budget; ``pytest -m slow`` runs them, ``pytest -m ""`` runs everything,
and ``.ci/run`` runs both halves.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from fastvit.models.config import FastViTConfig


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the OpenVINO tests last. With OpenVINO's runtime loaded (its own thread pool), a
    later test that forks a subprocess crashed the pytest process once in a full run
    (segfault, not reproducible in smaller subsets); nothing runs after them now."""
    items.sort(key=lambda item: "test_openvino" in item.nodeid)


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the load average: on this shared 2-core machine durations mean little above 2."""
    try:
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # not available on this platform
        return
    terminalreporter.write_line(f"load average at the end: {load} on {os.cpu_count()} cores")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for every test module (library calls such as the bench or
    ``--threads`` may change it; it is reset per module). Tests use tiny inputs that gain
    nothing from two threads, and on a loaded 2-core machine spinning threads cost ~5x."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


MINI_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "apple-mini"
MINI_NAMES = ("mini_t", "mini_sa")
FULL_FIXTURES = Path(
    os.environ.get("FASTVIT_APPLE_FIXTURES")
    or Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "apple"
)


@functools.cache
def _load_mini(name: str, kind: str) -> dict[str, torch.Tensor]:
    return load_file(MINI_FIXTURES / f"{name}_apple_{kind}.safetensors")


def mini_fixture(name: str, kind: str) -> dict[str, torch.Tensor]:
    """``kind`` = ``unfused`` / ``reparam`` (official state dicts) or ``io`` (input, logits).
    A fresh dict each call (the tensors are shared: do not modify them in place)."""
    return dict(_load_mini(name, kind))


def mini_config(name: str) -> tuple[FastViTConfig, int]:
    """The configuration a mini fixture was made with (its safetensors metadata) as our
    config, and its number of classes."""
    with safe_open(MINI_FIXTURES / f"{name}_apple_unfused.safetensors", "pt") as f:
        raw = json.loads(f.metadata()["config"])
    num_classes = raw.pop("num_classes")
    return FastViTConfig.from_dict(raw, name=name), num_classes


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


def assert_same_detections(ref: dict, out: dict, tol: float = 1e-4) -> None:
    """Every reference detection clear of the cut-off (the lowest kept score, where ranks of
    near-equal scores may swap) appears in ``out`` with the same label, box and score."""
    assert len(ref["boxes"]) > 0
    cutoff = ref["scores"].min().item() + 10 * tol
    checked = 0
    for box, score, label in zip(ref["boxes"], ref["scores"], ref["labels"]):
        if score.item() <= cutoff:
            continue
        same = (
            (out["labels"] == label)
            & ((out["boxes"] - box).abs().amax(1) <= tol)
            & ((out["scores"] - score).abs() <= tol)
        )
        assert same.any(), (box, score, label)
        checked += 1
    assert checked >= min(5, len(ref["boxes"]) // 2), checked


@pytest.fixture
def full_fixtures() -> Path:
    """The full-size official fixtures; skips (one line) where they are not available."""
    if not FULL_FIXTURES.is_dir():
        pytest.skip(f"optional full-size official fixtures not found at {FULL_FIXTURES}")
    return FULL_FIXTURES


@pytest.fixture
def fixtures_dir(full_fixtures: Path) -> Path:
    """Older name of ``full_fixtures``."""
    return full_fixtures
