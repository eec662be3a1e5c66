"""CasNet (MedGAN's generator): U-blocks in a chain, each refining the previous block's output.

Every U-block is a full pix2pix U-Net (:class:`synthmed.nn.unet.UNetGenerator`: at 256 px an encoder of
8 stride-2 4x4 convolutions with batch norm and LeakyReLU, a mirrored decoder with concatenated skips, tanh
output). Block 1 takes the source image; block k takes block k-1's output image. The skips inside each block
carry fine detail through it, which is what makes a long chain trainable end to end.
"""

from __future__ import annotations

import torch
from torch import nn

from synthmed.nn.unet import UNetGenerator


class CasNet(nn.Module):
    def __init__(
        self,
        n_blocks: int = 6,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 64,
        depth: int = 8,
        norm: str = "batch",
        dropout: float = 0.5,
    ):
        super().__init__()
        if n_blocks < 1:
            raise ValueError("CasNet needs at least one U-block")
        self.blocks = nn.ModuleList(
            UNetGenerator(
                in_channels if k == 0 else out_channels, out_channels, base_channels, depth, norm=norm, dropout=dropout
            )
            for k in range(n_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x
