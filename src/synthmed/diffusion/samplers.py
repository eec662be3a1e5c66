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
  sampler benchmark (benchmarks/diffusion_samplers.py) the sigma form was far worse with a trained
  network; with an exact Gaussian denoiser both converge at second order.

Each sampler is an object of the registry :data:`SAMPLERS` (the diffusers / MONAI scheduler style): it knows its
name, how many network evaluations a budget of ``steps`` costs, its default budget, whether ``eta`` applies, and
whether it moves along the integer chain (the discrete samplers, which PIG's joint sampler can use).

No sampler synchronises with the host inside its loop: the grid and the schedule values
are Python floats computed up front, and noise comes from the caller's generator on the
model's device, so a fixed seed reproduces the output on the same device.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import torch

from synthmed.diffusion.schedule import NoiseSchedule, posterior_between

log = logging.getLogger(__name__)

Denoiser = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
Noise = Callable[[], torch.Tensor]

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


class Sampler(ABC):
    """One way to run the reverse process of a trained denoiser."""

    name: ClassVar[str]
    uses_eta: ClassVar[bool] = False
    discrete: ClassVar[bool] = False  # steps along the integer chain with :meth:`step` (joint sampling can use it)

    def default_steps(self, timesteps: int, sampling_steps: int) -> int:
        """The budget when the user gives none: the model's configured ``sampling_steps``."""
        return sampling_steps

    def evaluations(self, steps: int, timesteps: int) -> int:
        """The number of network evaluations for a budget of ``steps``."""
        return steps

    @abstractmethod
    def run(
        self,
        denoise: Denoiser,
        schedule: NoiseSchedule,
        x: torch.Tensor,
        steps: int,
        noise: Noise,
        *,
        eta: float,
        snr: float,
        predictor: str,
    ) -> torch.Tensor:
        """x0 from the noise ``x`` in a budget of ``steps``; ``noise()`` draws fresh noise of ``x``'s shape."""

    def __repr__(self) -> str:
        return f"<sampler {self.name}>"


class _Discrete(Sampler):
    discrete = True

    def evaluations(self, steps: int, timesteps: int) -> int:
        return min(steps, timesteps)

    @abstractmethod
    def step(
        self, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, ab: float, ab_prev: float, eta: float, noise: Noise
    ) -> torch.Tensor:
        """From noise level ``ab`` to ``ab_prev`` given the estimates (x0_hat, eps_hat) at ``x``."""

    def run(
        self,
        denoise: Denoiser,
        schedule: NoiseSchedule,
        x: torch.Tensor,
        steps: int,
        noise: Noise,
        *,
        eta: float,
        snr: float,
        predictor: str,
    ) -> torch.Tensor:
        grid = integer_grid(schedule, steps)
        alpha_bars = schedule.alpha_bars.tolist()
        for k, t in enumerate(grid):
            x0, eps = denoise(x, float(t))
            if k == len(grid) - 1:
                return x0
            x = self.step(x, x0, eps, alpha_bars[t], alpha_bars[grid[k + 1]], eta, noise)
        raise AssertionError("empty grid")


class AncestralDDPM(_Discrete):
    """The respaced DDPM posterior; with no budget given it runs the original chain of all T steps."""

    name = "ddpm"

    def default_steps(self, timesteps: int, sampling_steps: int) -> int:
        return timesteps

    def step(self, x, x0, eps, ab, ab_prev, eta, noise):
        mean, variance = posterior_between(x0, x, ab, ab_prev)
        return mean + math.sqrt(variance) * noise()


class DDIM(_Discrete):
    name = "ddim"
    uses_eta = True

    def step(self, x, x0, eps, ab, ab_prev, eta, noise):
        """``eta`` 0: deterministic; 1: the ancestral variance."""
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * noise()
        return x


class EulerMaruyama(Sampler):
    name = "em"

    def run(self, denoise, schedule, x, steps, noise, *, eta, snr, predictor):
        grid = continuous_grid(schedule, steps)
        for k, s in enumerate(grid):
            x0, eps = denoise(x, s)
            if k == len(grid) - 1:
                return x0
            x = _em_step(schedule, x, eps, s, s - grid[k + 1], noise)
        raise AssertionError("empty grid")


class _Paired(Sampler):
    """Samplers that spend 2 evaluations per step, plus the final denoising evaluation."""

    def evaluations(self, steps: int, timesteps: int) -> int:
        return 2 * ((steps - 1) // 2) + 1

    @staticmethod
    def grid(schedule: NoiseSchedule, steps: int) -> list[float]:
        return continuous_grid(schedule, (steps - 1) // 2 + 1)


class PredictorCorrector(_Paired):
    name = "pc"

    def run(self, denoise, schedule, x, steps, noise, *, eta, snr, predictor):
        return _predictor_corrector(denoise, schedule, x, self.grid(schedule, steps), noise, snr, predictor)


class ProbabilityFlowODE(_Paired):
    name = "ode"

    def run(self, denoise, schedule, x, steps, noise, *, eta, snr, predictor):
        return _heun_ode(denoise, schedule, x, self.grid(schedule, steps))


SAMPLERS: dict[str, Sampler] = {
    s.name: s for s in (AncestralDDPM(), DDIM(), EulerMaruyama(), PredictorCorrector(), ProbabilityFlowODE())
}


def get_sampler(name: str, allowed: tuple[str, ...] | None = None) -> Sampler:
    """The registered sampler ``name``; ValueError naming the choices (``allowed``, default all) otherwise."""
    choices = tuple(SAMPLERS) if allowed is None else allowed
    if name not in choices:
        raise ValueError(f"unknown sampler {name!r}; use one of {', '.join(choices)}")
    return SAMPLERS[name]


def check_options(
    sampler: str | None, steps: int | None, eta: float | None, *, default: str, allowed: tuple[str, ...] | None = None
) -> None:
    """Refuse sampling options before any work (ValueError); ``None`` means the model's default."""
    chosen = get_sampler(sampler if sampler is not None else default, allowed)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps {steps!r}: give a whole number of network evaluations, at least 1")
    if eta is not None and eta < 0:
        raise ValueError(f"eta {eta}: must be 0 (deterministic DDIM) or more")
    if eta is not None and not chosen.uses_eta:
        log.warning("eta applies to the ddim sampler only; ignored for %s", chosen.name)


def evaluations(sampler: str, steps: int, timesteps: int) -> int:
    """The number of network evaluations ``sampler`` makes for a budget of ``steps``."""
    check_sampler(sampler, steps)
    return SAMPLERS[sampler].evaluations(steps, timesteps)


def check_sampler(sampler: str, steps: int) -> None:
    get_sampler(sampler)
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

    return SAMPLERS[sampler].run(denoise, schedule, noise(), steps, noise, eta=eta, snr=snr, predictor=predictor)


def _em_step(schedule: NoiseSchedule, x: torch.Tensor, eps: torch.Tensor, s: float, ds: float, noise) -> torch.Tensor:
    beta = schedule.beta_at(s)
    score = eps * (-1.0 / math.sqrt(1 - schedule.alpha_bar_at(s)))
    return x + (0.5 * beta * ds) * x + (beta * ds) * score + math.sqrt(beta * ds) * noise()


def _predictor_corrector(
    denoise: Denoiser, schedule: NoiseSchedule, x: torch.Tensor, grid: list[float], noise, snr: float, predictor: str
) -> torch.Tensor:
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
