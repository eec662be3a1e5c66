"""The pix2pix U-Net generator (Isola et al. 2017), also MedGAN's U-block.

Encoder: ``depth`` 4x4 stride-2 convolutions (LeakyReLU 0.2, then conv, then norm; no
norm on the first and innermost layers). Decoder: mirrored 4x4 stride-2 transposed
convolutions (ReLU, conv, norm, dropout 0.5 on the first ``n_dropout`` layers after
the bottleneck) with the encoder feature map of the same size concatenated; tanh output.
At 256 px with depth 8 the bottleneck is 1x1, as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from synthmed.nn.layers import norm_layer


class UNetGenerator(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 64,
        depth: int = 8,
        max_multiplier: int = 8,
        norm: str = "batch",
        dropout: float = 0.5,
        n_dropout: int = 3,
    ):
        super().__init__()
        if depth < 2:
            raise ValueError("U-Net depth must be at least 2")
        channels = [base_channels * min(2**i, max_multiplier) for i in range(depth)]
        bias = norm != "batch"
        self.downs = nn.ModuleList()
        for i in range(depth):
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2)]
            layers.append(
                nn.Conv2d(in_channels if i == 0 else channels[i - 1], channels[i], 4, 2, 1, bias=bias or i == 0)
            )
            if 0 < i < depth - 1:
                layers.append(norm_layer(norm, channels[i]))
            self.downs.append(nn.Sequential(*layers))
        self.ups = nn.ModuleList()
        for j, i in enumerate(range(depth - 1, -1, -1)):
            in_ch = channels[i] if i == depth - 1 else 2 * channels[i]
            if i == 0:
                layers = [nn.ReLU(), nn.ConvTranspose2d(in_ch, out_channels, 4, 2, 1), nn.Tanh()]
            else:
                layers = [
                    nn.ReLU(),
                    nn.ConvTranspose2d(in_ch, channels[i - 1], 4, 2, 1, bias=bias),
                    norm_layer(norm, channels[i - 1]),
                ]
                if 1 <= j <= n_dropout and dropout > 0:
                    layers.append(nn.Dropout(dropout))
            self.ups.append(nn.Sequential(*layers))
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2**self.depth or x.shape[-2] % 2**self.depth:
            raise ValueError(
                f"U-Net of depth {self.depth} needs image sides divisible by {2**self.depth}, got {tuple(x.shape[-2:])}"
            )
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = skips.pop()
        for up in self.ups:
            x = up(x)
            if skips:
                x = torch.cat([x, skips.pop()], dim=1)
        return x
