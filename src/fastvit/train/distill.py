"""Knowledge distillation: load a frozen teacher and mix its signal into the loss.

``soft``: KL divergence between temperature-softened student and teacher distributions
(scaled by tau², Hinton et al. 2015). ``hard``: cross-entropy against the teacher's argmax,
as in DeiT and the official FastViT distilled models (teacher RegNetY-16GF).
Loss = (1 - alpha) * base_loss + alpha * distillation_loss. The teacher runs in eval mode
without gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastvit.errors import CheckpointError, ConfigError


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors/.pt/.pth weights file (a bare or wrapped state dict)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read teacher weights {path} ({type(e).__name__})") from e
    for key in ("state_dict", "model", "model_state", "state_dict_ema"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"teacher weights {path} hold no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _named_teacher(name: str, weights: str | None, num_classes: int) -> nn.Module:
    """timm or torchvision architecture ``name`` (no download), with weights from a file."""
    import timm
    import torchvision

    if weights is None:
        raise ConfigError(
            f"teacher {name!r} is a model name; pass its weights file with --teacher-weights "
            "(nothing is downloaded)"
        )
    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"teacher weights {path} do not exist; check the path")
    sd = _read_state_dict(path)
    if timm.is_model(name):
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    elif name in torchvision.models.list_models():
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    else:
        raise ConfigError(
            f"unknown teacher {name!r}: not a file, a timm model or a torchvision model"
        )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), None)
        if detail:
            raise ConfigError(
                f"teacher weights {path} do not fit {name} with {num_classes} classes "
                f"({detail}); the teacher must predict the same classes as the data"
            ) from e
        raise CheckpointError(
            f"teacher weights {path} do not match {name} (missing or unexpected keys)"
        ) from e
    return model


def _output_classes(model: nn.Module, input_size: int) -> int:
    """Number of logits the model produces (works for any classifier)."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    with torch.no_grad():
        return int(model(torch.zeros(1, 3, input_size, input_size)).shape[-1])


def load_teacher(teacher: str, weights: str | None, num_classes: int, input_size: int) -> nn.Module:
    """A teacher in eval mode with frozen weights; its class count must match the data."""
    path = Path(teacher)
    if path.is_file():
        import fastvit

        model = fastvit.load_model(str(path))
        what = f"teacher checkpoint {path}"
    elif path.suffix in (".safetensors", ".pt", ".pth", ".tar") or "/" in teacher:
        raise CheckpointError(f"teacher checkpoint {path} does not exist; check the path")
    else:
        model = _named_teacher(teacher, weights, num_classes)
        what = f"teacher {teacher}"
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    n = _output_classes(model, input_size)
    if n != num_classes:
        raise ConfigError(
            f"{what} predicts {n} classes but the data has {num_classes}; "
            "use a teacher trained on the same classes"
        )
    return model


class DistillationLoss(nn.Module):
    """Base loss mixed with a soft or hard distillation term from a frozen teacher."""

    def __init__(
        self,
        base_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        teacher: nn.Module,
        mode: str = "hard",
        alpha: float = 0.5,
        tau: float = 1.0,
    ) -> None:
        super().__init__()
        if mode not in ("soft", "hard"):
            raise ConfigError(f"unknown distillation mode {mode!r}; use soft or hard")
        self.base_loss = base_loss
        self.teacher = teacher
        self.mode = mode
        self.alpha = alpha
        self.tau = tau

    def forward(
        self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        base = self.base_loss(outputs, targets)
        if self.alpha == 0:
            return base
        with torch.no_grad():
            self.teacher.eval()
            t_logits = self.teacher(inputs).float()
        s_logits = outputs.float()
        if self.mode == "soft":
            tau = self.tau
            dist = F.kl_div(
                F.log_softmax(s_logits / tau, dim=1),
                F.log_softmax(t_logits / tau, dim=1),
                reduction="batchmean",
                log_target=True,
            ) * (tau * tau)
        else:
            dist = F.cross_entropy(s_logits, t_logits.argmax(dim=1))
        return (1 - self.alpha) * base + self.alpha * dist
