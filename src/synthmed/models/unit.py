"""UNIT: unsupervised image-to-image translation with a shared latent space (Liu et al., NeurIPS 2017).

Two VAE-GANs, one per domain (A = source modality, B = target modality): encoders E_A, E_B and generators G_A, G_B
(:mod:`synthmed.nn.unit`) whose last encoder block and first generator block are shared, so both domains map into
one latent space; discriminators D_A, D_B (PatchGANs). The encoder gives the mean of q(z | x) = N(mu(x), I); the
latent used for decoding is z = mu + eps, eps ~ N(0, I) (unit variance), and translation uses the mean.

Losses (the seed's equations; lambda_0 = 10, lambda_1 = lambda_3 = 0.1, lambda_2 = lambda_4 = 100):

- VAE_A = lambda_1 KL(q_A(z | a) || p(z)) + lambda_2 |G_A(z_a) - a|_1, VAE_B likewise;
- GAN_A = lambda_0 [log D_A(a) + log(1 - D_A(G_A(z_b)))], GAN_B likewise (BCE with logits; the generators use
  the non-saturating form);
- CC_A = lambda_3 KL(q_A(z | a)) + lambda_3 KL(q_B(z | a_ab)) + lambda_4 |G_A(z_ab) - a|_1 with a_ab = G_B(z_a)
  and z_ab sampled from q_B(z | a_ab); CC_B likewise. (The seed's transcription weights the second KL by
  lambda_4, the UNIT paper by lambda_3; we follow the paper.)
- The log-likelihoods are Laplacian: L1 distances (means over pixels); KL per latent element
  (:mod:`synthmed.nn.latent_prior`), against N(0, I) here, against a learned Gaussian mixture in ``gmm-unit``.

Discriminators update first on translations made without a graph, then encoders and generators together.

With ``context`` K > 1 (2.5D, ours) E_A takes K neighbouring source slices; the other networks stay single-slice,
and the B -> A -> B cycle feeds E_A the translations of the K neighbours of the B slice.
Adam lr 1e-4, betas (0.5, 0.999), weight decay 1e-4. Presets: ``paper`` (256 px, 64 channels, two
down-samplings, 3 private + 1 shared residual blocks per network, batch 1) and ``small`` (64 px, 16 channels,
2 + 1 blocks, batch 1, 1500 steps). The PatchGAN discriminators (70x70, instance norm) and the step count
(200,000) are our choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthmed.models.base import SynthesisModel, check_context
from synthmed.models.registry import register
from synthmed.nn.discriminators import PatchDiscriminator
from synthmed.nn.latent_prior import kl_to_standard_normal
from synthmed.nn.layers import evaluating, init_gan_weights
from synthmed.nn.unit import UnitEncoder, UnitGenerator, shared_blocks


@dataclass
class UNITConfig:
    image_size: int = 256
    base_channels: int = 64
    n_down: int = 2
    n_res: int = 3  # private residual blocks per encoder / generator
    n_shared: int = 1  # shared residual blocks (last of the encoders, first of the generators)
    discriminator_channels: int = 64
    discriminator_layers: int = 3
    lambda_gan: float = 10.0  # lambda_0
    lambda_kl: float = 0.1  # lambda_1
    lambda_recon: float = 100.0  # lambda_2
    lambda_cycle_kl: float = 0.1  # lambda_3
    lambda_cycle_recon: float = 100.0  # lambda_4
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-4
    batch_size: int = 1
    steps: int = 200_000
    ema_decay: float = 0.0
    context: int = 1  # 2.5D: source slices given to E_A (ours; the paper is 2D)


@register
class UNIT(SynthesisModel):
    name = "unit"
    paper = "Liu et al., Unsupervised Image-to-Image Translation Networks, NeurIPS 2017"
    paired = False
    task = "translate"
    directions = ("A2B", "B2A")
    takes_context = True
    Config = UNITConfig
    PRESETS = {
        "paper": {},
        "small": {
            "image_size": 64,
            "base_channels": 16,
            "n_res": 2,
            "discriminator_channels": 16,
            "batch_size": 1,
            "steps": 1500,
        },
        "tiny": {
            "image_size": 32,
            "base_channels": 8,
            "n_res": 1,
            "discriminator_channels": 8,
            "batch_size": 2,
            "steps": 10,
        },
    }

    def __init__(self, config: UNITConfig):
        super().__init__(config)
        self._check(config)
        shared_encoder = shared_blocks(config.base_channels * 2**config.n_down, config.n_shared)
        shared_generator = shared_blocks(config.base_channels * 2**config.n_down, config.n_shared)
        self.encoder_a = UnitEncoder(shared_encoder, config.context, config.base_channels, config.n_down, config.n_res)
        self.encoder_b = UnitEncoder(shared_encoder, 1, config.base_channels, config.n_down, config.n_res)
        self.generator_a = UnitGenerator(shared_generator, 1, config.base_channels, config.n_down, config.n_res)
        self.generator_b = UnitGenerator(shared_generator, 1, config.base_channels, config.n_down, config.n_res)
        size = self.training_size(config)
        layers = min(config.discriminator_layers, max(1, int(math.log2(size)) - 2))
        self.discriminator_a = PatchDiscriminator(1, config.discriminator_channels, layers, norm="instance")
        self.discriminator_b = PatchDiscriminator(1, config.discriminator_channels, layers, norm="instance")
        init_gan_weights(self)
        self.build_latent(config.base_channels * 2**config.n_down)
        self._optimizers = {
            "generator": torch.optim.Adam(
                self.generator_parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
            ),
            "discriminator": torch.optim.Adam(
                [*self.discriminator_a.parameters(), *self.discriminator_b.parameters()],
                lr=config.lr,
                betas=config.betas,
                weight_decay=config.weight_decay,
            ),
        }

    @staticmethod
    def _check(config) -> None:
        multiple = 2**config.n_down
        if config.image_size < 4 * multiple or config.image_size % multiple:
            raise ValueError(
                f"image size {config.image_size} must be a multiple of {multiple} and at least {4 * multiple}"
            )
        for key in (
            "base_channels",
            "n_down",
            "n_shared",
            "discriminator_channels",
            "discriminator_layers",
            "batch_size",
            "steps",
        ):
            if getattr(config, key) < 1:
                raise ValueError(f"{key} must be at least 1")
        if config.n_res < 0:
            raise ValueError("n_res must be 0 or more")
        weights = (
            config.lambda_gan,
            config.lambda_kl,
            config.lambda_recon,
            config.lambda_cycle_kl,
            config.lambda_cycle_recon,
        )
        if not config.lr > 0 or min(weights) < 0 or config.weight_decay < 0:
            raise ValueError("lr must be positive, the loss weights and weight decay non-negative")
        check_context(config)

    def build_latent(self, channels: int) -> None:
        """Learnable parts of the latent model (none in UNIT: q = N(mu, I), p = N(0, I)); built before the optimisers."""

    def training_size(self, config) -> int:
        """Side of the images the networks see in training (whole slices here; patches in gmm-unit)."""
        return config.image_size

    def generator_parameters(self) -> list[torch.nn.Parameter]:
        modules = (self.encoder_a, self.encoder_b, self.generator_a, self.generator_b)
        return list({id(p): p for m in modules for p in m.parameters()}.values())  # shared blocks once

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    # --- latent ---------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, z): the mean of q(z | x) and a reparameterised sample z = mu + eps (unit variance)."""
        mu = (self.encoder_a if domain == "a" else self.encoder_b)(x)
        return mu, mu + torch.randn_like(mu)

    def kl(self, mu: torch.Tensor, z: torch.Tensor, domain: str) -> torch.Tensor:
        return kl_to_standard_normal(mu)

    def training_images(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["source"], batch["target"]  # unpaired: the target is another subject's slice

    def encode_target_stack(self, stack_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, z) of the middle B slice and the B -> A translations of every slice of the stack (B, K, H, W).

        E_A takes K neighbouring slices (2.5D), so the B -> A -> B cycle needs a translated stack: E_B and G_A run
        over each neighbour of the B slice (one slice each, as they were trained)."""
        n, k, height, width = stack_b.shape
        mu, z = self.encode(stack_b.reshape(n * k, 1, height, width), "b")
        fake_a = self.generator_a(z)
        middle = k // 2

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, k, *t.shape[1:])[:, middle]

        return pick(mu), pick(z), fake_a.reshape(n, k, *fake_a.shape[2:])

    # --- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        stack_a, stack_b = self.training_images(batch)  # (B, K, H, W) with 2.5D context, else K = 1
        a, b = self.centre_slice(stack_a), self.centre_slice(stack_b)
        opt_g, opt_d = self._optimizers["generator"], self._optimizers["discriminator"]
        d_a, d_b = self.discriminator_a, self.discriminator_b

        # Discriminators: real vs translations made without a graph.
        with torch.no_grad(), self.autocast():
            fake_b = self.generator_b(self.encode(stack_a, "a")[1])
            fake_a = self.generator_a(self.encode(b, "b")[1])
        with self.autocast():
            loss_d = cfg.lambda_gan * (
                _bce(d_a(a), True) + _bce(d_a(fake_a), False) + _bce(d_b(b), True) + _bce(d_b(fake_b), False)
            )
        opt_d.zero_grad(set_to_none=True)
        self.backward(loss_d)
        self.step_optimizer(opt_d)

        # Encoders and generators, discriminators frozen.
        for d in (d_a, d_b):
            d.requires_grad_(False)
        try:
            with self.autocast():
                mu_a, z_a = self.encode(stack_a, "a")
                mu_b, z_b, fake_a_stack = self.encode_target_stack(stack_b)
                kl_a, kl_b = self.kl(mu_a, z_a, "a"), self.kl(mu_b, z_b, "b")
                recon = F.l1_loss(self.generator_a(z_a).float(), a) + F.l1_loss(self.generator_b(z_b).float(), b)
                fake_b, fake_a = self.generator_b(z_a), self.centre_slice(fake_a_stack)
                gan = _bce(d_a(fake_a), True) + _bce(d_b(fake_b), True)
                mu_ab, z_ab = self.encode(fake_b, "b")
                mu_ba, z_ba = self.encode(fake_a_stack, "a")
                cycle_kl = kl_a + kl_b + self.kl(mu_ab, z_ab, "b") + self.kl(mu_ba, z_ba, "a")
                cycle = F.l1_loss(self.generator_a(z_ab).float(), a) + F.l1_loss(self.generator_b(z_ba).float(), b)
                loss_g = (
                    cfg.lambda_gan * gan
                    + cfg.lambda_kl * (kl_a + kl_b)
                    + cfg.lambda_recon * recon
                    + cfg.lambda_cycle_kl * cycle_kl
                    + cfg.lambda_cycle_recon * cycle
                )
            opt_g.zero_grad(set_to_none=True)
            self.backward(loss_g)
            self.step_optimizer(opt_g)
        finally:
            for d in (d_a, d_b):
                d.requires_grad_(True)
        return {
            "loss_g": loss_g.detach(),
            "loss_d": loss_d.detach(),
            "gan": gan.detach(),
            "kl": (kl_a + kl_b).detach(),
            "recon": recon.detach(),
            "cycle": cycle.detach(),
            "cycle_kl": cycle_kl.detach(),
        }

    # --- translation ----------------------------------------------------------------------------
    def map_images(self, x: torch.Tensor, source: str) -> torch.Tensor:
        """Translate whole images from domain ``source`` ("a" or "b") to the other, through the latent mean."""
        encoder = self.encoder_a if source == "a" else self.encoder_b
        generator = self.generator_b if source == "a" else self.generator_a
        with self.autocast():
            return generator(encoder(x)).float()

    @torch.inference_mode()
    def translate(self, source: torch.Tensor) -> torch.Tensor:
        """A -> B: G_B(mu_A(x))."""
        with evaluating(self):
            return self.map_images(source, "a")

    @torch.inference_mode()
    def translate_reverse(self, target: torch.Tensor) -> torch.Tensor:
        """B -> A: G_A(mu_B(x))."""
        with evaluating(self):
            return self.map_images(target, "b")


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits) if real else torch.zeros_like(logits))
