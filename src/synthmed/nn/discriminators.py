"""PatchGAN discriminator (pix2pix / CycleGAN / MedGAN).

``n_layers=3`` gives the 70x70 receptive field of the papers: C64 (no norm) - C128 -
C256 (stride 2) - C512 (stride 1) - 1-channel logit map, 4x4 kernels, LeakyReLU 0.2.
``return_features`` also returns every intermediate activation (MedGAN's perceptual
loss compares them).
"""

from __future__ import annotations

import torch
from torch import nn

from synthmed.nn.layers import norm_layer


def patch_receptive_field(n_layers: int) -> int:
    """Receptive field in pixels of a PatchGAN with ``n_layers`` stride-2 layers."""
    field = 1
    strides = [2] * n_layers + [1, 1]
    for stride in reversed(strides):
        field = (field - 1) * stride + 4
    return field


class PatchDiscriminator(nn.Module):
    def __init__(
        self,
        in_channels: int = 2,
        base_channels: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
        max_multiplier: int = 8,
    ):
        super().__init__()
        bias = norm != "batch"
        blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, base_channels, 4, 2, 1), nn.LeakyReLU(0.2))]
        channels = base_channels
        for i in range(1, n_layers + 1):
            out = base_channels * min(2**i, max_multiplier)
            stride = 2 if i < n_layers else 1
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(channels, out, 4, stride, 1, bias=bias), norm_layer(norm, out), nn.LeakyReLU(0.2)
                )
            )
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return (x, features[:-1]) if return_features else x
