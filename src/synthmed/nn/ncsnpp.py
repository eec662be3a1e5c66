"""NCSN++-style U-Net generator conditioned on a diffusion step and a latent code (SynDiff / DDGAN).

After the score-SDE NCSN++ (Song et al., ICLR 2021) as adapted by DDGAN (Xiao et al., ICLR 2022) and
SynDiff (Özbey et al., IEEE TMI 2023) for adversarial few-step diffusion; written from the papers'
description, not copied:

- input: the noisy target ``x_{t+1}`` concatenated with the source image (2 channels); output: the
  clean-image estimate ``x_0`` (tanh, [-1, 1]);
- a 3x3 stem to ``base_channels``, then per level (``channel_mult``, 1,1,2,2,4,4 at 256 px)
  ``num_res_blocks`` BigGAN-style residual blocks (attention after each block at the
  ``attention_resolutions``), a down-sampling residual block between levels, and a residual input
  pyramid (NCSN++'s ``progressive_input='residual'``): the pyramid starts as the input, and at each new level
  it is FIR-blurred and convolved 3x3 with stride 2 (:class:`FIRDownConv`), added to the down-sampled features
  (sum / sqrt(2)), and the sum is both the level's features and the next pyramid; a middle of block - attention -
  block; the up path with ``num_res_blocks + 1`` blocks per level over the concatenated skips, attention, and an
  up-sampling residual block between levels; GroupNorm - SiLU - 3x3 convolution - tanh at the end;
- BigGAN residual blocks: AdaGN - act - (FIR up/down-sampling of both paths) - 3x3 conv - plus the
  projected time embedding - AdaGN - act - dropout - 3x3 conv (zero-initialised), a 1x1 projection
  on the skip where the shape changes, and the sum scaled by 1/sqrt(2);
- attention: affine GroupNorm (not adaptive), single head, output zero-initialised, sum scaled by 1/sqrt(2);
- time: sinusoidal (positional) embedding of the step index -> Linear - act - Linear (4 x base channels);
- latent: ``z ~ N(0, I)`` of size ``nz`` (100) -> pixel norm -> Linear(nz, z_embedding) - act -> ``n_mlp``
  x (Linear - act), the mapping network of the reference; the group norms of the residual blocks are adaptive:
  GroupNorm without affine parameters whose per-channel scale and shift are a linear function of the z embedding;
- FIR resampling with the separable [1, 3, 3, 1] kernel (``fir_downsample``, ``fir_upsample``).

The network is weight-compatible with the official SynDiff/DDGAN NCSN++ (``synthmed.weights.syndiff_official``
converts its state dicts; at the README configuration both have 39,725,250 parameters with two output channels),
and reproduces its outputs to round-off (``tests/test_syndiff_official.py``).

Tiny images: the levels are limited so that the smallest feature map is at least 4 px (``channel_mult``
is cut to its first ``1 + log2(image_size / 4)`` entries; ``self.channel_mult`` holds what was used).
The activation is SiLU everywhere, the mapping network included (the reference's ``swish``) and normalisation groups are
``min(channels // 4, 32)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from synthmed.nn import fused

FIR_KERNEL = (1.0, 3.0, 3.0, 1.0)


def _fir_2d(channels: int, kernel=FIR_KERNEL, device=None, dtype=None) -> torch.Tensor:
    k = torch.tensor(kernel, device=device, dtype=dtype)
    k2 = torch.outer(k, k)
    k2 = k2 / k2.sum()
    return k2.expand(channels, 1, *k2.shape).contiguous()


def fir_downsample(x: torch.Tensor, kernel=FIR_KERNEL) -> torch.Tensor:
    """Blur with the separable FIR kernel and keep every second pixel (H, W even -> H/2, W/2)."""
    c = x.shape[1]
    weight = _fir_2d(c, kernel, x.device, x.dtype)
    pad = (len(kernel) - 2) // 2
    return F.conv2d(x, weight, stride=2, padding=pad, groups=c)


def fir_upsample(x: torch.Tensor, kernel=FIR_KERNEL) -> torch.Tensor:
    """Zero-insertion up-sampling by 2 followed by the FIR kernel (gain 4 keeps the mean): H -> 2H."""
    c = x.shape[1]
    weight = _fir_2d(c, kernel, x.device, x.dtype) * 4
    pad = (len(kernel) - 2) // 2
    return F.conv_transpose2d(x, weight, stride=2, padding=pad, groups=c)


def timestep_embedding(t: torch.Tensor, dim: int, max_positions: int = 10_000) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) step indices, (B,) -> (B, dim)."""
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_positions) * torch.arange(half, device=t.device, dtype=torch.float32) / max(1, half - 1)
    )
    angles = t.float()[:, None] * frequencies[None]
    embedding = torch.cat([angles.sin(), angles.cos()], 1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def groups_for(channels: int) -> int:
    return max(1, min(channels // 4, 32))


class PixelNorm(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without its own affine parameters; scale and shift come from the latent embedding."""

    def __init__(self, channels: int, z_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups_for(channels), channels, affine=False, eps=1e-6)
        self.style = nn.Linear(z_dim, 2 * channels)  # default init for the weight, as the reference's dense layer
        with torch.no_grad():
            self.style.bias[:channels] = 1.0  # scale about 1, shift about 0
            self.style.bias[channels:] = 0.0

    def forward(self, x: torch.Tensor, zemb: torch.Tensor) -> torch.Tensor:
        if fused.fast_path(self):
            scale, shift = fused.float32_linear(self.style, zemb).chunk(2, 1)
            return fused.group_norm_affine(x, self.norm.num_groups, scale, shift, self.norm.eps)
        scale, shift = self.style(zemb).chunk(2, 1)
        return scale[:, :, None, None] * self.norm(x) + shift[:, :, None, None]


class ResBlockBigGAN(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_dim: int,
        z_dim: int,
        up: bool = False,
        down: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.up, self.down = up, down
        self.norm0 = AdaptiveGroupNorm(in_channels, z_dim)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_channels)
        nn.init.zeros_(self.temb.bias)
        self.norm1 = AdaptiveGroupNorm(out_channels, z_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if (in_channels != out_channels or up or down) else None
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, temb: torch.Tensor, zemb: torch.Tensor) -> torch.Tensor:
        if fused.fast_path(self):
            return self._inference_forward(x, temb, zemb)
        h = self.act(self.norm0(x, zemb))
        if self.up:
            h, x = fir_upsample(h), fir_upsample(x)
        elif self.down:
            h, x = fir_downsample(h), fir_downsample(x)
        h = self.conv0(h)
        h = h + self.temb(self.act(temb))[:, :, None, None]
        h = self.conv1(self.dropout(self.act(self.norm1(h, zemb))))
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) / math.sqrt(2.0)

    def _inference_forward(self, x: torch.Tensor, temb: torch.Tensor, zemb: torch.Tensor) -> torch.Tensor:
        """The forward above in fewer memory passes: AdaGN in one call, SiLU in place, FIR in float32, the time
        embedding folded into the convolution's bias and the final 1/sqrt(2) into the last convolutions' weights."""
        half = 1 / math.sqrt(2.0)
        h = F.silu(self.norm0(x, zemb), inplace=True)
        if self.up:
            h, x = fused.float32_filter(fir_upsample, h), fused.float32_filter(fir_upsample, x)
        elif self.down:
            h, x = fused.float32_filter(fir_downsample, h), fused.float32_filter(fir_downsample, x)
        h = fused.conv2d(self.conv0, h, extra_bias=fused.float32_linear(self.temb, F.silu(temb)))
        h = fused.conv2d(self.conv1, F.silu(self.norm1(h, zemb), inplace=True), multiplier=half)
        if self.skip is None:
            return torch.add(h, x, alpha=half)
        return torch.add(h, fused.conv2d(self.skip, x, multiplier=half))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels (GroupNorm in front, zero-initialised output, scaled skip).

    The norm is an ordinary affine GroupNorm, not AdaGN: the reference NCSN++ of DDGAN/SynDiff conditions only its
    residual blocks on the latent code.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups_for(channels), channels, eps=1e-6)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, height * width).unbind(1)
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = self.out(h.transpose(1, 2).reshape(b, c, height, width))
        return (x + h) / math.sqrt(2.0)


class FIRDownConv(nn.Module):
    """FIR blur then a 3x3 convolution with stride 2: NCSN++'s fused down-sampling convolution (H -> H/2).

    The blur is padded by 2 so that the unpadded stride-2 convolution lands on the same grid as the reference's
    ``conv_downsample_2d``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel=FIR_KERNEL):
        super().__init__()
        self.kernel = tuple(kernel)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused.fast_path(self):
            return self.fast_forward(x)
        return self.conv(self.blur(x))

    def fast_forward(self, x: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        """The forward times ``multiplier`` (folded into the cached weights), for the inference fast path."""
        return fused.conv2d(self.conv, fused.float32_filter(self.blur, x), multiplier=multiplier)

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        weight = _fir_2d(c, self.kernel, x.device, x.dtype)
        pad = (len(self.kernel) - 2) // 2 + 1
        return F.conv2d(x, weight, padding=pad, groups=c)


class NCSNppGenerator(nn.Module):
    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 1,
        base_channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        image_size: int = 256,
        nz: int = 100,
        z_embedding: int = 256,
        n_mlp: int = 3,
        dropout: float = 0.0,
        use_tanh: bool = True,
    ):
        super().__init__()
        if image_size < 4 or image_size & (image_size - 1):
            raise ValueError(f"NCSNppGenerator needs a power-of-two image size of at least 4 (got {image_size})")
        if (
            not channel_mult
            or min(channel_mult) < 1
            or base_channels < 1
            or num_res_blocks < 1
            or nz < 1
            or z_embedding < 1
        ):
            raise ValueError(
                "NCSNppGenerator needs positive channel multipliers, base_channels, num_res_blocks, nz, z_embedding"
            )
        max_levels = 1 + int(math.log2(image_size // 4))
        self.channel_mult = tuple(channel_mult[:max_levels])
        self.image_size, self.nz, self.use_tanh = image_size, nz, use_tanh
        self.base_channels = base_channels
        self.act = nn.SiLU()
        temb_dim = 4 * base_channels
        self.time_embed = nn.Sequential(nn.Linear(base_channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        mapping: list[nn.Module] = [PixelNorm(), nn.Linear(nz, z_embedding), nn.SiLU()]
        for _ in range(n_mlp):
            mapping += [nn.Linear(z_embedding, z_embedding), nn.SiLU()]
        self.z_transform = nn.Sequential(*mapping)

        def block(cin, cout, **kw):
            return ResBlockBigGAN(cin, cout, temb_dim, z_embedding, dropout=dropout, **kw)

        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        levels = len(self.channel_mult)
        self.down_blocks = nn.ModuleList()
        self.down_attention = nn.ModuleDict()
        self.downsamplers = nn.ModuleList()
        self.pyramid = nn.ModuleList()
        skip_channels = [base_channels]
        channels, resolution = base_channels, image_size
        pyramid_channels = in_channels
        for level, mult in enumerate(self.channel_mult):
            for i in range(num_res_blocks):
                out = base_channels * mult
                self.down_blocks.append(block(channels, out))
                channels = out
                if resolution in attention_resolutions:
                    self.down_attention[f"{level}_{i}"] = AttentionBlock(channels)
                skip_channels.append(channels)
            if level != levels - 1:
                self.downsamplers.append(block(channels, channels, down=True))
                self.pyramid.append(FIRDownConv(pyramid_channels, channels))
                pyramid_channels = channels
                resolution //= 2
                skip_channels.append(channels)
        self.mid = nn.ModuleList([block(channels, channels), AttentionBlock(channels), block(channels, channels)])
        self.up_blocks = nn.ModuleList()
        self.up_attention = nn.ModuleDict()
        self.upsamplers = nn.ModuleList()
        for level in reversed(range(levels)):
            out = base_channels * self.channel_mult[level]
            for _ in range(num_res_blocks + 1):
                self.up_blocks.append(block(channels + skip_channels.pop(), out))
                channels = out
            if resolution in attention_resolutions:
                self.up_attention[str(level)] = AttentionBlock(channels)
            if level != 0:
                self.upsamplers.append(block(channels, channels, up=True))
                resolution *= 2
        assert not skip_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.out_norm = nn.GroupNorm(groups_for(channels), channels, eps=1e-6)
        self.out_conv = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        if x.shape[-2] != size or size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(
                f"NCSNppGenerator input must be square with a side divisible by "
                f"{2 ** (len(self.channel_mult) - 1)}, got {tuple(x.shape[-2:])}"
            )
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.time_embed(timestep_embedding(t, self.base_channels))
        zemb = self.z_transform(z)
        fast = fused.fast_path(self)
        half = 1 / math.sqrt(2.0)
        pyramid = x
        hs = [fused.conv2d(self.stem, x) if fast else self.stem(x)]
        blocks, downsamplers = iter(self.down_blocks), iter(zip(self.downsamplers, self.pyramid))
        levels = len(self.channel_mult)
        for level in range(levels):
            for i in range(self.num_res_blocks):
                h = next(blocks)(hs[-1], temb, zemb)
                key = f"{level}_{i}"
                if key in self.down_attention:
                    h = self.down_attention[key](h)
                hs.append(h)
            if level != levels - 1:
                down, project = next(downsamplers)
                h = down(hs[-1], temb, zemb)
                if fast:  # the same sum with the 1/sqrt(2) folded into the projection and the addition
                    pyramid = torch.add(project.fast_forward(pyramid, multiplier=half), h, alpha=half)
                else:
                    pyramid = (project(pyramid) + h) / math.sqrt(2.0)
                h = pyramid
                hs.append(h)
        h = hs[-1]
        h = self.mid[0](h, temb, zemb)
        h = self.mid[1](h)
        h = self.mid[2](h, temb, zemb)
        blocks, upsamplers = iter(self.up_blocks), iter(self.upsamplers)
        for level in reversed(range(levels)):
            for _ in range(self.num_res_blocks + 1):
                h = next(blocks)(torch.cat([h, hs.pop()], 1), temb, zemb)
            if str(level) in self.up_attention:
                h = self.up_attention[str(level)](h)
            if level != 0:
                h = next(upsamplers)(h, temb, zemb)
        if fast:
            h = fused.conv2d(self.out_conv, F.silu(self.out_norm(h), inplace=True))
        else:
            h = self.out_conv(self.act(self.out_norm(h)))
        return torch.tanh(h) if self.use_tanh else h
