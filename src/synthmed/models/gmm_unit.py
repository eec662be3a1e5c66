"""Patch-based translation with a shared latent Gaussian mixture (Zhu et al., MICCAI 2020), for non-contrast ->
contrast-enhanced images, extending UNIT (:mod:`synthmed.models.unit`).

What changes from UNIT:

- **Patches.** Training sees ``patch_size`` x ``patch_size`` patches cut at the same position of the A and B slices
  of each pair (:func:`synthmed.nn.patches.aligned_patches`), so the networks and discriminators work at the scale
  of fine structure. Whole slices are translated by sliding the patch over them with half-patch overlap and
  blending the windows with a centre-weighted pyramid (:func:`synthmed.nn.patches.sliding_window`), which leaves
  no seams.
- **Shared latent prior: a Gaussian mixture** p(z) = sum_k pi_k N(m_k, diag(s_k^2)) with ``components`` = K
  learnable means, log-variances and weights (mu_z, Sigma_z in the seed), common to both domains; the posteriors
  q_d(z | x) = N(mu_d(x), diag(sigma_d^2)) have a learned per-domain diagonal (Sigma_1, Sigma_2). All KL terms of
  the VAE and cycle losses are taken against the mixture with the single-sample Monte-Carlo estimator
  log q(z | x) - log p(z) at the reparameterised sample (no closed form exists for a mixture; see
  :mod:`synthmed.nn.latent_prior`). The prior's parameters are trained with the encoders and generators.
- The objective is the seed's: VAE_1 + VAE_2 + CC_1 + CC_2 + GAN_1 + GAN_2, with UNIT's weights.

Presets: ``paper`` (UNIT's 256 px networks on 64 px patches, K = 4 components; the seed gives no K, 4 is ours)
and ``small`` (64 px slices, 32 px patches, 16 channels, batch 4, 1500 steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from synthmed.models.registry import register
from synthmed.models.unit import UNIT, UNITConfig
from synthmed.nn.latent_prior import GaussianMixturePrior
from synthmed.nn.layers import evaluating
from synthmed.nn.patches import aligned_patches, sliding_window


@dataclass
class GMMUNITConfig(UNITConfig):
    patch_size: int = 64
    components: int = 4
    prior_spread: float = 1.0  # standard deviation of the initial component means


@register
class GMMUNIT(UNIT):
    name = "gmm-unit"
    paper = (
        "Zhu et al., Patch-Based Image-to-Image Translation with a Shared Latent Gaussian Mixture for "
        "non-contrast to contrast-enhanced CT, MICCAI 2020 (after UNIT, Liu et al. 2017)"
    )
    Config = GMMUNITConfig
    PRESETS = {
        "paper": {},
        "small": {
            "image_size": 64,
            "patch_size": 32,
            "base_channels": 16,
            "n_res": 2,
            "discriminator_channels": 16,
            "batch_size": 4,
            "steps": 1500,
        },
        "tiny": {
            "image_size": 32,
            "patch_size": 16,
            "components": 3,
            "base_channels": 8,
            "n_res": 1,
            "discriminator_channels": 8,
            "batch_size": 2,
            "steps": 10,
        },
    }

    def __init__(self, config: GMMUNITConfig):
        multiple = 2**config.n_down
        if config.patch_size < 4 * multiple or config.patch_size % multiple:
            raise ValueError(
                f"patch_size {config.patch_size} must be a multiple of {multiple} and at least {4 * multiple}"
            )
        if config.patch_size > config.image_size:
            raise ValueError(f"patch_size {config.patch_size} is larger than the image size {config.image_size}")
        if config.components < 1:
            raise ValueError("components must be at least 1")
        super().__init__(config)

    def build_latent(self, channels: int) -> None:
        self.prior = GaussianMixturePrior(channels, self.config.components, self.config.prior_spread)
        self.log_var_a = torch.nn.Parameter(torch.zeros(channels))  # Sigma_1: posterior variances of domain A
        self.log_var_b = torch.nn.Parameter(torch.zeros(channels))  # Sigma_2

    def generator_parameters(self) -> list[torch.nn.Parameter]:
        return [*super().generator_parameters(), *self.prior.parameters(), self.log_var_a, self.log_var_b]

    def training_size(self, config) -> int:
        return config.patch_size

    def training_images(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = aligned_patches([batch["source"], batch["target"]], self.config.patch_size)
        return a, b

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        losses = super().training_step(batch, step)
        # The state of the latent model, logged with the losses (log.csv) so a collapse of the mixture (one weight
        # taking over) or of the posterior variances shows up during training rather than only in the results.
        with torch.no_grad():
            losses["prior_weight_max"] = torch.softmax(self.prior.logits, 0).max()
            losses["prior_log_var"] = self.prior.log_vars.mean()
            losses["posterior_log_var_a"] = self.log_var_a.mean()
            losses["posterior_log_var_b"] = self.log_var_b.mean()
        return losses

    def encode(self, x: torch.Tensor, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        mu = (self.encoder_a if domain == "a" else self.encoder_b)(x)
        log_var = self.log_var_a if domain == "a" else self.log_var_b
        return mu, mu + torch.randn_like(mu) * (0.5 * log_var).exp().view(1, -1, 1, 1).to(mu.dtype)

    def kl(self, mu: torch.Tensor, z: torch.Tensor, domain: str) -> torch.Tensor:
        return self.prior.kl(mu, z, self.log_var_a if domain == "a" else self.log_var_b)

    @torch.inference_mode()
    def translate(self, source: torch.Tensor) -> torch.Tensor:
        with evaluating(self):
            return sliding_window(lambda x: self.map_images(x, "a"), source, self.config.patch_size)

    @torch.inference_mode()
    def translate_reverse(self, target: torch.Tensor) -> torch.Tensor:
        with evaluating(self):
            return sliding_window(lambda x: self.map_images(x, "b"), target, self.config.patch_size)
