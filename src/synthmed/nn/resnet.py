"""ResNet generator of CycleGAN (Zhu et al., ICCV 2017; after Johnson et al., ECCV 2016).

``c7s1-64, d128, d256, R256 x n_blocks, u128, u64, c7s1-out``: a reflection-padded 7x7
convolution, two stride-2 3x3 convolutions, ``n_blocks`` residual blocks
(reflection-padded 3x3 conv - norm - ReLU - conv - norm, plus the identity), two
fractionally-strided 3x3 convolutions back to the input size and a 7x7 convolution with
tanh. Every convolution but the last is followed by the norm (instance norm in the
paper) and ReLU. The paper uses 6 blocks at 128 px and 9 at 256 px; SynDiff's
non-diffusive generator reuses this network. Inputs must have sides divisible by 4.
"""

from __future__ import annotations

import torch
from torch import nn

from synthmed.nn.layers import norm_layer


class ResnetBlock(nn.Module):
    """Two reflection-padded 3x3 convolutions with norm, ReLU between them, and a skip."""

    def __init__(self, channels: int, norm: str = "instance"):
        super().__init__()
        bias = norm != "batch"  # a batch norm's shift replaces the bias; instance norm here has none
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            norm_layer(norm, channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            norm_layer(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 64,
        n_blocks: int = 6,
        norm: str = "instance",
    ):
        super().__init__()
        if in_channels < 1 or out_channels < 1 or base_channels < 1 or n_blocks < 0:
            raise ValueError("ResnetGenerator needs positive channel counts and n_blocks >= 0")
        bias = norm != "batch"
        c = base_channels
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, c, 7, bias=bias),
            norm_layer(norm, c),
            nn.ReLU(True),
        ]
        for multiplier in (1, 2):  # d128, d256
            layers += [
                nn.Conv2d(c * multiplier, c * multiplier * 2, 3, stride=2, padding=1, bias=bias),
                norm_layer(norm, c * multiplier * 2),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(c * 4, norm) for _ in range(n_blocks)]
        for multiplier in (4, 2):  # u128, u64
            layers += [
                nn.ConvTranspose2d(
                    c * multiplier, c * multiplier // 2, 3, stride=2, padding=1, output_padding=1, bias=bias
                ),
                norm_layer(norm, c * multiplier // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"ResnetGenerator input sides must be multiples of 4, got {tuple(x.shape[-2:])}")
        return self.model(x)
