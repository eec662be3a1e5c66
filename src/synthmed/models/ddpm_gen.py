"""Unconditional image generation with a denoising diffusion model (Ho et al., NeurIPS 2020; DDIM sampling, Song et
al., ICLR 2021): the image-only baseline PIG is compared with.

The denoiser is the diffusion U-Net of :mod:`synthmed.nn.diffusion_unet` on the noisy image alone (one input
channel). Training: a step drawn uniformly from T, MSE on the prediction (epsilon in the ``paper`` preset).
Sampling: any sampler of :mod:`synthmed.diffusion.samplers`; the paper's baselines are DDPM ancestral sampling over
all T = 1024 steps (``--sampler ddpm``) and DDIM with 256 uniform steps (the default).

It makes images only, no masks: its samples cannot be used as labelled training data for segmentation (which is
what PIG adds). ``training_slices``: ``all`` slices of the training split (default) or only those with a lesion
(``lesion``; needs a prepared ``--label``), to compare with PIG on the same slices.

Presets: ``paper`` uses PIG's U-Net (base 32 channels, multipliers 1,1,2,2,4,4, two residual blocks per level,
attention at 16x16) at 256 px; ``small`` is CPU-sized (64 px, 32-64-64, attention at 16x16, v-prediction).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthmed.diffusion.samplers import SAMPLERS, check_options, get_sampler, sample
from synthmed.diffusion.schedule import PREDICTIONS, SCHEDULES, NoiseSchedule
from synthmed.models.base import SynthesisModel
from synthmed.models.registry import register
from synthmed.nn.diffusion_unet import check_unet_config, diffusion_unet

TRAINING_SLICES = ("all", "lesion", "healthy")


@dataclass
class DDPMGenConfig:
    image_size: int = 256
    channels: tuple[int, ...] = (32, 32, 64, 64, 128, 128)  # base 32, multipliers 1,1,2,2,4,4
    attention_levels: tuple[bool, ...] = (False, False, False, False, True, False)  # 16x16 at 256 px
    num_res_blocks: int = 2
    num_head_channels: int = 32
    norm_num_groups: int = 32
    timesteps: int = 1024
    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: str = "epsilon"
    clip_denoised: bool = True
    lr: float = 2e-4
    batch_size: int = 8
    steps: int = 100_000
    ema_decay: float = 0.9999
    sampler: str = "ddim"
    sampling_steps: int = 256
    eta: float = 0.0
    training_slices: str = "all"
    preview_steps: int = 10  # DDIM steps of the sample grids written during training


def check_generator_config(config: DDPMGenConfig, samplers: tuple[str, ...]) -> None:
    check_unet_config(config)
    for key, allowed in (
        ("prediction", PREDICTIONS),
        ("schedule", SCHEDULES),
        ("sampler", samplers),
        ("training_slices", TRAINING_SLICES),
    ):
        if getattr(config, key) not in allowed:
            raise ValueError(f"{key} {getattr(config, key)!r}: use one of {', '.join(allowed)}")
    if (
        config.lr <= 0
        or config.batch_size < 1
        or config.sampling_steps < 1
        or config.preview_steps < 1
        or config.eta < 0
    ):
        raise ValueError("lr, batch_size, sampling_steps and preview_steps must be positive, eta non-negative")


# CPU-sized generators. lr 1e-3 rather than the paper's 2e-4: on small image + mask phantoms (tests/test_pig.py) PIG
# gave one-piece lesion masks within a few hundred steps at 1e-3, but still fragmented ones after twice as many at
# 2e-4. The tiny preset is what tests/test_protocol.py runs.
SMALL_GENERATOR = {
    "image_size": 64,
    "channels": (32, 64, 64),
    "attention_levels": (False, False, True),
    "num_res_blocks": 1,
    "norm_num_groups": 16,
    "lr": 1e-3,
    "batch_size": 16,
    "steps": 3000,
    "ema_decay": 0.999,
    "prediction": "v",
    "sampling_steps": 50,
}
TINY_GENERATOR = {
    **SMALL_GENERATOR,
    "image_size": 16,
    "channels": (8, 16),
    "attention_levels": (False, True),
    "norm_num_groups": 8,
    "num_head_channels": 8,
    "batch_size": 2,
    "steps": 10,
    "timesteps": 64,
    "sampling_steps": 4,
    "preview_steps": 2,
}


@register
class UnconditionalDDPM(SynthesisModel):
    name = "ddpm-gen"
    paper = "Ho et al., Denoising Diffusion Probabilistic Models, NeurIPS 2020 (unconditional; DDIM sampling)"
    paired = True
    task = "generate"
    channels_last_inference = True
    Config = DDPMGenConfig
    PRESETS = {"paper": {}, "small": dict(SMALL_GENERATOR), "tiny": dict(TINY_GENERATOR)}
    ema_modules = ("network",)
    sampling_options = ("sampler", "steps", "eta")
    makes_masks = False

    def __init__(self, config: DDPMGenConfig):
        super().__init__(config)
        check_generator_config(config, SAMPLERS)
        self.schedule = NoiseSchedule(config.timesteps, config.schedule, config.beta_start, config.beta_end)
        self.network = diffusion_unet(config, in_channels=1)
        self._optimizers = {"network": torch.optim.Adam(self.network.parameters(), lr=config.lr)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        image = batch["source"]
        t = torch.randint(0, self.schedule.timesteps, (image.shape[0],), device=image.device)
        noise = torch.randn_like(image)
        alpha_bar = self.schedule.alpha_bar(t).reshape(-1, 1, 1, 1)
        noisy = self.schedule.q_sample(image, t, noise)
        with self.autocast():
            output = self.network(noisy, timesteps=t)
        loss = F.mse_loss(
            output.float(), self.schedule.training_target(self.config.prediction, image, noise, alpha_bar)
        )
        optimizer = self._optimizers["network"]
        optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.step_optimizer(optimizer)
        return {"loss": loss.detach()}

    @torch.inference_mode()
    def sample(
        self,
        n: int,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"image": (n, 1, H, W)}`` in [-1, 1]."""
        config = self.config
        sampler = sampler or config.sampler
        if steps is None:
            steps = get_sampler(sampler).default_steps(config.timesteps, config.sampling_steps)
        prediction, clip = config.prediction, config.clip_denoised

        def denoise(x: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor]:
            timesteps = torch.full((x.shape[0],), s, device=x.device, dtype=torch.float32)
            with self.autocast():
                output = self.network(x, timesteps=timesteps).float()
            return self.schedule.clean_estimates(prediction, output, x, self.schedule.alpha_bar_at(s), clip)

        shape = (n, 1, config.image_size, config.image_size)
        image = sample(
            denoise,
            self.schedule,
            shape,
            sampler=sampler,
            steps=steps,
            eta=config.eta if eta is None else eta,
            generator=generator,
            device=self.device,
        )
        return {"image": image}

    def check_sampling(self, sampler: str | None = None, steps: int | None = None, eta: float | None = None) -> None:
        check_options(sampler, steps, eta, default=self.config.sampler)

    def preview(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A cheap sample grid for the training loop's ``samples/`` PNGs."""
        return self.sample(n, sampler="ddim", steps=self.config.preview_steps, eta=0.0, generator=generator)
