"""Reconstruction of undersampled MRI with an unconditional diffusion prior (the score-based approach of Jalal et
al., NeurIPS 2021, and Chung & Ye, Medical Image Analysis 2022): a model of fully sampled magnitude slices, and
data consistency with the acquired k-space at every step of its sampler.

Training is that of ``ddpm-gen`` (the model never sees k-space or an undersampling pattern, which is why the same
network serves any mask, acceleration and coil count). Reconstruction wraps the network's denoiser: each
evaluation's clean estimate ``x0_hat`` is taken to the image's units, given the measured k-space where it was
acquired (hard projection for noiseless data, ``dc_weight`` 1; a gradient step of that weight on
``||A x - y||^2`` otherwise), and the noise estimate is recomputed from the corrected ``x0_hat``. Every sampler of
:mod:`synthmed.diffusion.samplers` (``ddim``, ``ddpm``, ``em``, ``pc``, ``ode``) then runs unchanged with data
consistency at every step, and the last evaluation's clean image is itself data-consistent, so the sampled k-space
of the output equals the measurements to round-off (hard projection, single coil).

Phase: the prior models magnitude images. A complex acquisition is written ``x = m * exp(i phi)`` with ``phi`` the
phase of the low-resolution image from the fully sampled k-space centre (smooth, as MR phase mostly is), so the
prior acts on the real image ``m`` and data consistency on ``m * exp(i phi)``; the output is the magnitude of the
final data-consistent complex image. Chung & Ye instead run the prior on the real and imaginary parts as two
images; with a [-1, 1] VP prior whose background sits at -1 a signed imaginary part is outside what it learned.

Units: the model's [-1, 1] are the image's (0, ``scale``), ``scale`` the 99.5th percentile of the zero-filled
magnitude inside its foreground (magnitude images have their background at 0, and the centre of k-space that sets
the bulk intensity is always acquired). Paper facts, for the ``paper`` preset: Chung & Ye trained NCSN++ under the
VE-SDE on 320 x 320 fastMRI magnitude slices and sampled with predictor-corrector, N = 2000 steps, one Langevin
corrector step of SNR 0.16 each; here the prior is the toolkit's VP DDPM U-Net (T = 1000), sampled with ``pc``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from synthmed.diffusion.samplers import SAMPLERS, get_sampler
from synthmed.errors import SynthmedError
from synthmed.models.ddpm_gen import SMALL_GENERATOR, TINY_GENERATOR, DDPMGenConfig, UnconditionalDDPM
from synthmed.models.registry import register
from synthmed.mri.coils import calibration_region, sense_adjoint, sense_combine, sense_forward
from synthmed.mri.consistency import hard_data_consistency
from synthmed.mri.fourier import fft2c, ifft2c
from synthmed.nn.patches import padded_to_multiple

SCALE_PERCENTILE = 99.5


@dataclass
class Acquisition:
    """What the scanner measured: k-space ``(H, W)`` (one coil) or ``(C, H, W)``, zero where not acquired, the
    sampling ``mask`` ``(H, W)`` and, for several coils, their sensitivities ``(C, H, W)``."""

    kspace: torch.Tensor
    mask: torch.Tensor
    sens: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.mask = torch.as_tensor(self.mask).bool()
        self.kspace = self.kspace.to(torch.complex64)
        coils = self.kspace.ndim == 3
        if self.kspace.ndim not in (2, 3) or tuple(self.kspace.shape[-2:]) != tuple(self.mask.shape):
            raise SynthmedError(
                f"k-space of shape {tuple(self.kspace.shape)} does not fit the mask {tuple(self.mask.shape)}: "
                "give (H, W) or (coils, H, W)"
            )
        if coils and self.sens is None:
            raise SynthmedError("multi-coil k-space needs coil sensitivities (estimate them from the calibration)")
        if self.sens is not None:
            self.sens = self.sens.to(torch.complex64)

    def adjoint(self) -> torch.Tensor:
        """The zero-filled complex image ``A^H y`` (SENSE-combined for several coils)."""
        if self.sens is None:
            return ifft2c(self.kspace)
        return sense_combine(ifft2c(self.kspace), self.sens)

    def consistent(self, image: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """``image`` (complex, (..., H, W)) moved onto the measurements: the hard projection (``weight`` 1), else a
        gradient step of that size on ``0.5 ||A x - y||^2`` (noisy data: keep some of the prior's k-space)."""
        if weight >= 1.0:
            return hard_data_consistency(image, self.kspace, self.mask, self.sens)
        if self.sens is None:
            residual = (self.kspace - fft2c(image)) * self.mask
            return image + weight * ifft2c(residual)
        residual = self.kspace - sense_forward(image, self.sens, self.mask)
        return image + weight * sense_adjoint(residual, self.sens, self.mask)

    def calibration_phase(self) -> torch.Tensor:
        """``exp(i phi)`` of the low-resolution image from the fully sampled centre (Hann-windowed): the smooth
        phase that turns the complex image into a real one the magnitude prior can judge."""
        rows, cols = calibration_region(self.mask)
        window = torch.zeros(self.mask.shape)
        window[rows, cols] = torch.outer(
            torch.hann_window(rows.stop - rows.start + 2, periodic=False)[1:-1],
            torch.hann_window(cols.stop - cols.start + 2, periodic=False)[1:-1],
        )
        low = Acquisition(self.kspace * window, self.mask, self.sens).adjoint()
        magnitude = low.abs()
        unit = low / magnitude.clamp_min(1e-12)
        # where the low-resolution image is empty its phase is noise: any phase will do there
        return torch.where(magnitude > 1e-3 * magnitude.max(), unit, torch.ones_like(unit))


def magnitude_scale(image: torch.Tensor) -> float:
    """The intensity the model's +1 stands for: the 99.5th percentile of the magnitude inside its foreground
    (above a tenth of the mean, a background level that holds for magnitude images)."""
    magnitude = image.abs().flatten()
    foreground = magnitude[magnitude > 0.1 * magnitude.mean()]
    values = foreground if foreground.numel() else magnitude
    scale = float(torch.quantile(values.float()[:16_000_000], SCALE_PERCENTILE / 100))
    if not scale > 0:
        raise SynthmedError("the measured k-space holds no signal (the zero-filled image is 0)")
    return scale


@dataclass
class ScoreMRIConfig(DDPMGenConfig):
    image_size: int = 320
    sampler: str = "pc"
    sampling_steps: int = 1000  # pc: 2 network evaluations per step (predictor and one corrector)
    dc_weight: float = 1.0  # 1: hard projection onto noiseless measurements


@register
class ScoreMRI(UnconditionalDDPM):
    """A diffusion prior of fully sampled magnitude slices that reconstructs undersampled k-space."""

    name = "score-mri"
    paper = "Chung & Ye, Score-based diffusion models for accelerated MRI, Medical Image Analysis 2022"
    Config = ScoreMRIConfig
    PRESETS = {
        "paper": {},
        "small": {**SMALL_GENERATOR, "sampler": "ddim", "sampling_steps": 50},
        "tiny": {**TINY_GENERATOR, "sampler": "ddim", "sampling_steps": 4},
    }
    reconstructs_kspace = True
    # the prior is applied to whole images of any size, so on native-resolution data it learns from patches (the
    # preset's image size) like a translator, not from whole padded slices as an image generator does
    trains_on_patches = True

    @torch.inference_mode()
    def reconstruct(
        self,
        acquisition: Acquisition,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        samples: int = 1,
        dc_weight: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``samples`` reconstructions (samples, H, W) of the acquisition: complex, data-consistent images."""
        config = self.config
        sampler = sampler or config.sampler
        self.check_sampling(sampler, steps, eta)
        if steps is None:
            steps = get_sampler(sampler).default_steps(config.timesteps, config.sampling_steps)
        weight = config.dc_weight if dc_weight is None else float(dc_weight)
        if not 0 < weight <= 1:
            raise SynthmedError(f"--dc-weight {weight}: between 0 (exclusive) and 1 (hard projection)")
        device = self.device
        acquisition = Acquisition(
            acquisition.kspace.to(device),
            acquisition.mask.to(device),
            None if acquisition.sens is None else acquisition.sens.to(device),
        )
        phase = acquisition.calibration_phase()
        half = 0.5 * magnitude_scale(acquisition.adjoint())
        height, width = acquisition.mask.shape
        last: dict[str, torch.Tensor] = {}

        def prior(x: torch.Tensor, s: float) -> torch.Tensor:
            timesteps = torch.full((x.shape[0],), s, device=x.device, dtype=torch.float32)
            with self.autocast():
                return self.network(x, timesteps=timesteps).float()

        def denoise(x: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor]:
            alpha_bar = self.schedule.alpha_bar_at(s)
            # outside the image, pad with the noiseless background at this noise level
            output = padded_to_multiple(lambda v: prior(v, s), x, self.size_multiple, fill=-math.sqrt(alpha_bar))
            x0, _ = self.schedule.clean_estimates(config.prediction, output, x, alpha_bar, config.clip_denoised)
            image = acquisition.consistent((x0[:, 0] + 1) * half * phase, weight)
            last["image"] = image
            x0 = ((image * phase.conj()).real / half - 1).unsqueeze(1)
            eps = (x - math.sqrt(alpha_bar) * x0) / math.sqrt(1 - alpha_bar)
            return x0, eps

        def noise() -> torch.Tensor:
            return torch.randn((samples, 1, height, width), generator=generator, device="cpu").to(device)

        SAMPLERS[sampler].run(
            denoise,
            self.schedule,
            noise(),
            steps,
            noise,
            eta=config.eta if eta is None else eta,
            snr=0.16,
            predictor="reverse-diffusion",
        )
        return last["image"]
