"""The denoising U-Net shared by the diffusion models (``ddpm``, ``ddpm-gen``, ``pig``): MONAI's 2D
``DiffusionModelUNet`` with a sinusoidal step embedding, residual blocks with group norm and self-attention at the
chosen levels. Guidance (a source image, a mask estimate) enters as extra input channels."""

from __future__ import annotations

from monai.networks.nets import DiffusionModelUNet


def check_unet_config(config) -> None:
    """Refuse U-Net settings MONAI would fail on later with a less readable message.

    ``config`` needs ``image_size``, ``channels``, ``attention_levels`` and ``norm_num_groups``."""
    levels = len(config.channels)
    if len(config.attention_levels) != levels:
        raise ValueError("attention_levels needs one entry per channel level")
    if config.image_size % 2 ** (levels - 1):
        raise ValueError(f"image size {config.image_size} must be divisible by {2 ** (levels - 1)}")
    if any(c % config.norm_num_groups for c in config.channels):
        raise ValueError(
            f"channels {list(config.channels)} must be multiples of norm_num_groups {config.norm_num_groups}"
        )


def diffusion_unet(config, in_channels: int, out_channels: int = 1) -> DiffusionModelUNet:
    """A U-Net from the config's ``channels``, ``attention_levels``, ``num_res_blocks``, ``num_head_channels`` and
    ``norm_num_groups``."""
    check_unet_config(config)
    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(config.channels),
        attention_levels=tuple(config.attention_levels),
        num_res_blocks=config.num_res_blocks,
        num_head_channels=config.num_head_channels,
        norm_num_groups=config.norm_num_groups,
    )
