"""Samplers for a trained denoiser: one network, five ways to run the reverse process.

Every sampler takes ``denoise(x, s) -> (x0_hat, eps_hat)`` (the network at continuous step
``s``, see :mod:`synthmed.diffusion.schedule`) and a budget of network evaluations
(``steps`` = NFE). Steps are spread uniformly over ``s`` from ``T-1`` to ``0``; the last
evaluation at ``s = 0`` returns its ``x0_hat`` (Tweedie's denoised estimate), so every
sampler ends on a clean image.

- ``ddpm``: ancestral sampling (Ho et al. 2020) on the respaced chain (Nichol & Dhariwal
  2021): ``x_prev ~ q(x_prev | x_t, x0_hat)``; with ``steps = T`` it is the original chain.
- ``ddim``: Song, Meng & Ermon 2021; ``eta = 0`` deterministic, ``eta = 1`` ancestral.
- ``em``: Euler-Maruyama on the reverse-time VP-SDE (Song et al. 2021),
  ``x <- x + [beta/2 x + beta score] ds + sqrt(beta ds) z``, score = -eps / sqrt(1 - ab).
- ``pc``: predictor-corrector: per step one Langevin corrector step whose size follows a
  target signal-to-noise ratio (``snr``, 0.16 as in Song et al. for VP), then a predictor
  (``reverse-diffusion``, the discretised reverse SDE, or ``em``). 2 NFE per step.
- ``ode``: the probability-flow ODE, solved with Heun's second-order method (Karras et al.
  2022) in the variables ``w = x / sqrt(1 - ab)`` and ``tau = sqrt(ab / (1 - ab))`` (the
  square root of the SNR), where it reads ``dw/dtau = x0_hat``: a bounded slope. Its Euler
  version is DDIM with eta 0; each Heun step costs 2 NFE, plus the final denoising
  evaluation. Why not the usual ``dy/dsigma = eps_hat`` (y = x / sqrt(ab), sigma = 1 / tau):
  there the slope at the end of a step towards the data, ``(y - x0_hat) / sigma``,
  multiplies any inconsistency of a trained network by 1 / sigma ~ 100, and a step from
  the cosine schedule's sigma_max ~ 2e4 multiplies the change of the slope by 2e4. On the
  phantom benchmark (trained v-model, 9 NFE) the sigma form gave 13.1 dB PSNR and this one
  21.9 dB; with an exact Gaussian denoiser both converge at second order.

No sampler synchronises with the host inside its loop: the grid and the schedule values
are Python floats computed up front, and noise comes from the caller's generator on the
model's device, so a fixed seed reproduces the output on the same device.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from synthmed.diffusion.schedule import NoiseSchedule, posterior_between

Denoiser = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]

SAMPLERS = ("ddpm", "ddim", "em", "pc", "ode")
PREDICTORS = ("reverse-diffusion", "em")
DEFAULT_SNR = 0.16


def continuous_grid(schedule: NoiseSchedule, points: int) -> list[float]:
    """``points`` steps from T-1 down to 0, uniformly spaced (fractional)."""
    last = schedule.timesteps - 1
    if points <= 1:
        return [float(last)]
    return [last * (1 - k / (points - 1)) for k in range(points)]


def integer_grid(schedule: NoiseSchedule, points: int) -> list[int]:
    """``points`` integer steps from T-1 down to 0 (at most T), uniformly spaced."""
    grid: list[int] = []
    for s in continuous_grid(schedule, min(points, schedule.timesteps)):
        t = int(round(s))
        if not grid or t < grid[-1]:
            grid.append(t)
    return grid


def evaluations(sampler: str, steps: int, timesteps: int) -> int:
    """The number of network evaluations a sampler makes for a budget of ``steps``."""
    check_sampler(sampler, steps)
    if sampler in ("ddpm", "ddim"):
        return min(steps, timesteps)
    if sampler == "em":
        return steps
    return 2 * ((steps - 1) // 2) + 1  # pc and ode: pairs of evaluations plus the final one


def check_sampler(sampler: str, steps: int) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1 (got {steps})")


def sample(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    *,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    snr: float = DEFAULT_SNR,
    predictor: str = "reverse-diffusion",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Run the reverse process from pure noise of ``shape``; returns x0 (same shape)."""
    check_sampler(sampler, steps)
    if eta < 0:
        raise ValueError(f"eta must be non-negative (got {eta})")
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; use one of {', '.join(PREDICTORS)}")

    def noise() -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    x = noise()
    if sampler in ("ddpm", "ddim"):
        return _discrete(denoise, schedule, x, integer_grid(schedule, steps), 1.0 if sampler == "ddpm" else eta, noise,
                         ancestral=sampler == "ddpm")
    if sampler == "em":
        return _euler_maruyama(denoise, schedule, x, continuous_grid(schedule, steps), noise)
    if sampler == "pc":
        return _predictor_corrector(denoise, schedule, x, continuous_grid(schedule, (steps - 1) // 2 + 1), noise, snr, predictor)
    return _heun_ode(denoise, schedule, x, continuous_grid(schedule, (steps - 1) // 2 + 1))


def _discrete(denoise: Denoiser, schedule: NoiseSchedule, x: torch.Tensor, grid: list[int], eta: float, noise,
              ancestral: bool) -> torch.Tensor:
    alpha_bars = schedule.alpha_bars.tolist()
    for k, t in enumerate(grid):
        x0, eps = denoise(x, float(t))
        if k == len(grid) - 1:
            return x0
        x = discrete_step(x, x0, eps, alpha_bars[t], alpha_bars[grid[k + 1]], eta, noise, ancestral)
    raise AssertionError("empty grid")


def discrete_step(x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, ab: float, ab_prev: float, eta: float, noise,
                  ancestral: bool) -> torch.Tensor:
    """One step from noise level ``ab`` to ``ab_prev`` given the estimates (x0_hat, eps_hat) at ``x``: the
    respaced DDPM posterior (``ancestral``) or DDIM with ``eta`` (0: deterministic). ``noise()`` draws fresh noise."""
    if ancestral:
        mean, variance = posterior_between(x0, x, ab, ab_prev)
        return mean + math.sqrt(variance) * noise()
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
    x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
    if sigma > 0:
        x = x + sigma * noise()
    return x


def _euler_maruyama(denoise: Denoiser, schedule: NoiseSchedule, x: torch.Tensor, grid: list[float], noise) -> torch.Tensor:
    for k, s in enumerate(grid):
        x0, eps = denoise(x, s)
        if k == len(grid) - 1:
            return x0
        x = _em_step(schedule, x, eps, s, s - grid[k + 1], noise)
    raise AssertionError("empty grid")


def _em_step(schedule: NoiseSchedule, x: torch.Tensor, eps: torch.Tensor, s: float, ds: float, noise) -> torch.Tensor:
    beta = schedule.beta_at(s)
    score = eps * (-1.0 / math.sqrt(1 - schedule.alpha_bar_at(s)))
    return x + (0.5 * beta * ds) * x + (beta * ds) * score + math.sqrt(beta * ds) * noise()


def _predictor_corrector(denoise: Denoiser, schedule: NoiseSchedule, x: torch.Tensor, grid: list[float], noise,
                         snr: float, predictor: str) -> torch.Tensor:
    for k, s in enumerate(grid):
        if k == len(grid) - 1:
            return denoise(x, s)[0]
        noise_scale = -1.0 / math.sqrt(1 - schedule.alpha_bar_at(s))
        # Corrector: one Langevin step, its size set so that |step * score| / |noise| hits the target SNR.
        _, eps = denoise(x, s)
        score = eps * noise_scale
        z = noise()
        grad_norm = score.flatten(1).norm(dim=1).clamp(min=1e-12)
        noise_norm = z.flatten(1).norm(dim=1)
        alpha = math.exp(-schedule.beta_at(s))
        step = (2 * alpha) * (snr * noise_norm / grad_norm) ** 2
        step = step.reshape(-1, *([1] * (x.ndim - 1)))
        x = x + step * score + (2 * step).sqrt() * z
        # Predictor: from s to the next grid point.
        _, eps = denoise(x, s)
        if predictor == "em":
            x = _em_step(schedule, x, eps, s, s - grid[k + 1], noise)
        else:
            alpha_step = schedule.alpha_bar_at(s) / schedule.alpha_bar_at(grid[k + 1])
            beta_step = 1 - alpha_step
            x = (2 - math.sqrt(alpha_step)) * x + beta_step * (eps * noise_scale) + math.sqrt(beta_step) * noise()
    raise AssertionError("empty grid")


def _heun_ode(denoise: Denoiser, schedule: NoiseSchedule, x: torch.Tensor, grid: list[float]) -> torch.Tensor:
    noise_level = [math.sqrt(1 - schedule.alpha_bar_at(s)) for s in grid]
    tau = [math.sqrt(schedule.alpha_bar_at(s)) / n for s, n in zip(grid, noise_level)]
    w = x / noise_level[0]
    for k, s in enumerate(grid):
        if k == len(grid) - 1:
            return denoise(w * noise_level[k], s)[0]
        step = tau[k + 1] - tau[k]
        slope = denoise(w * noise_level[k], s)[0]
        w_euler = w + step * slope
        slope_next = denoise(w_euler * noise_level[k + 1], grid[k + 1])[0]
        w = w + (0.5 * step) * (slope + slope_next)
    raise AssertionError("empty grid")
