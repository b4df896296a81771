"""Reparameterization: pure fusion math, the module contract and the model-wide walk."""

from fastvit.reparam.base import Reparameterizable, reparameterize_tree
from fastvit.reparam.walk import is_fused, max_abs_diff, reparameterize

__all__ = ["Reparameterizable", "is_fused", "max_abs_diff", "reparameterize", "reparameterize_tree"]
