"""Unsupervised anomaly detection with a diffusion model of healthy anatomy: AnoDDPM (Wyatt et al., CVPRW 2022),
and a DDIM counterfactual in the spirit of Wolleb et al. (MICCAI 2022, here without a classifier).

Training: a DDPM on slices without any lesion voxel (``training_slices = "healthy"``), with the forward process
driven by multi-octave simplex noise (:mod:`synthmed.diffusion.simplex`) instead of white Gaussian noise
(``noise = "simplex"``; ``"gaussian"`` is the plain DDPM). The network learns to predict that noise.

Detection: a slice is noised to a partial step ``t_star`` (the paper: 250 of T = 1000) and brought back:
``reconstruction = "ddpm"`` runs AnoDDPM's ancestral chain from ``t_star`` (the fresh noise of every step of the
same kind as in training); ``"ddim"`` encodes the slice with the deterministic DDIM inversion up to ``t_star`` and
decodes it with DDIM (a counterfactual: the healthy image closest to the input along the model's ODE). The
healthy-trained model paints healthy anatomy where the lesion was; the anomaly map is ``|input - reconstruction|``
(the mean over ``samples`` reconstructions), smoothed in-plane with a Gaussian of ``smoothing_sigma`` pixels.
Low-frequency simplex noise hides large structures at ``t_star`` too, which is why the paper found it better
for large lesions; white noise at the same step leaves them visible and the model restores them.

It is registered as a generator (``synthmed generate`` samples it from white noise), but a model trained on
simplex noise has never seen white noise: its samples are a diagnostic, not a use.

Paper settings (the ``paper`` preset): 256 px, U-Net of base 128 channels (multipliers 1,1,2,2,4,4, two residual
blocks per level, attention at 16 and 8 px with 2 heads), T = 1000 linear betas 1e-4 .. 0.02, epsilon prediction,
L2 loss, Adam lr 1e-4 at batch 1; simplex noise of 6 octaves, persistence 0.8, starting frequency 2^-6;
t_star = 250. ``small`` is CPU-sized (64 px): starting frequency 2^-4 and 4 octaves, so the noise spans the same
fraction of the slice as at 256 px, from a quarter of it down to a period of 2 pixels (more octaves would only
alias above the pixel grid's Nyquist frequency).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthmed.diffusion.schedule import posterior_between
from synthmed.diffusion.simplex import simplex_like
from synthmed.models.ddpm_gen import (
    SMALL_GENERATOR,
    TINY_GENERATOR,
    DDPMGenConfig,
    UnconditionalDDPM,
)
from synthmed.models.registry import register

NOISES = ("simplex", "gaussian")
RECONSTRUCTIONS = ("ddpm", "ddim")


@dataclass
class AnoDDPMConfig(DDPMGenConfig):
    image_size: int = 256
    channels: tuple[int, ...] = (128, 128, 256, 256, 512, 512)
    attention_levels: tuple[bool, ...] = (False, False, False, False, True, True)  # 16 and 8 px
    num_res_blocks: int = 2
    num_head_channels: int = 256  # two heads at 512 channels
    timesteps: int = 1000
    schedule: str = "linear"
    prediction: str = "epsilon"
    lr: float = 1e-4
    batch_size: int = 1
    steps: int = 300_000
    training_slices: str = "healthy"
    noise: str = "simplex"
    simplex_octaves: int = 6
    simplex_persistence: float = 0.8
    simplex_frequency: float = 2.0**-6
    t_star: int = 250
    reconstruction: str = "ddpm"
    reconstruction_steps: int = 0  # 0: every step from t_star down (the paper); else that many respaced steps
    smoothing_sigma: float = 1.0


@register
class AnoDDPM(UnconditionalDDPM):
    name = "anoddpm"
    paper = "Wyatt et al., AnoDDPM: Anomaly Detection with Denoising Diffusion Probabilistic Models using Simplex Noise, CVPRW 2022"
    Config = AnoDDPMConfig
    PRESETS = {
        "paper": {},
        "small": {
            **SMALL_GENERATOR,
            "num_head_channels": 32,
            "simplex_frequency": 2.0**-4,
            "simplex_octaves": 4,
            "t_star": 250,
            "reconstruction_steps": 50,
        },
        "tiny": {
            **TINY_GENERATOR,
            "simplex_frequency": 2.0**-2,
            "simplex_octaves": 2,
            "t_star": 16,
            "reconstruction_steps": 4,
        },
    }
    detects_anomalies = True

    def __init__(self, config: AnoDDPMConfig):
        if config.noise not in NOISES:
            raise ValueError(f"noise {config.noise!r}: use one of {', '.join(NOISES)}")
        if config.reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"reconstruction {config.reconstruction!r}: use one of {', '.join(RECONSTRUCTIONS)}")
        if not 0 < config.t_star < config.timesteps:
            raise ValueError(f"t_star {config.t_star}: between 1 and timesteps - 1 ({config.timesteps - 1})")
        if config.reconstruction_steps < 0 or config.smoothing_sigma < 0:
            raise ValueError("reconstruction_steps and smoothing_sigma must be >= 0")
        super().__init__(config)

    def noise_like(self, x: torch.Tensor, kind: str | None = None, generator: torch.Generator | None = None):
        """Noise of the configured kind (or ``kind``) with ``x``'s shape: normalised simplex or white Gaussian."""
        kind = kind or self.config.noise
        if kind == "gaussian":
            return torch.randn(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
        config = self.config
        return simplex_like(
            x,
            generator=generator,
            octaves=config.simplex_octaves,
            persistence=config.simplex_persistence,
            frequency=config.simplex_frequency,
        )

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        image = batch["source"]
        t = torch.randint(0, self.schedule.timesteps, (image.shape[0],), device=image.device)
        noise = self.noise_like(image)
        alpha_bar = self.schedule.alpha_bar(t).reshape(-1, 1, 1, 1)
        noisy = self.schedule.q_sample(image, t, noise)
        with self.autocast():
            output = self.network(noisy, timesteps=t)
        target = self.schedule.training_target(self.config.prediction, image, noise, alpha_bar)
        loss = F.mse_loss(output.float(), target)
        optimizer = self._optimizers["network"]
        optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.step_optimizer(optimizer)
        return {"loss": loss.detach()}

    def _denoise(self, x: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        timesteps = torch.full((x.shape[0],), float(step), device=x.device, dtype=torch.float32)
        with self.autocast():
            output = self.network(x, timesteps=timesteps).float()
        alpha_bar = self.schedule.alpha_bar_at(float(step))
        return self.schedule.clean_estimates(self.config.prediction, output, x, alpha_bar, self.config.clip_denoised)

    def _chain(self, t_star: int, steps: int) -> list[int]:
        """The integer steps visited from ``t_star`` down to 0 (all of them, or ``steps`` evenly spaced)."""
        if steps <= 0 or steps >= t_star + 1:
            return list(range(t_star, -1, -1))
        chain = torch.linspace(t_star, 0, steps).round().long().tolist()
        return sorted(set(chain), reverse=True)

    def check_detection(
        self, t_star: int | None = None, noise: str | None = None, method: str | None = None, steps: int | None = None
    ) -> None:
        """ValueError naming the first detection setting this model cannot use."""
        if t_star is not None and not 0 < int(t_star) < self.config.timesteps:
            raise ValueError(f"--t-star {t_star}: between 1 and {self.config.timesteps - 1} (the model's T - 1)")
        if noise is not None and noise not in NOISES:
            raise ValueError(f"--noise {noise}: use one of {', '.join(NOISES)}")
        if method is not None and method not in RECONSTRUCTIONS:
            raise ValueError(f"--method {method}: use one of {', '.join(RECONSTRUCTIONS)}")
        if steps is not None and steps < 0:
            raise ValueError(f"--steps {steps}: 0 (every step from t_star) or more")

    @torch.inference_mode()
    def reconstruct(
        self,
        x: torch.Tensor,
        *,
        t_star: int | None = None,
        noise: str | None = None,
        method: str | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The healthy reconstruction of ``x`` (B, 1, H, W) in [-1, 1] from step ``t_star``."""
        self.check_detection(t_star, noise, method, steps)
        config = self.config
        t_star = config.t_star if t_star is None else int(t_star)
        method = method or config.reconstruction
        steps = config.reconstruction_steps if steps is None else steps
        x = x.to(self.device, torch.float32)
        chain = self._chain(t_star, steps)
        alpha_bar = [self.schedule.alpha_bar_at(float(s)) for s in chain] + [1.0]
        if method == "ddim":
            # deterministic inversion: walk the DDIM update from the clean image up to t_star
            current = x
            up = list(reversed(chain))
            up_alpha = list(reversed(alpha_bar[:-1]))
            for i in range(len(up) - 1):
                x0, eps = self._denoise(current, up[i])
                current = up_alpha[i + 1] ** 0.5 * x0 + (1 - up_alpha[i + 1]) ** 0.5 * eps
            for i, step in enumerate(chain):
                x0, eps = self._denoise(current, step)
                current = alpha_bar[i + 1] ** 0.5 * x0 + (1 - alpha_bar[i + 1]) ** 0.5 * eps
            return current.clamp(-1, 1)
        kind = noise or config.noise
        t = torch.full((x.shape[0],), t_star, device=self.device, dtype=torch.long)
        current = self.schedule.q_sample(x, t, self.noise_like(x, kind, generator))
        x0 = current
        for i, step in enumerate(chain):
            x0, _ = self._denoise(current, step)
            if i == len(chain) - 1:
                break
            mean, variance = posterior_between(x0, current, alpha_bar[i], alpha_bar[i + 1])
            current = mean + variance**0.5 * self.noise_like(x, kind, generator)
        return x0.clamp(-1, 1)

    @torch.inference_mode()
    def anomaly_map(
        self, x: torch.Tensor, *, samples: int = 1, generator: torch.Generator | None = None, **options
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly map, mean reconstruction) of ``x`` (B, 1, H, W): the smoothed ``|x - reconstruction|``
        averaged over ``samples`` reconstructions, in [-1, 1] units (the map in [0, 2])."""
        x = x.to(self.device, torch.float32)
        reconstructions = torch.stack(
            [self.reconstruct(x, generator=generator, **options) for _ in range(max(1, samples))]
        )
        difference = (x.unsqueeze(0) - reconstructions).abs().mean(0)
        return gaussian_smooth(difference, self.config.smoothing_sigma), reconstructions.mean(0)


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """In-plane Gaussian blur of (B, C, H, W) with reflected borders; ``sigma`` 0 returns ``x``."""
    if sigma <= 0:
        return x
    radius = max(1, int(round(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
