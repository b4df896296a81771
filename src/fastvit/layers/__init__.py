"""Generic reparameterizable building blocks, usable on their own in any network."""

from fastvit.layers.conv_bn import ConvBN
from fastvit.layers.large_kernel import ReparamLargeKernelConv
from fastvit.layers.mobileone import MobileOneBlock, MobileOneHead, RepStem
from fastvit.layers.se import SEBlock

__all__ = ["ConvBN", "MobileOneBlock", "MobileOneHead", "RepStem", "ReparamLargeKernelConv",
           "SEBlock"]
