"""Safe checkpoint reading and atomic writing.

Reading never executes pickled code: torch files are loaded with ``weights_only=True`` and
safetensors files hold only tensors. Every failure becomes a one-line :class:`CheckpointError`.
A training run's ``best.pt``/``last.pt`` is read like any other model file: its weights (EMA or
raw) plus a model card made from the run's stored config and classes, so every command sees
the preprocessing and class names the run trained with.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastvit.checkpoints.checks import check_finite
from fastvit.checkpoints.filetype import SAFETENSORS, require_checkpoint
from fastvit.checkpoints.layouts import StateDict, unwrap_state_dict
from fastvit.errors import CheckpointError, ConfigError
from fastvit.fileio import atomic_path

SAFETENSORS_SUFFIX = ".safetensors"
#: Format tag of the training run files (``best.pt``/``last.pt``) that ``fastvit train`` writes.
RUN_FORMAT = "fastvit-train-v1"

# String entries of a training checkpoint that are worth keeping as metadata (timm's train script
# stores the model name under 'arch').
_WRAPPER_METADATA = {"arch": "variant"}


def _one_line(e: BaseException) -> str:
    """First sentence of an exception message, on one line, at most ~120 characters."""
    text = " ".join(str(e).split()).split(". ")[0]
    return text if len(text) <= 120 else text[:117] + "..."


def read_checkpoint(
    path: str | os.PathLike, *, use_ema: bool | None = None
) -> tuple[StateDict, dict[str, str]]:
    """Read a checkpoint file; return ``(state_dict, metadata)``.

    Supports ``.safetensors`` (metadata from its header) and torch files (``.pth``, ``.pth.tar``,
    ``.pt``, ...; loaded with ``weights_only=True``). Wrapped training checkpoints and ``module.``
    prefixes are unwrapped. A fastvit run file (``best.pt``/``last.pt``) gives its EMA weights
    when ``use_ema`` is True, the raw ones when False, whichever scored best when None, and
    model-card metadata from its config. Raises CheckpointError for a missing, truncated,
    corrupt or unsafe file, for a file that
    is something else (TorchScript, ONNX, OpenVINO...: the message says what it is and which
    command takes it) and for weights holding NaN/Inf.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file is empty: {path}")
    kind = require_checkpoint(path)
    sd, metadata = _read_safetensors(path) if kind == SAFETENSORS else _read_torch(path, use_ema)
    check_finite(sd, str(path))
    return sd, metadata


def _read_safetensors(path: Path) -> tuple[StateDict, dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as e:  # safetensors raises SafetensorError / OSError for damaged files
        raise CheckpointError(
            f"cannot read {path}: truncated or corrupt safetensors file ({_one_line(e)}); "
            "re-download or re-save it"
        ) from e
    metadata.pop("format", None)
    return unwrap_state_dict(sd), metadata


def _allow_training_args() -> contextlib.AbstractContextManager:
    """Let weights_only loading rebuild ``argparse.Namespace`` (timm-style training checkpoints
    store their ``args``); it carries plain data only, so no code can run."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    return safe_globals([argparse.Namespace]) if safe_globals else contextlib.nullcontext()


def _read_torch(path: Path, use_ema: bool | None = None) -> tuple[StateDict, dict[str, str]]:
    try:
        with _allow_training_args():
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        full = str(e)
        if "weights only" in full.lower() or "weights_only" in full.lower():
            found = re.search(r"(?i)unsupported (?:global: )?GLOBAL ([\w.]+)", full)
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"refusing to load {path}: it contains pickled objects other than tensors{what}, "
                "which weights_only loading does not run; re-save it as a plain state dict or "
                "safetensors"
            ) from e
        raise CheckpointError(
            f"cannot read {path}: corrupt torch checkpoint ({_one_line(e)})"
        ) from e
    except (EOFError, RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(
            f"cannot read {path}: truncated or corrupt torch checkpoint ({_one_line(e)}); "
            "re-download or re-save it"
        ) from e
    except Exception as e:  # anything else torch.load may raise on garbage input
        raise CheckpointError(f"cannot read {path}: not a torch checkpoint ({_one_line(e)})") from e
    if isinstance(obj, Mapping) and obj.get("format") == RUN_FORMAT:
        return _read_run(obj, path, use_ema)
    metadata: dict[str, str] = {}
    if isinstance(obj, Mapping):
        for key, meta_key in _WRAPPER_METADATA.items():
            if isinstance(obj.get(key), str):
                metadata[meta_key] = obj[key]
    return unwrap_state_dict(obj), metadata


def _read_run(
    obj: Mapping[str, Any], path: Path, use_ema: bool | None
) -> tuple[StateDict, dict[str, str]]:
    """Weights and model-card metadata of a training run file (``best.pt``/``last.pt``)."""
    has_ema = obj.get("ema") is not None
    if use_ema is None:
        use_ema = bool((obj.get("best") or {}).get("ema")) and has_ema
    if use_ema and not has_ema:
        raise ConfigError(f"{path} has no EMA weights (trained with --no-ema); drop --ema")
    state = obj["ema"] if use_ema else obj.get("model")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} is a damaged training run file (no model weights)")
    return unwrap_state_dict(state), run_metadata(obj, weights="ema" if use_ema else "model")


def run_metadata(obj: Mapping[str, Any], weights: str | None = None) -> dict[str, str]:
    """Model-card metadata (:meth:`fastvit.card.ModelCard.to_metadata` keys) of a run file: a
    stored ``card`` when the run wrote one, else its variant, classes and preprocessing config
    (unset crop_pct/mean/std mean the variant's own, filled in by the loader)."""
    if isinstance(obj.get("card"), Mapping):
        meta = {str(k): str(v) for k, v in obj["card"].items()}
    else:
        cfg = obj.get("config") if isinstance(obj.get("config"), Mapping) else {}
        values: dict[str, Any] = {
            "variant": obj.get("variant") or cfg.get("model"),
            "form": "unfused",
        }
        classes = obj.get("classes")
        if classes is not None:
            values["class_names"] = [str(c) for c in classes]
            values["num_classes"] = len(classes)
        for key in ("input_size", "crop_pct", "crop_mode", "mean", "std"):
            values[key] = cfg.get(key)
        if cfg.get("interpolation") in ("bilinear", "bicubic", "nearest"):  # not 'random'
            values["interpolation"] = cfg["interpolation"]
        meta = {
            k: v if isinstance(v, str) else json.dumps(list(v) if isinstance(v, tuple) else v)
            for k, v in values.items()
            if v is not None
        }
    if "epoch" in obj:
        meta.setdefault("epoch", str(obj["epoch"]))
    if weights is not None:
        meta["weights"] = weights
    return meta


def write_safetensors(
    sd: Mapping[str, Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``sd`` to ``path`` as safetensors, atomically (:mod:`fastvit.fileio`)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != SAFETENSORS_SUFFIX:
        raise CheckpointError(
            f"checkpoints are saved as safetensors; use a path ending in .safetensors, not {path}"
        )
    # contiguous private copies: safetensors refuses shared or strided storage
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=dict(metadata or {}))
    return path
