"""TorchScript (traced) export of the fused model, with metadata and a parity check.

The metadata is stored as the extra file ``fastvit.json`` inside the archive, so
``torch.jit.load(path, _extra_files={"fastvit.json": ""})`` (or :func:`load_torchscript`)
recovers the preprocessing and class names.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from fastvit.card import ModelCard
from fastvit.errors import CheckpointError, ReparamError
from fastvit.export.common import (
    ExportReport,
    fuse_for_export,
    load_source,
    max_abs_diff,
    random_inputs,
    real_inputs,
)
from fastvit.fileio import atomic_path

EXTRA_FILE = "fastvit.json"


def export_torchscript(
    model: nn.Module | str | Path,
    path: str | Path,
    *,
    input_size: int | tuple[int, int] | None = None,
    class_names: list[str] | None = None,
    verify: bool = True,
    check_images: str | Path | None = None,
) -> ExportReport:
    """Trace the fused form of ``model``, save it to ``path`` and check the saved file.

    The reloaded archive is compared with the eager model on random and real inputs
    (including a batch size other than the traced one); above 1e-4 is an error.
    """
    fused = fuse_for_export(load_source(model))
    meta = ModelCard.from_model(fused, input_size=input_size, class_names=class_names)
    example = torch.zeros(1, *meta.input_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit deprecation chatter
        traced = torch.jit.trace(fused, example, check_trace=False)
    path = Path(path)
    extra = {EXTRA_FILE: json.dumps(meta.to_metadata())}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(traced, str(tmp), _extra_files=extra)
    report = ExportReport(path=path, format="torchscript")
    report.details["input_shape"] = ["batch", *meta.input_size]
    if verify:
        loaded, _ = load_torchscript(path)
        with torch.no_grad():
            x_rand = random_inputs(meta, batch=3)
            x_real = real_inputs(meta, 4, check_images)
            report.max_abs_diff_random = max_abs_diff(fused(x_rand), loaded(x_rand))
            report.max_abs_diff_real = max_abs_diff(fused(x_real), loaded(x_real))
        if not report.ok:
            raise ReparamError("TorchScript output differs from PyTorch by "
                               f"{max(report.max_abs_diff_random, report.max_abs_diff_real):.2e} "
                               f"(> {report.tolerance:.0e}); please report this as a bug")
    return report


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, ModelCard]:
    """Load a TorchScript archive written by :func:`export_torchscript` and its metadata."""
    path = Path(path)
    extra = {EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load TorchScript file {path} ({first})") from None
    raw = extra[EXTRA_FILE]
    if not raw:
        raise CheckpointError(f"{path} has no fastvit metadata; re-export it with "
                              "`fastvit export CKPT --format torchscript`")
    try:
        props = json.loads(raw if isinstance(raw, str) else raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path} has a damaged {EXTRA_FILE}; re-export it") from None
    module.eval()
    return module, ModelCard.from_metadata(props, default=ModelCard(form="fused"), where=str(path))
