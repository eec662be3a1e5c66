"""Time-conditional discriminator of adversarial diffusion (DDGAN's large discriminator, used by SynDiff).

``D(x_t, t, x_{t+1}) -> one logit per image``: is ``x_t`` a real denoised version of ``x_{t+1}`` at step ``t``?

- input: ``x_t`` and ``x_{t+1}`` concatenated (2 channels) -> 1x1 convolution to 2 x base channels;
- down-sampling residual blocks (act - 3x3 conv - plus the projected time embedding - act - FIR
  down-sampling of both paths - 3x3 conv (zero-initialised), 1x1 projection on the skip, sum / sqrt(2)),
  channels 2c -> 4c -> 8c -> 8c ... (c = base channels), 6 blocks at 256 px down to 4 px; fewer for smaller
  images so that the last map is at least ``smallest`` px (4; the reference always has 6 blocks, which at 64 px
  reach 1 px: ``smallest=1``);
- the minibatch standard deviation (groups of up to 4 images, one feature) appended as a channel,
  a 3x3 convolution, act, the sum over pixels and a linear layer to the logit;
- time: sinusoidal embedding of the step index -> Linear - act - Linear (``t_embedding`` wide, 256 in SynDiff), LeakyReLU 0.2.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from synthmed.nn.ncsnpp import fir_downsample, timestep_embedding


class DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, t_dim: int, downsample: bool = True):
        super().__init__()
        self.downsample = downsample
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb = nn.Linear(t_dim, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(x)) + self.temb(temb)[:, :, None, None]
        h = self.act(h)
        if self.downsample:
            h, x = fir_downsample(h), fir_downsample(x)
        return (self.conv2(h) + self.skip(x)) / math.sqrt(2.0)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append the mean standard deviation across groups of images (StyleGAN) as one more channel.

    The group is the largest divisor of the batch not above ``group_size`` (1 gives a constant channel).
    """
    b, c, h, w = x.shape
    group = max(g for g in range(1, min(b, group_size) + 1) if b % g == 0)
    y = x.float().reshape(group, -1, c, h, w)
    y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean([1, 2, 3])  # (b / group,)
    y = y.reshape(-1, 1, 1, 1).repeat(group, 1, h, w).to(x.dtype)
    return torch.cat([x, y], 1)


class TimeConditionalDiscriminator(nn.Module):
    def __init__(
        self,
        in_channels: int = 2,
        base_channels: int = 64,
        t_embedding: int = 256,
        image_size: int = 256,
        max_blocks: int = 6,
        group_size: int = 4,
        smallest: int = 4,
    ):
        super().__init__()
        if image_size < 4 or image_size & (image_size - 1):
            raise ValueError(
                f"TimeConditionalDiscriminator needs a power-of-two image size of at least 4 (got {image_size})"
            )
        if base_channels < 1 or t_embedding < 1 or max_blocks < 1 or smallest < 1:
            raise ValueError("TimeConditionalDiscriminator needs positive base_channels, t_embedding and max_blocks")
        self.t_embedding, self.group_size = t_embedding, group_size
        self.act = nn.LeakyReLU(0.2)
        self.time_embed = nn.Sequential(
            nn.Linear(t_embedding, t_embedding), nn.LeakyReLU(0.2), nn.Linear(t_embedding, t_embedding)
        )
        c = base_channels
        self.start = nn.Conv2d(in_channels, 2 * c, 1)
        n_blocks = max(1, min(max_blocks, int(math.log2(image_size // smallest))))
        widths = [2 * c, 4 * c] + [8 * c] * (n_blocks - 1)
        self.blocks = nn.ModuleList(
            DownBlock(widths[i], widths[i + 1], t_embedding, downsample=image_size // 2 ** (i + 1) >= smallest)
            for i in range(n_blocks)
        )
        self.final_conv = nn.Conv2d(widths[n_blocks] + 1, widths[n_blocks], 3, padding=1)
        self.end = nn.Linear(widths[n_blocks], 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, x_next: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.act(self.time_embed(timestep_embedding(t, self.t_embedding)))
        h = self.start(torch.cat([x, x_next], 1))
        for block in self.blocks:
            h = block(h, temb)
        h = self.act(self.final_conv(minibatch_stddev(h, self.group_size)))
        return self.end(h.sum([2, 3]))  # (B, 1)
