"""Squeeze-and-excite (Hu et al., 2018) as used by MobileOne's classifier conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SEBlock(nn.Module):
    """Channel gating: global average pool -> 1x1 reduce -> ReLU -> 1x1 expand -> sigmoid.

    Keys ``reduce``/``expand`` match the official checkpoints.
    """

    def __init__(self, in_channels: int, rd_ratio: float = 0.0625) -> None:
        super().__init__()
        hidden = int(in_channels * rd_ratio)
        self.reduce = nn.Conv2d(in_channels, hidden, kernel_size=1, bias=True)
        self.expand = nn.Conv2d(hidden, in_channels, kernel_size=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = torch.sigmoid(self.expand(F.relu(self.reduce(s))))
        return x * s
