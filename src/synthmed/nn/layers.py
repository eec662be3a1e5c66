"""Small shared helpers: normalisation layer factory, GAN weight initialisation, temporary eval mode."""

from __future__ import annotations

import contextlib

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
