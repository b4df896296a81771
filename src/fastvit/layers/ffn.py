"""Convolutional FFN (FastViT's MLP): depthwise 7x7 conv+BN -> 1x1 expand -> act -> 1x1."""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from fastvit.layers.conv_bn import ConvBN
from fastvit.reparam.base import Reparameterizable
from fastvit.reparam.fuse import scale_output


class ConvFFN(Reparameterizable):
    """Convolutional FFN: depthwise 7x7 conv+BN -> 1x1 expand -> act -> 1x1 project.

    The conv+BN fuses into one conv (``conv.reparam_conv``); the official fused form keeps
    the BN. Inside FastViT blocks the fused form is the equivalent
    :class:`~fastvit.layers.inference.FusedConvFFN`, which adds CPU speed paths.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int | None = None,
        out_channels: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        inference_mode: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        hidden_channels = hidden_channels or in_channels
        self.inference_mode = inference_mode
        self.conv = ConvBN(
            in_channels,
            out_channels,
            7,
            padding=3,
            groups=in_channels,
            inference_mode=inference_mode,
        )
        self.fc1 = nn.Conv2d(in_channels, hidden_channels, kernel_size=1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden_channels, out_channels, kernel_size=1)
        self.drop = nn.Dropout(drop)
        for m in (self.fc1, self.fc2):
            trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        if not inference_mode:
            trunc_normal_(self.conv.conv.weight, std=0.02)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """FFN output, plus ``residual`` if given (a block's shortcut, when nothing scales
        the FFN output in between: the fused form adds it inside ``fc2``)."""
        return self._mlp(self.conv(x), residual)

    def _mlp(self, x: Tensor, residual: Tensor | None) -> Tensor:
        x = self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
        return x if residual is None else residual + x

    def _reparameterize(self) -> None:
        pass  # self.conv was fused by reparameterize(); fc1/fc2 are already plain convs

    def fold_output_scale(self, scale: Tensor) -> None:
        """Multiply the FFN output by ``scale`` per channel, by rescaling ``fc2`` (in place)."""
        w, b = scale_output(self.fc2.weight, self.fc2.bias, scale)
        fc2 = nn.Conv2d(
            self.fc2.in_channels, self.fc2.out_channels, 1, device=w.device, dtype=w.dtype
        )
        with torch.no_grad():
            fc2.weight.copy_(w)
            fc2.bias.copy_(b)
        self.fc2 = fc2
