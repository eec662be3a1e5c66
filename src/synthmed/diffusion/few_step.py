"""The few-step variance-preserving diffusion of adversarial diffusion models (Xiao et al., DDGAN, ICLR 2022;
Özbey et al., SynDiff, IEEE TMI 2023).

T (4 in SynDiff) large steps of a continuous VP-SDE with a linear rate ``beta(s)`` from ``beta_min`` to
``beta_max`` over ``s`` in [0, 1]:

- ``log mean coeff(s) = -0.25 s^2 (beta_max - beta_min) - 0.5 s beta_min``, so the VP marginal has
  ``alpha_bar(s) = exp(2 log mean coeff(s))`` and ``sigma^2(s) = 1 - alpha_bar(s)``;
- the grid ``s_i = i / T (1 - eps) + eps`` for ``i = 0..T`` (eps = 1e-3 keeps ``s_0`` off zero);
- per-step betas from consecutive grid points, ``beta_i = 1 - alpha_bar(s_i) / alpha_bar(s_{i-1})`` for
  ``i = 1..T``, and the levels ``alpha_bar_k = prod_{i<=k} (1 - beta_i)`` (``alpha_bar_0 = 1``: clean data).
  Hence ``alpha_bar_k = alpha_bar(s_k) / alpha_bar(s_0)``; ``alpha_bar(s_0) = 0.99989``, so the levels
  are the VP marginals at the grid points to within 1.1e-4 (relative). (The reference code puts a beta of 1e-8 in
  front of the table instead of 0, i.e. level 0 carries noise of standard deviation 1e-4.)

Levels are indexed ``t = 0..T``. A training pair is ``(x_t, x_{t+1})`` for ``t`` in ``0..T-1``:
``x_t ~ q(x_t | x_0)``, then one forward step ``x_{t+1} = sqrt(1 - beta_{t+1}) x_t + sqrt(beta_{t+1}) eps``.
The reverse step at index ``t`` samples the posterior ``q(x_t | x_{t+1}, x_0)`` with the usual DDPM
closed forms (beta = beta_{t+1}, alpha = 1 - beta, ab = alpha_bar_{t+1}, ab_prev = alpha_bar_t):
mean ``sqrt(ab_prev) beta / (1 - ab) x_0 + sqrt(alpha) (1 - ab_prev) / (1 - ab) x_{t+1}``,
variance ``beta (1 - ab_prev) / (1 - ab)`` (zero at t = 0, where the mean is x_0 itself).
With T = 4 the steps are far too large for the Gaussian reverse step of DDPM: an adversarially
trained generator predicts ``x_0`` and the posterior carries it back one level.
"""

from __future__ import annotations

import math

import torch


def vp_log_mean_coeff(s, beta_min: float = 0.1, beta_max: float = 20.0):
    """log of the VP-SDE mean coefficient at continuous time ``s`` in [0, 1] (float or tensor)."""
    return -0.25 * s**2 * (beta_max - beta_min) - 0.5 * s * beta_min


def vp_alpha_bar(s, beta_min: float = 0.1, beta_max: float = 20.0):
    """alpha_bar(s) = exp(2 log mean coeff(s)) = 1 - sigma^2(s)."""
    value = 2 * vp_log_mean_coeff(s, beta_min, beta_max)
    return torch.exp(value) if isinstance(value, torch.Tensor) else math.exp(value)


class FewStepSchedule:
    """T-step VP schedule (float64 tables on the CPU; coefficients applied in the data's dtype and device)."""

    def __init__(self, timesteps: int = 4, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-3):
        if timesteps < 1:
            raise ValueError(f"timesteps must be at least 1 (got {timesteps})")
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max (got {beta_min}, {beta_max})")
        if not 0 < eps < 1:
            raise ValueError(f"eps must lie in (0, 1) (got {eps})")
        self.timesteps = timesteps
        self.beta_min, self.beta_max, self.eps = beta_min, beta_max, eps
        self.times = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps * (1 - eps) + eps
        grid = vp_alpha_bar(self.times, beta_min, beta_max)
        self.betas = 1 - grid[1:] / grid[:-1]  # beta_i for i = 1..T (stored at i - 1)
        self.alphas = 1 - self.betas
        self.alpha_bars = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(self.alphas, 0)])  # levels 0..T
        ab, ab_prev = self.alpha_bars[1:], self.alpha_bars[:-1]  # posterior at index t: levels t+1 -> t
        self.posterior_coef_x0 = ab_prev.sqrt() * self.betas / (1 - ab)
        self.posterior_coef_xt = self.alphas.sqrt() * (1 - ab_prev) / (1 - ab)
        self.posterior_variance = self.betas * (1 - ab_prev) / (1 - ab)

    # --- helpers ---------------------------------------------------------------------
    def _take(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        values = table[t.long().cpu()]
        return values.reshape(-1, *([1] * (like.ndim - 1))).to(device=like.device, dtype=like.dtype)

    def _check(self, t: torch.Tensor, high: int) -> None:
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > high):
            raise ValueError(f"step index outside [0, {high}]: {t.tolist()}")

    # --- forward process ---------------------------------------------------------------
    def q_sample(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``x_t ~ q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I)`` for levels ``t`` in 0..T (one per sample)."""
        self._check(t, self.timesteps)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        ab = self._take(self.alpha_bars, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def q_sample_pair(
        self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, x_{t+1})`` for ``t`` in 0..T-1: x_t from q(x_t | x_0), then one forward step."""
        self._check(t, self.timesteps - 1)
        x_t = self.q_sample(x0, t, generator=generator)
        beta = self._take(self.betas, t, x0)  # beta_{t+1}
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return x_t, (1 - beta).sqrt() * x_t + beta.sqrt() * noise

    # --- reverse (posterior) -------------------------------------------------------------
    def posterior(self, x0: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``q(x_t | x_{t+1}, x_0)`` for ``t`` in 0..T-1 (variance 0 at t = 0)."""
        self._check(t, self.timesteps - 1)
        mean = self._take(self.posterior_coef_x0, t, x0) * x0 + self._take(self.posterior_coef_xt, t, x0) * x_next
        return mean, self._take(self.posterior_variance, t, x0)

    def posterior_sample(
        self,
        x0: torch.Tensor,
        x_next: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw ``x_t ~ q(x_t | x_{t+1}, x_0)``; no noise is added where ``t == 0``."""
        mean, variance = self.posterior(x0, x_next, t)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return mean + variance.sqrt() * noise

    def posterior_sample_at(
        self, x0: torch.Tensor, x_next: torch.Tensor, step: int, noise: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`posterior_sample` with one step index for the whole batch, as a sampler has it: the coefficients
        are Python numbers, so nothing waits for the device to look them up."""
        if not 0 <= step < self.timesteps:
            raise ValueError(f"step index outside [0, {self.timesteps - 1}]: {step}")
        coef_x0 = float(self.posterior_coef_x0[step])
        coef_xt = float(self.posterior_coef_xt[step])
        deviation = math.sqrt(float(self.posterior_variance[step]))
        out = x0 * coef_x0 + x_next * coef_xt
        return out.add_(noise, alpha=deviation) if deviation > 0 else out

    def to_dict(self) -> dict:
        return {
            "timesteps": self.timesteps,
            "beta_min": self.beta_min,
            "beta_max": self.beta_max,
            "eps": self.eps,
            "alpha_bars": [float(v) for v in self.alpha_bars],
        }
