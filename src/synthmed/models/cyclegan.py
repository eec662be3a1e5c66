"""CycleGAN: unpaired translation with cycle consistency (Zhu et al., ICCV 2017).

Two generators, G_AB (source A -> target B) and G_BA (B -> A), each the paper's ResNet
generator (:mod:`synthmed.nn.resnet`: c7s1-64, d128, d256, residual blocks, u128, u64,
c7s1-1 with tanh; instance norm), and two unconditional 70x70 PatchGANs, D_A and D_B,
judging single images of their domain. Paper settings:

- least-squares GAN loss (real -> 1, fake -> 0, the generators aim for 1);
- cycle loss lambda = 10 in both directions, ``|G_BA(G_AB(a)) - a|_1`` and ``|G_AB(G_BA(b)) - b|_1``;
- identity loss 0.5 x lambda, ``|G_AB(b) - b|_1`` and ``|G_BA(a) - a|_1``;
- the discriminators' loss halved, and shown a pool of the last 50 translations
  (:class:`synthmed.nn.image_pool.ImagePool`) mixed with the newest;
- Adam lr 2e-4, betas (0.5, 0.999), one optimiser for both generators and one for both
  discriminators; lr constant for the first half of training, then linearly to zero
  (the paper: 100 + 100 epochs), as a step-wise ``LambdaLR`` over ``steps``;
- batch 1; 6 residual blocks (the paper's choice at 128 px; 9 at 256 px, ``--set resnet_blocks=9``);
  weights N(0, 0.02).

Training data are unpaired: each source slice comes with the target of a slice of
another subject (:class:`synthmed.data.datasets.SliceDataset` with ``unpaired=True``).
``translate`` maps A -> B with G_AB; ``translate_reverse`` maps B -> A with G_BA.
Translation is deterministic (no dropout; instance norm has no running statistics).

With ``context`` K > 1 (2.5D, ours) G_AB takes K neighbouring source slices; G_BA stays single-slice and is run
over the K neighbours of a target slice where the B -> A -> B cycle and the identity loss need a stack for G_AB.

The ``paper`` preset's 200,000 steps are 200 epochs of 1,000 unpaired slices at batch 1;
for the paper's 200 epochs on another data set set ``steps`` to 200 x its number of
training slices (``--set steps=...``: the learning-rate decay follows the config's
``steps``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthmed.models.base import SynthesisModel, check_context, check_network_channels
from synthmed.models.registry import register
from synthmed.nn.discriminators import PatchDiscriminator
from synthmed.nn.image_pool import ImagePool
from synthmed.nn.layers import evaluating, grey_network, init_gan_weights
from synthmed.nn.resnet import ResnetGenerator


@dataclass
class CycleGANConfig:
    image_size: int = 256
    generator_channels: int = 64
    resnet_blocks: int = 6
    discriminator_channels: int = 64
    discriminator_layers: int = 3  # 70x70 receptive field
    norm: str = "instance"
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5  # times lambda_cycle
    pool_size: int = 50
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 1
    steps: int = 200_000
    context: int = 1  # 2.5D: source slices given to G_AB (ours; the paper is 2D)
    # Channels (A, B) of the pictures the generators were made for: (3, 3) for RGB networks (e.g. imported from the
    # official code), which get grey slices repeated and whose outputs are averaged; (1, 1): grey.
    network_channels: tuple[int, int] = (1, 1)


def linear_decay(steps: int):
    """lr factor at a step: 1 for the first half of ``steps``, then linearly to 0 at ``steps``."""
    constant = steps // 2

    def factor(step: int) -> float:
        if step < constant:
            return 1.0
        return max(0.0, (steps - step) / max(1, steps - constant))

    return factor


@register
class CycleGAN(SynthesisModel):
    name = "cyclegan"
    paper = "Zhu et al., Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks, ICCV 2017"
    paired = False
    task = "translate"
    directions = ("A2B", "B2A")
    takes_context = True
    Config = CycleGANConfig
    PRESETS = {
        "paper": {},
        "small": {
            "image_size": 64,
            "generator_channels": 32,
            "resnet_blocks": 4,
            "discriminator_channels": 32,
            "batch_size": 8,
            "steps": 1000,
        },
        "tiny": {
            "image_size": 32,
            "generator_channels": 16,
            "resnet_blocks": 2,
            "discriminator_channels": 16,
            "batch_size": 2,
            "steps": 10,
        },
    }
    ema_modules = ()  # the paper keeps no average of the weights

    def __init__(self, config: CycleGANConfig):
        super().__init__(config)
        if config.image_size < 16 or config.image_size % 4:
            raise ValueError(
                f"image size {config.image_size} must be a multiple of 4 and at least 16 "
                "(prepare with --size 64, 128 or 256)"
            )
        for key in ("generator_channels", "discriminator_channels", "discriminator_layers", "batch_size", "steps"):
            if getattr(config, key) < 1:
                raise ValueError(f"{key} must be at least 1")
        if config.resnet_blocks < 0 or config.pool_size < 0:
            raise ValueError("resnet_blocks and pool_size must be 0 or more")
        if not config.lr > 0 or config.lambda_cycle < 0 or config.lambda_identity < 0:
            raise ValueError("lr must be positive, lambda_cycle and lambda_identity non-negative")
        if not all(0 <= beta < 1 for beta in config.betas):
            raise ValueError(f"betas must lie in [0, 1), got {list(config.betas)}")
        if config.norm not in ("instance", "batch", "none"):
            raise ValueError(f"unknown norm {config.norm!r}; use instance (the paper's), batch or none")
        check_context(config)
        channels_a, channels_b = check_network_channels(config)
        self.generator_ab = grey_network(
            ResnetGenerator(channels_a, channels_b, config.generator_channels, config.resnet_blocks, norm=config.norm),
            *config.network_channels,
        )
        reverse = tuple(reversed(config.network_channels))
        self.generator_ba = grey_network(
            ResnetGenerator(*reverse, config.generator_channels, config.resnet_blocks, norm=config.norm), *reverse
        )
        # Tiny images cannot host all stride-2 layers: keep at least a 4x4 map before the last two convolutions.
        layers = min(config.discriminator_layers, max(1, int(math.log2(config.image_size)) - 2))
        self.discriminator_a = PatchDiscriminator(1, config.discriminator_channels, layers, norm=config.norm)
        self.discriminator_b = PatchDiscriminator(1, config.discriminator_channels, layers, norm=config.norm)
        self.pool_a = ImagePool(config.pool_size)  # translations B -> A, for D_A
        self.pool_b = ImagePool(config.pool_size)  # translations A -> B, for D_B
        init_gan_weights(self)
        generators = [*self.generator_ab.parameters(), *self.generator_ba.parameters()]
        discriminators = [*self.discriminator_a.parameters(), *self.discriminator_b.parameters()]
        self._optimizers = {
            "generator": torch.optim.Adam(generators, lr=config.lr, betas=config.betas),
            "discriminator": torch.optim.Adam(discriminators, lr=config.lr, betas=config.betas),
        }
        self._schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(config.steps))
            for name, optimizer in self._optimizers.items()
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def schedulers(self) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
        return self._schedulers

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        # Unpaired: b is another subject's slice. With 2.5D context both come as stacks of neighbouring slices; G_AB
        # takes a stack, G_BA single slices (run over b's stack to close the B -> A -> B cycle).
        stack_a, stack_b = batch["source"], batch["target"]
        real_a, real_b = self.centre_slice(stack_a), self.centre_slice(stack_b)
        cfg = self.config
        opt_g, opt_d = self._optimizers["generator"], self._optimizers["discriminator"]
        discriminators = (self.discriminator_a, self.discriminator_b)

        # Generators: fool both discriminators, close both cycles, leave the other domain alone.
        for d in discriminators:
            d.requires_grad_(False)
        with self.autocast():
            fake_b = self.generator_ab(stack_a)
            fake_a_stack = self.slice_by_slice(self.generator_ba, stack_b)
            fake_a = self.centre_slice(fake_a_stack)
            cycle = F.l1_loss(self.generator_ba(fake_b).float(), real_a) + F.l1_loss(
                self.generator_ab(fake_a_stack).float(), real_b
            )
            if cfg.lambda_identity > 0:
                identity = F.l1_loss(self.generator_ab(stack_b).float(), real_b) + F.l1_loss(
                    self.generator_ba(real_a).float(), real_a
                )
            else:
                identity = torch.zeros((), device=real_a.device)
            gan = _lsgan(self.discriminator_b(fake_b), True) + _lsgan(self.discriminator_a(fake_a), True)
            loss_g = gan + cfg.lambda_cycle * cycle + cfg.lambda_cycle * cfg.lambda_identity * identity
        opt_g.zero_grad(set_to_none=True)
        self.backward(loss_g)
        self.step_optimizer(opt_g)
        for d in discriminators:
            d.requires_grad_(True)

        # Discriminators: real -> 1, translations (newest mixed with the pool's) -> 0, each loss halved.
        with self.autocast():
            loss_d_b = 0.5 * (
                _lsgan(self.discriminator_b(real_b), True)
                + _lsgan(self.discriminator_b(self.pool_b.query(fake_b)), False)
            )
            loss_d_a = 0.5 * (
                _lsgan(self.discriminator_a(real_a), True)
                + _lsgan(self.discriminator_a(self.pool_a.query(fake_a)), False)
            )
            loss_d = loss_d_a + loss_d_b
        opt_d.zero_grad(set_to_none=True)
        self.backward(loss_d)
        self.step_optimizer(opt_d)

        # The engine checkpoints the schedulers but does not step them: one scheduler step per training step.
        for scheduler in self._schedulers.values():
            scheduler.step()
        return {
            "loss_g": loss_g.detach(),
            "loss_d": loss_d.detach(),
            "gan": gan.detach(),
            "cycle": cycle.detach(),
            "identity": identity.detach(),
        }

    @torch.inference_mode()
    def translate(self, source: torch.Tensor) -> torch.Tensor:
        """Source modality (A) -> target modality (B) with G_AB."""
        with evaluating(self.generator_ab), self.autocast():
            return self.generator_ab(source).float()

    @torch.inference_mode()
    def translate_reverse(self, target: torch.Tensor) -> torch.Tensor:
        """Target modality (B) -> source modality (A) with G_BA."""
        with evaluating(self.generator_ba), self.autocast():
            return self.generator_ba(target).float()


def _lsgan(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean squared distance of the patch scores to 1 (real) or 0 (fake)."""
    prediction = prediction.float()
    return F.mse_loss(prediction, torch.ones_like(prediction) if real else torch.zeros_like(prediction))
