"""Reparameterization: pure fusion math, the module contract and the model-wide walk."""

from fastvit.reparam.base import Reparameterizable, reparameterize_tree
from fastvit.reparam.walk import (
    OutputDiff,
    image_like_inputs,
    is_fused,
    max_abs_diff,
    output_diff,
    reparameterize,
)

__all__ = [
    "OutputDiff",
    "Reparameterizable",
    "image_like_inputs",
    "is_fused",
    "max_abs_diff",
    "output_diff",
    "reparameterize",
    "reparameterize_tree",
]
