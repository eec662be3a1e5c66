"""Small shared helpers: normalisation layer factory, GAN weight initialisation, temporary eval mode, grey input for
networks made for RGB pictures."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    """'batch' (pix2pix paper), 'instance' (CycleGAN) or 'none'."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use batch, instance or none")


def init_gan_weights(module: nn.Module, std: float = 0.02) -> None:
    """N(0, 0.02) convolution weights and N(1, 0.02) norm scales (DCGAN / pix2pix)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0.0, std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, std)
            nn.init.zeros_(layer.bias)


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """Eval mode for the duration, then the module's previous mode (translation in the middle of training)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class GreyAdapter(nn.Module):
    """A network made for images of several channels (an RGB pix2pix or CycleGAN generator) applied to grey slices.

    Such networks were trained on grey scans saved as RGB pictures, whose three channels are equal, and wrote RGB
    pictures back: so the grey slice is repeated over the input channels and the output channels are averaged,
    which turns them back into one grey slice (B, 1, H, W) -> (B, 1, H, W) whatever the network's channel counts.
    """

    def __init__(self, network: nn.Module, in_channels: int, out_channels: int):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channel counts must be positive, got ({in_channels}, {out_channels})")
        self.network = network
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 1:
            raise ValueError(f"GreyAdapter takes single-channel slices, got {x.shape[1]} channels")
        out = self.network(x.repeat(1, self.in_channels, 1, 1) if self.in_channels > 1 else x)
        return out.mean(dim=1, keepdim=True) if self.out_channels > 1 else out


def grey_network(network: nn.Module, in_channels: int, out_channels: int) -> nn.Module:
    """``network`` itself for a grey network (1, 1), else wrapped in :class:`GreyAdapter`."""
    return network if (in_channels, out_channels) == (1, 1) else GreyAdapter(network, in_channels, out_channels)


def unwrapped(module: nn.Module) -> nn.Module:
    """The network inside a :class:`GreyAdapter` (the module whose state dict holds the original's weights)."""
    return module.network if isinstance(module, GreyAdapter) else module
