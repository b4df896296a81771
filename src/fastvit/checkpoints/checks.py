"""Sanity checks on loaded weights (non-finite values), with one-line messages."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fastvit.errors import CheckpointError


def nonfinite_tensors(sd: Mapping[str, Tensor]) -> list[str]:
    """Names of floating-point tensors in ``sd`` holding NaN or Inf."""
    return [
        k
        for k, v in sd.items()
        if isinstance(v, Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def check_finite(sd: Mapping[str, Tensor], where: str) -> None:
    """Raise CheckpointError when any weight of ``sd`` is NaN or Inf.

    Such a file comes from a training run that diverged (or a damaged conversion); evaluating,
    exporting or fine-tuning from it can only give NaN, so it is refused at load time, naming
    the file instead of blaming the data, the exporter or the learning rate.
    """
    bad = nonfinite_tensors(sd)
    if not bad:
        return
    kinds = []
    if any(bool(torch.isnan(sd[k]).any()) for k in bad):
        kinds.append("NaN")
    if any(bool(torch.isinf(sd[k]).any()) for k in bad):
        kinds.append("Inf")
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    raise CheckpointError(
        f"{where} holds non-finite weights ({'/'.join(kinds)} in {bad[0]}{more}); the run that "
        "wrote it diverged: use an earlier checkpoint (e.g. best.pt) or retrain"
    )
