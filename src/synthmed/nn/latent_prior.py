"""Priors of a shared latent space and the KL terms against them (UNIT and its Gaussian-mixture variant).

The latent is a map (B, C, h, w); each location's C-vector is one latent code z. The encoder gives the mean
mu(x) of q(z | x) = N(mu(x), diag(sigma^2)), with sigma = 1 in UNIT and a learned per-domain diagonal in the
Gaussian-mixture model. KL values are per latent element (divided by C and averaged over locations and batch),
as UNIT's mean of mu^2, so the loss weights keep their meaning for any latent size.

- :func:`kl_to_standard_normal`: closed form ``0.5 (mu^2 + sigma^2 - 1 - log sigma^2)``.
- :class:`GaussianMixturePrior`: p(z) = sum_k pi_k N(z; m_k, diag(s_k^2)) with learnable means, log-variances and
  mixture logits. KL(q || p) has no closed form for a mixture; :meth:`GaussianMixturePrior.kl` is the single-sample
  Monte-Carlo estimate ``log q(z | x) - log p(z)`` at the reparameterised sample z = mu + sigma * eps used by the
  decoder. It is unbiased, and differentiable in the encoder and in the prior's parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def kl_to_standard_normal(mu: torch.Tensor, log_var: torch.Tensor | None = None) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per element, averaged; ``log_var`` None means sigma = 1 (UNIT)."""
    mu = mu.float()
    if log_var is None:
        return 0.5 * mu.pow(2).mean()
    log_var = log_var.float().expand_as(mu)
    return 0.5 * (mu.pow(2) + log_var.exp() - 1 - log_var).mean()


def log_normal(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(log_var))) summed over the last dimension."""
    return -0.5 * (LOG_2PI + log_var + (z - mean).pow(2) / log_var.exp()).sum(-1)


class GaussianMixturePrior(nn.Module):
    """K diagonal Gaussians in C dimensions with learnable means, log-variances and weights."""

    def __init__(self, channels: int, components: int, spread: float = 1.0, seed: int = 0):
        super().__init__()
        if channels < 1 or components < 1:
            raise ValueError("the mixture needs at least one channel and one component")
        generator = torch.Generator().manual_seed(seed)
        # Means spread around the origin (so the components start apart), unit variances, equal weights.
        self.means = nn.Parameter(torch.randn(components, channels, generator=generator) * spread)
        self.log_vars = nn.Parameter(torch.zeros(components, channels))
        self.logits = nn.Parameter(torch.zeros(components))

    @property
    def components(self) -> int:
        return self.means.shape[0]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) for codes ``z`` of shape (..., C)."""
        log_weights = torch.log_softmax(self.logits, dim=0)
        per_component = log_normal(z.unsqueeze(-2), self.means, self.log_vars)  # (..., K)
        return torch.logsumexp(log_weights + per_component, dim=-1)

    def kl(self, mu: torch.Tensor, z: torch.Tensor, log_var: torch.Tensor | None = None) -> torch.Tensor:
        """Monte-Carlo KL(q(z | x) || p(z)) per latent element at the sample ``z`` drawn from q = N(mu, sigma^2).

        ``mu`` and ``z`` are latent maps (B, C, h, w); ``log_var`` a per-channel (C,) log-variance or None (1)."""
        channels = mu.shape[1]
        codes_mu = mu.float().permute(0, 2, 3, 1).reshape(-1, channels)
        codes_z = z.float().permute(0, 2, 3, 1).reshape(-1, channels)
        log_var_q = torch.zeros(channels, device=mu.device) if log_var is None else log_var.float()
        log_q = log_normal(codes_z, codes_mu, log_var_q)
        return (log_q - self.log_prob(codes_z)).mean() / channels
