"""Checkpoints: layouts (official / timm, unfused / fused), detection, conversion, safe I/O.

``load_model`` reads any supported checkpoint and returns the model in the checkpoint's form;
``save_model`` writes safetensors with metadata; ``convert_state_dict`` converts between layouts
without building a model. Loading never executes pickled code.
"""

from fastvit.checkpoints.api import load_into, load_model, save_model
from fastvit.checkpoints.io import read_checkpoint
from fastvit.checkpoints.layouts import CheckpointInfo, convert_state_dict, detect

__all__ = [
    "CheckpointInfo",
    "convert_state_dict",
    "detect",
    "load_into",
    "load_model",
    "read_checkpoint",
    "save_model",
]
