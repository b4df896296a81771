"""Training checkpoints (``last.pt`` / ``best.pt``): written atomically, resumed exactly.

A checkpoint holds everything the next epoch depends on: model and EMA weights, optimizer,
scheduler and grad-scaler state, the epoch and update counters, best accuracy so far, the RNG
states of torch/numpy/python, the metrics history and the full config. Everything is stored
as tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastvit.checkpoints.io import RUN_FORMAT as FORMAT  # one tag, read by fastvit.load_model
from fastvit.errors import CheckpointError
from fastvit.fileio import WriteError, atomic_path, describe_os_error


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Save to a temporary file in the same directory, then rename over ``path``.

    A crash mid-write leaves the previous file intact; readers never see a partial file. A full
    disk or read-only target raises a one-line :class:`~fastvit.fileio.WriteError` ("no space
    left on device while writing ...; any previous last.pt is intact"), also when torch's zip
    writer reports it as its own RuntimeError.
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except RuntimeError as e:  # torch's writer: "[enforce fail at inline_container.cc] ..."
        if "write" not in str(e).lower():
            raise
        raise WriteError(describe_os_error(_write_failure(path), path)) from None


def _write_failure(path: Path) -> OSError:
    """The OS error behind a failed torch write: ENOSPC when the disk is (nearly) full."""
    try:
        full = shutil.disk_usage(path.parent).free < 1 << 20
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return OSError(errno.EIO, "write failed")


def get_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy and python, as weights_only-safe values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    random.setstate(_python_state_from_plain(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(st: tuple) -> dict[str, Any]:
    version, internal, gauss = st
    return {
        "version": version,
        "internal": torch.tensor(internal, dtype=torch.int64),
        "gauss": gauss,
    }


def _python_state_from_plain(d: dict[str, Any]) -> tuple:
    return (d["version"], tuple(int(v) for v in d["internal"].tolist()), d["gauss"])


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python RNGs from one integer."""
    seed = int(seed) % (2**32)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed for one epoch on one rank: a run restarted at any epoch replays it exactly."""
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101) % (2**32)


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a ``last.pt``/``best.pt`` file written by :mod:`fastvit.train` (weights_only)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run's last.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"cannot read training checkpoint {path} ({type(e).__name__}); it is damaged or "
            "not a fastvit training checkpoint"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a fastvit training checkpoint (last.pt/best.pt); to start from "
            "model weights use --init instead of --resume"
        )
    return ckpt


def checkpoint_weights(
    ckpt: dict[str, Any], use_ema: bool | None = None
) -> tuple[dict[str, torch.Tensor], bool]:
    """(state dict, whether it is the EMA copy) of a training checkpoint.

    ``use_ema`` None picks the weights that scored best (the EMA copy when it did).
    """
    if use_ema is None:
        use_ema = bool(ckpt["best"]["ema"]) and ckpt.get("ema") is not None
    if use_ema and ckpt.get("ema") is None:
        raise CheckpointError("this run was trained with --no-ema; it has no EMA weights")
    return (ckpt["ema"] if use_ema else ckpt["model"]), use_ema
