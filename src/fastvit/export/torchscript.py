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
    output_diff,
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
    (including a batch size other than the traced one); a difference above
    :data:`~fastvit.export.common.PARITY_TOL` of the output scale is an error and leaves no file.
    """
    fused = fuse_for_export(load_source(model))
    meta = ModelCard.from_model(fused, input_size=input_size, class_names=class_names)
    example = torch.zeros(1, *meta.input_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit deprecation chatter
        traced = torch.jit.trace(fused, example, check_trace=False)
    path = Path(path)
    report = ExportReport(path=path, format="torchscript")
    report.details["input_shape"] = ["batch", *meta.input_size]
    with atomic_path(path) as tmp:  # renamed into place only once verified
        extra = {EXTRA_FILE: json.dumps(meta.to_metadata())}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(traced, str(tmp), _extra_files=extra)
        if verify:
            loaded, _ = load_torchscript(tmp)
            with torch.no_grad():
                x_rand = random_inputs(meta, batch=3)
                x_real = real_inputs(meta, 4, check_images)
                report.record("random", output_diff(fused(x_rand), loaded(x_rand)))
                report.record("real", output_diff(fused(x_real), loaded(x_real)))
            if not report.ok:
                raise ReparamError(report.failure())
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
        raise CheckpointError(
            f"{path} has no fastvit metadata; re-export it with "
            "`fastvit export CKPT --format torchscript`"
        )
    try:
        props = json.loads(raw if isinstance(raw, str) else raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path} has a damaged {EXTRA_FILE}; re-export it") from None
    module.eval()
    return module, ModelCard.from_metadata(props, default=ModelCard(form="fused"), where=str(path))
