"""``torch.compile`` of a fused model for serving: frozen weights, low per-call overhead.

At batch 1 a fused FastViT-T8 forward is ~5 ms in bf16, and Dynamo's guard check, run before
every call, costs ~0.3 ms of that (measured, BENCHMARKS.md). :class:`CompiledInference` keeps the
guards where they matter: the first call with a new input signature (shape, strides, dtype,
device, autocast state) runs with full guard evaluation (and compiles if needed); later calls
with a signature already seen skip the guard check
(``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``). That is safe here because
everything else the guards would check is fixed by this wrapper: it always runs the model in
``torch.inference_mode``, in eval mode, and owns its copy of the model, whose weights
Inductor's freezing has already baked into the compiled graph.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from fastvit.errors import ConfigError


class CompiledInference:
    """Inference-only ``torch.compile`` (Inductor, frozen weights) of a copy of ``model``.

    ``dtype`` converts the copy (``torch.bfloat16`` uses the CPU's AMX / AVX-512 BF16
    kernels); ``channels_last`` puts weights in NHWC order, which oneDNN prefers. Inputs are
    converted to that dtype and memory format on the way in; outputs come in ``dtype``. Later
    changes to ``model`` do not reach the compiled copy.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        dtype: torch.dtype | None = None,
        channels_last: bool = True,
        dynamic: bool = False,
    ) -> None:
        module = copy.deepcopy(model).eval()
        if dtype is not None:
            module = module.to(dtype)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        self._module = module  # private: the compiled graph assumes it never changes
        self._dtype = dtype
        self._channels_last = channels_last
        self._in_chans: int | None = getattr(model, "in_chans", None)
        self._compiled = torch.compile(module, dynamic=dynamic)
        self._seen: set[tuple[Any, ...]] = set()

    @staticmethod
    def _signature(x: Tensor) -> tuple[Any, ...]:
        return (
            tuple(x.shape),
            x.stride(),
            x.dtype,
            x.device,
            torch.is_autocast_enabled(x.device.type),
        )

    def __call__(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or (self._in_chans is not None and x.shape[1] != self._in_chans):
            want = self._in_chans if self._in_chans is not None else "C"
            raise ConfigError(
                f"expected an input batch of shape (N, {want}, H, W), got {tuple(x.shape)}"
            )
        if self._dtype is not None and x.dtype != self._dtype:
            x = x.to(self._dtype)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        sig = self._signature(x)
        with torch.inference_mode():
            if sig in self._seen:  # every guard already passed once for this signature
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                    return self._compiled(x)
            # Compilation happens here, lazily. Freezing (weights as constants: oneDNN weight
            # prepacking, conv/GEMM post-op fusion) is set for the whole compile: passing it
            # as torch.compile(options=...) was measured not to take effect reliably (with two
            # compiled models in one process both ran at about eager speed).
            import torch._inductor.config as inductor_config

            with inductor_config.patch(freezing=True):
                out = self._compiled(x)
        self._seen.add(sig)
        return out
