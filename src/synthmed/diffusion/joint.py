"""PIG's joint reverse process for a pair (x = lesion mask, y = image), two diffusion chains run together.

The joint step factorises (the seed's Proposition 1) as

    p(x_{t-1}, y_{t-1} | x_t, y_t) = p_x(x_{t-1} | x_t, y_t) p_y(y_{t-1} | x_{t-1}, y_t),

so each step updates x first and then y:

1. ``denoise_x(x_t, y_t, t) -> (x0_hat, eps_x)``: the mask network, guided by the current (noisy) image state;
   ``x_{t-1}`` follows by a DDIM step (or the DDPM posterior);
2. ``denoise_y(x0_hat, y_t, t) -> (y0_hat, eps_y)``: the image network, guided by the mask's *clean estimate*
   ``x0_hat`` of this step rather than the noisy ``x_t`` (the paper's choice: a cleaner guide);
   ``y_{t-1}`` by the same kind of step.

Both chains start from independent unit Gaussians (x_T, then y_T, drawn in that order from ``generator``), share
the step grid (uniform over T, as DDIM's uniform-step strategy), and the last step returns the two clean
estimates (x0_hat, y0_hat). With ``eta = 0`` (the paper's sigma_t = 0) everything after the initial noise is
deterministic.
"""

from __future__ import annotations

from typing import Callable

import torch

from synthmed.diffusion.samplers import SAMPLERS, get_sampler, integer_grid
from synthmed.diffusion.schedule import NoiseSchedule

GuidedDenoiser = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]

JOINT_SAMPLERS = tuple(name for name, sampler in SAMPLERS.items() if sampler.discrete)  # ddpm, ddim


def joint_sample(
    denoise_x: GuidedDenoiser,
    denoise_y: GuidedDenoiser,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    *,
    sampler: str = "ddim",
    steps: int = 256,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, y0)`` of ``shape`` each. ``steps`` network-pair evaluations; ``sampler`` ddim (``eta``) or ddpm
    (ancestral). ``callback(k, t, x0_hat, y0_hat)`` sees every step's estimates (e.g. to show the mask settling
    before the image)."""
    chosen = get_sampler(sampler, JOINT_SAMPLERS)
    if steps < 1:
        raise ValueError(f"steps must be at least 1 (got {steps})")
    if eta < 0:
        raise ValueError(f"eta must be non-negative (got {eta})")

    def noise() -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    x, y = noise(), noise()
    alpha_bars = schedule.alpha_bars.tolist()
    grid = integer_grid(schedule, steps)
    for k, t in enumerate(grid):
        last = k == len(grid) - 1
        ab, ab_prev = alpha_bars[t], (1.0 if last else alpha_bars[grid[k + 1]])
        # x first: its estimate and its next state (the x noise of an ancestral step is drawn before y's) ...
        x0, eps_x = denoise_x(x, y, float(t))
        x_prev = x if last else chosen.step(x, x0, eps_x, ab, ab_prev, eta, noise)
        # ... then y, guided by x's clean estimate of this step.
        y0, eps_y = denoise_y(x0, y, float(t))
        if callback is not None:
            callback(k, t, x0, y0)
        if last:
            return x0, y0
        x, y = x_prev, chosen.step(y, y0, eps_y, ab, ab_prev, eta, noise)
    raise AssertionError("empty grid")
