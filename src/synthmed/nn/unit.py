"""UNIT's encoders and generators (Liu et al., NeurIPS 2017), with the weight sharing that makes the latent shared.

Encoder E_d: ``c7s1-C`` then ``n_down`` stride-2 3x3 convolutions (doubling the channels), ``n_res`` residual blocks
of its own, then the *shared* residual block(s) common to E_1 and E_2. Its output is the mean of q(z | x); the
latent is a (C * 2^n_down, H / 2^n_down, W / 2^n_down) map. Generator G_d: the *shared* residual block(s) common to
G_1 and G_2, ``n_res`` residual blocks of its own, ``n_down`` stride-2 transposed convolutions and a 7x7 convolution
with tanh. Instance norm and ReLU after every convolution but the last, as the CycleGAN ResNet blocks
(:class:`synthmed.nn.resnet.ResnetBlock`) we reuse. The paper's image-translation networks have 64 base channels,
two down-samplings and 3 + 1 residual blocks in each encoder and generator.
"""

from __future__ import annotations

import torch
from torch import nn

from synthmed.nn.layers import norm_layer
from synthmed.nn.resnet import ResnetBlock


def shared_blocks(channels: int, count: int) -> nn.Sequential:
    """Residual blocks to be used by both domains' networks (the same module object in both)."""
    return nn.Sequential(*[ResnetBlock(channels, "instance") for _ in range(count)])


class UnitEncoder(nn.Module):
    def __init__(
        self, shared: nn.Module, in_channels: int = 1, base_channels: int = 64, n_down: int = 2, n_res: int = 3
    ):
        super().__init__()
        c = base_channels
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, c, 7),
            norm_layer("instance", c),
            nn.ReLU(True),
        ]
        for _ in range(n_down):
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), norm_layer("instance", 2 * c), nn.ReLU(True)]
            c *= 2
        layers += [ResnetBlock(c, "instance") for _ in range(n_res)]
        self.private = nn.Sequential(*layers)
        self.shared = shared
        self.latent_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(self.private(x))


class UnitGenerator(nn.Module):
    def __init__(
        self, shared: nn.Module, out_channels: int = 1, base_channels: int = 64, n_down: int = 2, n_res: int = 3
    ):
        super().__init__()
        c = base_channels * 2**n_down
        layers: list[nn.Module] = [ResnetBlock(c, "instance") for _ in range(n_res)]
        for _ in range(n_down):
            layers += [
                nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                norm_layer("instance", c // 2),
                nn.ReLU(True),
            ]
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, out_channels, 7), nn.Tanh()]
        self.shared = shared
        self.private = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.private(self.shared(z))
