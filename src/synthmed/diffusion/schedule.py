"""Variance-preserving noise schedules (Ho et al. 2020; Nichol & Dhariwal 2021; Song et al. 2021).

Discrete view (DDPM): step ``i`` in ``0 .. T-1`` has ``beta_i``, ``alpha_i = 1 - beta_i`` and
``alpha_bar_i = prod_{j<=i} alpha_j``; the forward process is
``q(x_i | x_0) = N(sqrt(alpha_bar_i) x_0, (1 - alpha_bar_i) I)``.

Continuous view (score SDE): the same schedule as a VP-SDE
``dx = -1/2 beta(s) x ds + sqrt(beta(s)) dw`` in a continuous step index ``s`` in
``[-1, T-1]`` (``s = -1`` is clean data, ``alpha_bar = 1``). ``log alpha_bar(s)`` is the
piecewise-linear interpolation of the discrete table, so the SDE's marginals agree with
the discrete ones at every integer ``s`` and the network (trained on integer steps) can
be asked about fractional ones through its sinusoidal time embedding. On each segment
``beta(s) = -d log alpha_bar / ds = -log(1 - beta_i)``.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("epsilon", "x0", "v")


class NoiseSchedule:
    """A discrete schedule (float64 tables on the CPU) with its continuous interpolation."""

    def __init__(
        self,
        timesteps: int = 1000,
        kind: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        cosine_offset: float = 0.008,
    ):
        if timesteps < 2:
            raise ValueError(f"timesteps must be at least 2 (got {timesteps})")
        if kind == "linear":
            if not 0 < beta_start < beta_end < 1:
                raise ValueError(f"need 0 < beta_start < beta_end < 1 (got {beta_start}, {beta_end})")
            betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        elif kind == "cosine":
            # Nichol & Dhariwal: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2),
            # betas clipped at 0.999 so the last step stays finite.
            t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
            f = torch.cos((t + cosine_offset) / (1 + cosine_offset) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        else:
            raise ValueError(f"unknown schedule {kind!r}; use one of {', '.join(SCHEDULES)}")
        self.kind = kind
        self.timesteps = timesteps
        self.betas = betas
        self.alphas = 1 - betas
        self.alpha_bars = torch.cumprod(self.alphas, 0)
        # log alpha_bar at s = -1, 0, ..., T-1 (the knots of the continuous interpolation).
        self._log_alpha_bar_knots = torch.cat([torch.zeros(1, dtype=torch.float64), self.alpha_bars.log()])
        self._tables: dict[torch.device, torch.Tensor] = {}

    # --- discrete process ---------------------------------------------------------------
    def _float_table(self, device: torch.device) -> torch.Tensor:
        """alpha_bars as float32 on ``device``, copied there once (MPS has no float64)."""
        table = self._tables.get(device)
        if table is None:
            table = self._tables[device] = self.alpha_bars.float().to(device)
        return table

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer steps ``t`` (any shape), on ``t``'s device, float32."""
        return self._float_table(t.device)[t.long()]

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at integer steps (computed in float64)."""
        ab = self.alpha_bars[t.long().cpu()]
        return (ab / (1 - ab)).float().to(t.device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw ``x_t ~ q(x_t | x_0)`` for a batch, one step index per sample."""
        ab = _per_sample(self.alpha_bar(t), x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``q(x_{t-1} | x_t, x_0)`` at integer steps (variance 0 at t = 0)."""
        steps = t.long().cpu()
        ab_t = self.alpha_bars[steps]
        ab_prev = torch.where(steps > 0, self.alpha_bars[(steps - 1).clamp(min=0)], torch.ones_like(ab_t))
        # Coefficients in double precision (1 - ab_t is tiny at t = 0, 1), applied in the data's dtype.
        alpha = ab_t / ab_prev
        coef_x0 = ab_prev.sqrt() * (1 - alpha) / (1 - ab_t)
        coef_xt = alpha.sqrt() * (1 - ab_prev) / (1 - ab_t)
        variance = (1 - alpha) * (1 - ab_prev) / (1 - ab_t)
        coef_x0, coef_xt, variance = (_per_sample(c, x0).to(x0.device) for c in (coef_x0, coef_xt, variance))
        return coef_x0 * x0 + coef_xt * x_t, variance

    # --- what the network predicts --------------------------------------------------------
    @staticmethod
    def training_target(
        prediction: str, x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor
    ) -> torch.Tensor:
        """The regression target for ``prediction`` (epsilon, x0 or v = sqrt(ab) eps - sqrt(1-ab) x0)."""
        if prediction == "epsilon":
            return noise
        if prediction == "x0":
            return x0
        if prediction == "v":
            return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
        raise ValueError(f"unknown prediction type {prediction!r}; use one of {', '.join(PREDICTIONS)}")

    @staticmethod
    def split_prediction(
        prediction: str, output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) from a network output of the given prediction type at ``x_t``."""
        if isinstance(alpha_bar, torch.Tensor):
            signal, noise_level = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        else:  # a Python float: keep double precision for 1 - ab near ab = 1 (the last sampling step)
            signal, noise_level = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
        if prediction == "epsilon":
            return (x_t - noise_level * output) / signal, output
        if prediction == "x0":
            return output, (x_t - signal * output) / noise_level
        if prediction == "v":
            return signal * x_t - noise_level * output, noise_level * x_t + signal * output
        raise ValueError(f"unknown prediction type {prediction!r}; use one of {', '.join(PREDICTIONS)}")

    @classmethod
    def clean_estimates(
        cls, prediction: str, output: torch.Tensor, x_t: torch.Tensor, alpha_bar: float, clip: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) as a sampler wants them: with ``clip``, x0_hat clipped to the data range [-1, 1] and
        eps_hat made consistent with the clipped estimate."""
        x0, eps = cls.split_prediction(prediction, output, x_t, alpha_bar)
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = (x_t - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5
        return x0, eps

    # --- continuous interpolation (score-SDE samplers) ----------------------------------------
    def log_alpha_bar_at(self, s: float) -> float:
        """log alpha_bar at a continuous step ``s`` in [-1, T-1] (piecewise linear between steps)."""
        if not -1 <= s <= self.timesteps - 1:
            raise ValueError(f"continuous step {s} outside [-1, {self.timesteps - 1}]")
        position = s + 1  # index into the knots
        low = min(int(math.floor(position)), self.timesteps - 1)
        fraction = position - low
        knots = self._log_alpha_bar_knots
        return float(knots[low] * (1 - fraction) + knots[low + 1] * fraction)

    def alpha_bar_at(self, s: float) -> float:
        return math.exp(self.log_alpha_bar_at(s))

    def beta_at(self, s: float) -> float:
        """The VP-SDE rate beta(s) = -d log alpha_bar / ds on the segment that ends at ``s`` (s > -1)."""
        position = s + 1
        high = min(max(int(math.ceil(position)), 1), self.timesteps)
        knots = self._log_alpha_bar_knots
        return float(knots[high - 1] - knots[high])

    def sigma_at(self, s: float) -> float:
        """Noise-to-signal ratio sqrt((1 - ab) / ab): the 'sigma' of the variance-exploding view x / sqrt(ab)."""
        ab = self.alpha_bar_at(s)
        return math.sqrt((1 - ab) / ab)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "timesteps": self.timesteps,
            "beta_first": float(self.betas[0]),
            "beta_last": float(self.betas[-1]),
        }


def posterior_between(x0: torch.Tensor, x_t: torch.Tensor, ab_t, ab_prev) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_prev | x_t, x_0) for any two noise levels ab_prev >= ab_t of one VP process.

    With alpha = ab_t / ab_prev and beta = 1 - alpha (one step of a respaced chain):
    mean = sqrt(ab_prev) beta / (1 - ab_t) x0 + sqrt(alpha) (1 - ab_prev) / (1 - ab_t) x_t,
    variance = beta (1 - ab_prev) / (1 - ab_t).
    """
    alpha = ab_t / ab_prev
    beta = 1 - alpha
    denominator = 1 - ab_t
    mean = (ab_prev**0.5) * beta / denominator * x0 + (alpha**0.5) * (1 - ab_prev) / denominator * x_t
    variance = beta * (1 - ab_prev) / denominator
    return mean, variance


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample scalars (B,) to broadcast over (B, C, H, W)."""
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)
