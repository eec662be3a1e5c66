"""pix2pix: conditional GAN for paired translation (Isola et al., CVPR 2017).

Generator: U-Net with skip connections (:mod:`synthmed.nn.unet`). Discriminator:
70x70 PatchGAN on the (source, image) pair. Losses: the conditional GAN loss
(binary cross-entropy on logits) plus lambda_L1 = 100 times the L1 distance to the
target; the discriminator's loss is halved, as in the paper. Adam lr 2e-4,
betas (0.5, 0.999). Dropout is off at translation time (eval mode), so translations
are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthmed.models.base import SynthesisModel, check_context, check_network_channels
from synthmed.models.registry import register
from synthmed.nn.discriminators import PatchDiscriminator
from synthmed.nn.layers import grey_network, init_gan_weights
from synthmed.nn.unet import UNetGenerator


@dataclass
class Pix2PixConfig:
    image_size: int = 256
    generator_channels: int = 64
    generator_depth: int = 8  # capped at log2(image_size): 1x1 bottleneck at most
    discriminator_channels: int = 64
    discriminator_layers: int = 3  # 70x70 receptive field
    norm: str = "batch"
    dropout: float = 0.5
    lambda_l1: float = 100.0
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 1
    steps: int = 200_000
    ema_decay: float = 0.0
    context: int = 1  # 2.5D: source slices given to the networks (ours; the paper is 2D)
    # Channels (in, out) of the pictures the generator was made for: (3, 3) for an RGB network (e.g. one imported
    # from the official code), which gets the grey slice repeated and whose outputs are averaged; (1, 1): grey.
    network_channels: tuple[int, int] = (1, 1)


@register
class Pix2Pix(SynthesisModel):
    name = "pix2pix"
    paper = "Isola et al., Image-to-Image Translation with Conditional Adversarial Networks, CVPR 2017"
    paired = True
    task = "translate"
    Config = Pix2PixConfig
    PRESETS = {
        "paper": {},
        "small": {
            "image_size": 64,
            "generator_channels": 32,
            "discriminator_channels": 32,
            "batch_size": 16,
            "steps": 1000,
        },
        "tiny": {"image_size": 32, "generator_channels": 8, "discriminator_channels": 8, "batch_size": 2, "steps": 10},
    }
    ema_modules = ("generator",)
    takes_context = True

    def __init__(self, config: Pix2PixConfig):
        super().__init__(config)
        # As deep as the paper's 8 levels allow, with every level halving the image exactly.
        depth = 0
        while depth < config.generator_depth and config.image_size % 2 ** (depth + 1) == 0:
            depth += 1
        if depth < 3:
            raise ValueError(
                f"image size {config.image_size} must be a multiple of 8 (prepare with --size 64, 128 or 256)"
            )
        for key in ("generator_channels", "discriminator_channels", "discriminator_layers", "batch_size"):
            if getattr(config, key) < 1:
                raise ValueError(f"{key} must be at least 1")
        if config.lr <= 0 or config.lambda_l1 < 0:
            raise ValueError("lr must be positive and lambda_l1 non-negative")
        check_context(config)
        in_channels, out_channels = check_network_channels(config)
        self.generator = grey_network(
            UNetGenerator(
                in_channels, out_channels, config.generator_channels, depth, norm=config.norm, dropout=config.dropout
            ),
            *config.network_channels,
        )
        # Tiny images cannot host all stride-2 layers: keep at least a 4x4 map before the last two convolutions.
        layers = min(config.discriminator_layers, max(1, int(math.log2(config.image_size)) - 2))
        self.discriminator = PatchDiscriminator(
            config.context + 1, config.discriminator_channels, layers, norm=config.norm
        )
        init_gan_weights(self)
        self._optimizers = {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=config.betas),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=config.lr, betas=config.betas),
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        source, target = batch["source"], batch["target"]
        opt_g, opt_d = self._optimizers["generator"], self._optimizers["discriminator"]

        with self.autocast():
            fake = self.generator(source)
            # Discriminator: real pairs -> 1, translated pairs -> 0.
            real_logits = self.discriminator(torch.cat([source, target], 1))
            fake_logits = self.discriminator(torch.cat([source, fake.detach()], 1))
            loss_d = 0.5 * (
                F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
            )
        opt_d.zero_grad(set_to_none=True)
        self.backward(loss_d)
        self.step_optimizer(opt_d)

        with self.autocast():
            fake_logits = self.discriminator(torch.cat([source, fake], 1))
            loss_gan = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
            loss_l1 = F.l1_loss(fake.float(), target)
            loss_g = loss_gan + self.config.lambda_l1 * loss_l1
        opt_g.zero_grad(set_to_none=True)
        self.backward(loss_g)
        self.step_optimizer(opt_g)
        return {"loss_g": loss_g.detach(), "loss_d": loss_d.detach(), "gan": loss_gan.detach(), "l1": loss_l1.detach()}

    @torch.inference_mode()
    def translate(self, source: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.generator(source).float()
