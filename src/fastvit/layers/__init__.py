"""Generic reparameterizable building blocks, usable on their own in any network."""

from fastvit.layers.conv_bn import ConvBN
from fastvit.layers.ffn import ConvFFN
from fastvit.layers.large_kernel import ReparamLargeKernelConv
from fastvit.layers.mobileone import MobileOneBlock, RepStem
from fastvit.layers.repmixer import RepMixer, TokenRepMixer
from fastvit.layers.se import SEBlock

__all__ = [
    "ConvBN",
    "ConvFFN",
    "MobileOneBlock",
    "RepMixer",
    "RepStem",
    "ReparamLargeKernelConv",
    "SEBlock",
    "TokenRepMixer",
]
