"""PIG: paired image + lesion-mask generation with diffusion-guided diffusion (MICCAI 2025, seed 004).

Two diffusion chains over a pair, x = lesion mask and y = image, both in [-1, 1] (mask: -1 outside, +1 inside the
lesion), noised with the same step t and independent noises eps_1, eps_2:

- ``network_x(x_t, y_t, t)`` predicts the mask's noise: the image state guides the mask;
- ``network_y(guide, y_t, t)`` predicts the image's noise, guided by the mask. At sampling time the guide is the
  mask network's clean estimate x0_hat of the same step (:mod:`synthmed.diffusion.joint`, x updated before y).
  In training the guide is, by default, the clean mask x_0 itself, the quantity x0_hat estimates (the seed gives
  only the mask network's loss; ``image_guide = "estimate"`` trains on the mask network's detached x0_hat
  instead, as sampling sees it).

Both networks are the diffusion U-Net of :mod:`synthmed.nn.diffusion_unet` with 2 input channels (the guide
concatenated on the channel axis); the loss is the sum of the two MSEs on their predictions (epsilon in the paper),
one Adam optimiser. Generated masks are the sign of the final x0_hat: ``mask = x0_hat > 0`` (``mask_threshold``,
in the [-1, 1] units; 0 is the midpoint between background and lesion).

Paper settings (``paper`` preset): linear betas 1e-4 -> 0.02, T = 1024, DDIM uniform steps with sigma 0 and 256
steps, U-Nets with base 32 channels, multipliers 1,1,2,2,4,4, two residual blocks, attention at 16x16, Adam 2e-4.
The paper worked at 512 px on breast tomosynthesis; the preset is 256 px (the LGG slices' size), so attention sits
on the fifth level. Batch size, step count and EMA are ours. Trained, as in the paper, on slices that hold a
lesion (``training_slices = "lesion"``). ``small``: 64 px, 32-64-64 channels (attention at 16x16), one residual
block, v-prediction (why: see :mod:`synthmed.models.ddpm`), 50 DDIM steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthmed.diffusion.joint import JOINT_SAMPLERS, joint_sample
from synthmed.diffusion.samplers import check_options, get_sampler
from synthmed.diffusion.schedule import NoiseSchedule
from synthmed.models.base import SynthesisModel
from synthmed.models.ddpm_gen import SMALL_GENERATOR, TINY_GENERATOR, DDPMGenConfig, check_generator_config
from synthmed.models.registry import register
from synthmed.nn.diffusion_unet import diffusion_unet

IMAGE_GUIDES = ("clean", "estimate")


@dataclass
class PIGConfig(DDPMGenConfig):
    training_slices: str = "lesion"
    image_guide: str = "clean"  # what guides network_y in training: the clean mask or network_x's estimate
    mask_threshold: float = 0.0


@register
class PIG(SynthesisModel):
    name = "pig"
    paper = "PIG: Paired Image Generation with Diffusion-Guided Diffusion Models, MICCAI 2025"
    paired = True
    task = "generate"
    channels_last_inference = True
    Config = PIGConfig
    PRESETS = {"paper": {}, "small": dict(SMALL_GENERATOR), "tiny": dict(TINY_GENERATOR)}
    ema_modules = ("network_x", "network_y")
    sampling_options = ("sampler", "steps", "eta")
    makes_masks = True

    def __init__(self, config: PIGConfig):
        super().__init__(config)
        check_generator_config(config, JOINT_SAMPLERS)
        if config.image_guide not in IMAGE_GUIDES:
            raise ValueError(f"image_guide {config.image_guide!r}: use one of {', '.join(IMAGE_GUIDES)}")
        if not -1 < config.mask_threshold < 1:
            raise ValueError(f"mask_threshold {config.mask_threshold}: must lie inside (-1, 1), the mask's range")
        self.schedule = NoiseSchedule(config.timesteps, config.schedule, config.beta_start, config.beta_end)
        self.network_x = diffusion_unet(config, in_channels=2)  # [x_t, y_t] -> mask noise
        self.network_y = diffusion_unet(config, in_channels=2)  # [y_t, mask guide] -> image noise
        self._optimizers = {
            "networks": torch.optim.Adam([*self.network_x.parameters(), *self.network_y.parameters()], lr=config.lr)
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    @staticmethod
    def mask_values(label: torch.Tensor) -> torch.Tensor:
        """A label map as the mask chain's data: +1 inside the lesion (label > 0), -1 outside."""
        return (label > 0).float() * 2 - 1

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        if "label" not in batch:
            raise ValueError("pig trains on image + mask pairs: the batch has no 'label' (prepare with --label NAME)")
        config = self.config
        image, mask = batch["source"], self.mask_values(batch["label"])
        t = torch.randint(0, self.schedule.timesteps, (image.shape[0],), device=image.device)
        noise_x, noise_y = torch.randn_like(mask), torch.randn_like(image)
        alpha_bar = self.schedule.alpha_bar(t).reshape(-1, 1, 1, 1)
        x_t, y_t = self.schedule.q_sample(mask, t, noise_x), self.schedule.q_sample(image, t, noise_y)
        with self.autocast():
            output_x = self.network_x(torch.cat([x_t, y_t], 1), timesteps=t).float()
        loss_x = F.mse_loss(output_x, self.schedule.training_target(config.prediction, mask, noise_x, alpha_bar))
        if config.image_guide == "clean":
            guide = mask
        else:
            estimate, _ = self.schedule.split_prediction(config.prediction, output_x.detach(), x_t, alpha_bar)
            guide = estimate.clamp(-1, 1) if config.clip_denoised else estimate
        with self.autocast():
            output_y = self.network_y(torch.cat([y_t, guide], 1), timesteps=t).float()
        loss_y = F.mse_loss(output_y, self.schedule.training_target(config.prediction, image, noise_y, alpha_bar))
        loss = loss_x + loss_y
        optimizer = self._optimizers["networks"]
        optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.step_optimizer(optimizer)
        return {"loss": loss.detach(), "loss_mask": loss_x.detach(), "loss_image": loss_y.detach()}

    def denoisers(self):
        """The two guided denoisers ``(x, y, s) -> (x0_hat, eps_hat)`` of the joint sampler."""
        prediction, clip, schedule = self.config.prediction, self.config.clip_denoised, self.schedule

        def run(network, state: torch.Tensor, guide: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor]:
            timesteps = torch.full((state.shape[0],), s, device=state.device, dtype=torch.float32)
            with self.autocast():
                output = network(torch.cat([state, guide], 1), timesteps=timesteps).float()
            return schedule.clean_estimates(prediction, output, state, schedule.alpha_bar_at(s), clip)

        def denoise_x(x: torch.Tensor, y: torch.Tensor, s: float):
            return run(self.network_x, x, y, s)

        def denoise_y(x0_hat: torch.Tensor, y: torch.Tensor, s: float):
            return run(self.network_y, y, x0_hat, s)

        return denoise_x, denoise_y

    @torch.inference_mode()
    def sample(
        self,
        n: int,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        generator: torch.Generator | None = None,
        callback=None,
    ) -> dict[str, torch.Tensor]:
        """``{"image", "mask", "mask_estimate"}``, each (n, 1, H, W): the image and the mask's final estimate in
        [-1, 1], and the binary mask (estimate > ``mask_threshold``) as 0/1 floats."""
        config = self.config
        sampler = sampler or config.sampler
        if steps is None:
            steps = get_sampler(sampler).default_steps(config.timesteps, config.sampling_steps)
        denoise_x, denoise_y = self.denoisers()
        shape = (n, 1, config.image_size, config.image_size)
        mask, image = joint_sample(
            denoise_x,
            denoise_y,
            self.schedule,
            shape,
            sampler=sampler,
            steps=steps,
            eta=config.eta if eta is None else eta,
            generator=generator,
            device=self.device,
            callback=callback,
        )
        return {"image": image, "mask": (mask > config.mask_threshold).float(), "mask_estimate": mask}

    def check_sampling(self, sampler: str | None = None, steps: int | None = None, eta: float | None = None) -> None:
        check_options(sampler, steps, eta, default=self.config.sampler, allowed=JOINT_SAMPLERS)

    def preview(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.sample(n, sampler="ddim", steps=self.config.preview_steps, eta=0.0, generator=generator)
