"""Model-side setup for training: build, initialise from a checkpoint, freeze, param groups."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fastvit.errors import CheckpointError, ConfigError

logger = logging.getLogger("fastvit")


def variant_defaults(name: str) -> dict[str, Any]:
    """Preprocessing and regularisation defaults of a variant (crop_pct, mean, std, ...).

    An unknown name raises the one "unknown model" :class:`ConfigError` of ``get_config``.
    """
    import fastvit

    c = fastvit.get_config(name)
    p = c.preprocessing
    return {
        "crop_pct": p.crop_pct,
        "mean": p.mean,
        "std": p.std,
        "interpolation": p.interpolation,
        "drop_path": float(c.drop_path_rate),
    }


def create_train_model(
    name: str, num_classes: int, *, drop_path: float = 0.0, drop: float = 0.0
) -> nn.Module:
    """A FastViT in its training (multi-branch) form."""
    import fastvit

    return fastvit.create_model(
        name, num_classes=num_classes, drop_path_rate=drop_path, drop_rate=drop
    )


@dataclass
class InitReport:
    """What ``--init`` loaded from the checkpoint and what it left at initialisation."""

    source: str
    loaded: int = 0
    skipped: list[str] = field(default_factory=list)  # target keys left as initialised
    unused: list[str] = field(default_factory=list)  # checkpoint keys not used

    def summary(self) -> str:
        s = f"init from {self.source}: loaded {self.loaded} tensors"
        if self.skipped:
            s += f", re-initialised {len(self.skipped)} ({', '.join(self.skipped[:4])}"
            s += ", ...)" if len(self.skipped) > 4 else ")"
        if self.unused:
            s += f", ignored {len(self.unused)} checkpoint tensors"
        return s


def load_init_model(path: str) -> nn.Module:
    """Load an ``--init`` checkpoint with fastvit.load_model; refuse fused ones."""
    import fastvit

    try:
        src = fastvit.load_model(path)
    except CheckpointError:
        raise
    except FileNotFoundError as e:
        raise CheckpointError(f"--init checkpoint {path} does not exist; check the path") from e
    if getattr(src, "inference_mode", False):
        raise CheckpointError(
            f"{path} is a fused (reparameterized) checkpoint, which cannot be trained; "
            "use the training-form (unfused) checkpoint, e.g. model.safetensors"
        )
    return src


def init_from_model(model: nn.Module, src: nn.Module, source: str) -> InitReport:
    """Copy every tensor of ``src`` whose name and shape match into ``model``.

    A different ``num_classes`` leaves the classifier as initialised (reported as skipped).
    """
    src_sd = src.state_dict()
    dst_sd = model.state_dict()
    report = InitReport(source)
    new_sd = {}
    for k, v in dst_sd.items():
        w = src_sd.get(k)
        if w is not None and w.shape == v.shape:
            new_sd[k] = w.to(v.dtype)
            report.loaded += 1
        else:
            new_sd[k] = v
            report.skipped.append(k)
    report.unused = [k for k in src_sd if k not in dst_sd or src_sd[k].shape != dst_sd[k].shape]
    if report.loaded == 0:
        raise CheckpointError(
            f"no tensor of {source} fits the model; is it a checkpoint of another architecture?"
        )
    model.load_state_dict(new_sd, strict=True)
    return report


def stage_prefixes(model: nn.Module) -> list[str]:
    """Module names of the four stages, from the model's ``feature_info``."""
    info = getattr(model, "feature_info", None)
    names = []
    for entry in info or []:
        mod = entry.get("module") if isinstance(entry, dict) else None
        if mod:
            names.append(mod)
    if not names:
        raise ConfigError("this model does not describe its stages; --freeze-stages needs them")
    return names


def freeze_stages(model: nn.Module, num_stages: int) -> list[str]:
    """Freeze the stem and the first ``num_stages`` stages (with their downsampling layers).

    Everything registered up to the end of stage ``num_stages - 1`` is frozen: stem,
    downsamples and positional embeddings come before their stage in the module order.
    Returns the names of the frozen modules' top-level prefixes.
    """
    if num_stages <= 0:
        return []
    stages = stage_prefixes(model)
    if num_stages > len(stages):
        raise ConfigError(f"--freeze-stages {num_stages}: the model has only {len(stages)} stages")
    last = stages[num_stages - 1]
    names = [n for n, _ in model.named_parameters()]
    end = max((i for i, n in enumerate(names) if n.startswith(last + ".")), default=-1)
    if end < 0:
        raise ConfigError(f"cannot find the parameters of stage {last!r} to freeze")
    frozen = set(names[: end + 1])
    for n, p in model.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
    modules = []
    for mname, m in model.named_modules():
        params = [f"{mname}.{pn}" if mname else pn for pn, _ in m.named_parameters(recurse=True)]
        inside = any(mname.startswith(prefix + ".") for prefix in modules)
        if mname and params and all(p in frozen for p in params) and not inside:
            modules.append(mname)
    return modules


def set_frozen_eval(model: nn.Module, frozen_modules: list[str]) -> None:
    """Keep frozen modules in eval mode so their BatchNorm statistics do not drift."""
    if not frozen_modules:
        return
    lookup = dict(model.named_modules())
    for name in frozen_modules:
        lookup[name].eval()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: with weight decay, and without it for norms, biases and layer scales."""
    skip = set()
    if hasattr(model, "no_weight_decay"):
        skip = set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or "layer_scale" in name or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]
    return [g for g in groups if g["params"]]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the state dict (what checkpoints store)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}
