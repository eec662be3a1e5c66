"""Conditional denoising diffusion for paired translation (Ho et al. 2020; Saharia et al., Palette 2022;
score-SDE samplers of Song et al. 2021), as surveyed in the seed's sections 2.1 and 3.5.

The denoiser is MONAI's ``DiffusionModelUNet`` (2D) whose input is the noisy target
concatenated with the source image on the channel axis, conditioned on the diffusion step
through its sinusoidal time embedding. It predicts the noise (``epsilon``, default), the
clean image (``x0``) or ``v``. Training draws a step uniformly from the T = 1000 steps of a
linear (1e-4 -> 0.02, default) or cosine schedule and regresses the prediction with MSE.

One trained network serves every sampler of :mod:`synthmed.diffusion.samplers`; the sampler,
its number of network evaluations and ``eta`` are chosen at translation time. The default is
DDIM (deterministic for a given noise): 50 evaluations for ``paper`` (an epsilon network, whose
few-step estimates are the least reliable), 10 for ``small``, where the sampler benchmark
(benchmarks/diffusion_samplers.py, figures in the README) found 10-evaluation DDIM as good as
the best of all samplers and budgets up to 1000 on held-out phantom and BraTS slices. The clean
estimate is clipped to [-1, 1] at every step (the data range) and the noise estimate made
consistent with it.

Presets: ``paper`` follows the scale of MONAI's 2D image-to-image diffusion tutorial
(64 channels per level, attention at the lowest resolution only, one residual block per
level, lr 2.5e-5) at 256 px, predicting epsilon, with four levels instead of the
tutorial's three, so that self-attention runs on 32x32 rather than 64x64 tokens at 256 px
(about four times faster per network evaluation on a CPU); ``small`` is CPU-sized and predicts ``v``
(Salimans & Ho 2022). Why v there: with epsilon the clean estimate at high noise is
``(x - sqrt(1 - ab) eps) / sqrt(ab)``, which multiplies the noise error by up to
1 / sqrt(ab(T-1)) ~ 160, so a short run gives noisy few-step samples; on 64 px phantoms a
v network reached in 500 steps a validation PSNR that an epsilon network had not reached
after 1000.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthmed.diffusion.samplers import DEFAULT_SNR, PREDICTORS, SAMPLERS, check_options, get_sampler, sample
from synthmed.diffusion.schedule import PREDICTIONS, SCHEDULES, NoiseSchedule
from synthmed.models.base import SynthesisModel, check_context
from synthmed.models.registry import register
from synthmed.nn.diffusion_unet import check_unet_config, diffusion_unet

log = logging.getLogger(__name__)


@dataclass
class DDPMConfig:
    image_size: int = 256
    channels: tuple[int, ...] = (64, 64, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 64
    norm_num_groups: int = 32
    timesteps: int = 1000
    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: str = "epsilon"
    clip_denoised: bool = True
    lr: float = 2.5e-5
    batch_size: int = 8
    steps: int = 100_000
    ema_decay: float = 0.9999
    # Sampling defaults (each can be changed at translation time).
    sampler: str = "ddim"
    sampling_steps: int = 50
    eta: float = 0.0
    corrector_snr: float = DEFAULT_SNR
    predictor: str = "reverse-diffusion"
    # Validation during training uses a cheap deterministic sampler.
    validation_sampler: str = "ddim"
    validation_steps: int = 10
    context: int = 1  # 2.5D: source slices the denoiser is conditioned on (ours)


@register
class ConditionalDDPM(SynthesisModel):
    name = "ddpm"
    paper = "Ho et al., Denoising Diffusion Probabilistic Models, NeurIPS 2020 (conditional, with DDIM and score-SDE samplers)"
    paired = True
    task = "translate"
    channels_last_inference = True
    Config = DDPMConfig
    PRESETS = {
        "paper": {},
        "small": {
            "image_size": 64,
            "channels": (32, 64, 64),
            "attention_levels": (False, False, True),
            "num_head_channels": 32,
            "norm_num_groups": 16,
            "lr": 2e-4,
            "batch_size": 16,
            "steps": 3000,
            "ema_decay": 0.999,
            "prediction": "v",
            "sampling_steps": 10,
        },
        "tiny": {
            "image_size": 16,
            "channels": (16, 16),
            "attention_levels": (False, False),
            "num_head_channels": 16,
            "norm_num_groups": 8,
            "lr": 2e-4,
            "batch_size": 2,
            "steps": 10,
            "ema_decay": 0.999,
            "prediction": "v",
            "sampling_steps": 10,
        },
    }
    ema_modules = ("network",)
    stochastic = True
    sampling_options = ("sampler", "steps", "eta")
    takes_context = True

    def __init__(self, config: DDPMConfig):
        super().__init__(config)
        check_unet_config(config)
        for key, allowed in (
            ("prediction", PREDICTIONS),
            ("schedule", SCHEDULES),
            ("sampler", SAMPLERS),
            ("validation_sampler", SAMPLERS),
            ("predictor", PREDICTORS),
        ):
            if getattr(config, key) not in allowed:
                raise ValueError(f"{key} {getattr(config, key)!r}: use one of {', '.join(allowed)}")
        if config.lr <= 0 or config.batch_size < 1 or config.sampling_steps < 1 or config.validation_steps < 1:
            raise ValueError("lr, batch_size, sampling_steps and validation_steps must be positive")
        self.schedule = NoiseSchedule(config.timesteps, config.schedule, config.beta_start, config.beta_end)
        check_context(config)
        self.network = diffusion_unet(config, in_channels=1 + config.context)  # noisy target + source slice(s)
        self._optimizers = {"network": torch.optim.Adam(self.network.parameters(), lr=config.lr)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        source, target = batch["source"], batch["target"]
        t = torch.randint(0, self.schedule.timesteps, (target.shape[0],), device=target.device)
        noise = torch.randn_like(target)
        alpha_bar = self.schedule.alpha_bar(t).reshape(-1, 1, 1, 1)
        noisy = self.schedule.q_sample(target, t, noise)
        goal = self.schedule.training_target(self.config.prediction, target, noise, alpha_bar)
        with self.autocast():
            output = self.network(torch.cat([noisy, source], 1), timesteps=t)
        loss = F.mse_loss(output.float(), goal)
        optimizer = self._optimizers["network"]
        optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.step_optimizer(optimizer)
        return {"loss": loss.detach()}

    def denoiser(self, source: torch.Tensor):
        """``denoise(x, s) -> (x0_hat, eps_hat)`` for the sampler, conditioned on ``source``."""
        prediction, clip = self.config.prediction, self.config.clip_denoised

        def denoise(x: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor]:
            timesteps = torch.full((x.shape[0],), s, device=x.device, dtype=torch.float32)
            with self.autocast():
                output = self.network(torch.cat([x, source], 1), timesteps=timesteps).float()
            return self.schedule.clean_estimates(prediction, output, x, self.schedule.alpha_bar_at(s), clip)

        return denoise

    @torch.inference_mode()
    def translate(
        self,
        source: torch.Tensor,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        snr: float | None = None,
        predictor: str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One sample of the target given ``source`` (B, 1, H, W) in [-1, 1].

        ``steps`` is the budget of network evaluations (the ``ddpm`` sampler defaults to all T).
        """
        config = self.config
        sampler = sampler or config.sampler
        if steps is None:
            steps = get_sampler(sampler).default_steps(config.timesteps, config.sampling_steps)
        return sample(
            self.denoiser(source),
            self.schedule,
            (source.shape[0], 1, *source.shape[2:]),
            sampler=sampler,
            steps=steps,
            eta=config.eta if eta is None else eta,
            snr=config.corrector_snr if snr is None else snr,
            predictor=predictor or config.predictor,
            generator=generator,
            device=source.device,
        )

    def check_sampling(self, sampler: str | None = None, steps: int | None = None, eta: float | None = None) -> None:
        check_options(sampler, steps, eta, default=self.config.sampler)

    def validation_translate(self, source: torch.Tensor) -> torch.Tensor:
        """Cheap deterministic translation for validation during training."""
        generator = torch.Generator(device=source.device).manual_seed(0)
        return self.translate(
            source,
            sampler=self.config.validation_sampler,
            steps=self.config.validation_steps,
            eta=0.0,
            generator=generator,
        )
