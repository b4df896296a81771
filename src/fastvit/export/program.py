"""``torch.export`` of any FastViT form with dynamic batch and image size down to 32 px.

A plain ``torch.export.export(model, ...)`` with dynamic H/W needs three things that this
helper does for you:

* the last stage is 1x1 at 32 px input (also the last two stages of the five-stage
  MobileCLIP2 towers, which downsample by 64), and torch.export assumes a dynamic size is never
  1 (its 0/1 specialisation): the export runs with ``backed_size_oblivious`` so a size of 1 is
  treated like any other (attention blocks copy their tokens under export for the same reason:
  see ``fastvit.models.blocks``);
* the example traced must not be 1x1 in any stage (the export would specialise to it): the
  default example is twice the model's output stride on each side, and a smaller one is refused;
* fused models keep channels-last weights for eager speed, and which memory format a conv
  picks is undecidable for a 1x1 map (it would guard H, W >= 33): the exported copy gets
  contiguous (NCHW) weights. The model passed in is not changed.

Every variant, in every form (training, fused, ``features_only``), runs from 32 px and at any
non-square or odd size up to ``max_size``.

Our ONNX writer (:func:`fastvit.export.export_onnx`) uses torch's TorchScript-based exporter
(``dynamo=False``), which has no such limits; torch's default ``torch.onnx.export`` (the dynamo
exporter) works too with the ``export`` extra, which installs ``onnxscript``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fastvit.errors import ConfigError
from fastvit.models.fastvit import FastViT

MIN_SIZE = 32  # smallest size checked: every variant's stages are >= 1x1 from here


def export_program(
    model: nn.Module,
    example: torch.Tensor | None = None,
    *,
    dynamic: bool = True,
    min_size: int = MIN_SIZE,
    max_size: int = 4096,
    max_batch: int = 1024,
) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (eval mode), static or with dynamic batch/H/W.

    Args:
        model: any FastViT form (training or fused, ``features_only`` too).
        example: an example input; default ``(2, in_chans, 2 * stride, 2 * stride)`` with
            ``stride`` the model's output stride (32, or 64 for the MobileCLIP2 towers).
            With ``dynamic`` its H and W must exceed that stride (no single-row stage).
        dynamic: batch, height and width dynamic in ``[1, max_batch]`` and
            ``[min_size, max_size]``; ``False`` exports the example's shape only.
    """
    if min_size < 1 or max_size < min_size or max_batch < 1:
        raise ConfigError(
            f"invalid export ranges: sizes {min_size}..{max_size}, batch 1..{max_batch}"
        )
    stride = _output_stride(model)
    if example is None:
        in_chans = getattr(model, "in_chans", 3)
        example = torch.randn(2, in_chans, 2 * stride, 2 * stride)
    elif dynamic and min(example.shape[-2:]) <= stride:
        raise ConfigError(
            f"example input {tuple(example.shape)} is too small for a dynamic export: its last "
            f"stage would have a single row or column and the program would accept only that; "
            f"use H and W above {stride} (the model's output stride), e.g. {2 * stride}"
        )
    target = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    if not dynamic:
        return torch.export.export(target, (example,))
    from torch.export import Dim
    from torch.fx.experimental import _config as fx_config

    shapes = {
        "x": {
            0: Dim("batch", min=1, max=max_batch),
            2: Dim("height", min=min_size, max=max_size),
            3: Dim("width", min=min_size, max=max_size),
        }
    }
    name = next(iter(_forward_arg_names(target)), "x")
    with fx_config.patch(backed_size_oblivious=True):
        return torch.export.export(target, (example,), dynamic_shapes={name: shapes["x"]})


def _output_stride(model: nn.Module) -> int:
    """The largest downsampling factor of the FastViT stages ``model`` runs (32 if none)."""
    strides = [
        m.cfg.reductions[max(m.out_indices) if m.features_only else -1]
        for m in model.modules()
        if isinstance(m, FastViT)
    ]
    return max(strides, default=32)


def _forward_arg_names(model: nn.Module) -> list[str]:
    import inspect

    params = inspect.signature(model.forward).parameters
    return [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
