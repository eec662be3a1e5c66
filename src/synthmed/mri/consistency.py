"""Hard data consistency: make an image agree exactly with the acquired k-space samples.

Score-based (and other learned) reconstructions alternate a prior step, which moves the image towards the
distribution of plausible images, with a data-consistency step, which moves it back onto the set of images that
explain the measurements. With noiseless data the simplest such step is a projection: replace the image's
k-space by the measurements where they were acquired and keep the prior's k-space elsewhere.
"""

from __future__ import annotations

import torch

from synthmed.errors import SynthmedError
from synthmed.mri.coils import sense_combine
from synthmed.mri.fourier import fft2c, ifft2c


def hard_data_consistency(
    x_image: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, sens: torch.Tensor | None = None
) -> torch.Tensor:
    """The complex image whose k-space equals ``y`` where ``mask`` is set and equals ``x_image``'s k-space
    elsewhere.

    Single coil (``sens`` None; ``x_image`` and ``y`` of shape ``(..., H, W)``): an exact orthogonal projection
    onto the measurement-consistent images, since the centred FFT is unitary.

    Multi-coil (``sens`` ``(C, H, W)``, ``y`` ``(..., C, H, W)``): each coil image ``S_c x`` gets its acquired
    samples replaced, then the coils are combined by :func:`synthmed.mri.coils.sense_combine`. This is an
    approximation: the corrected coil images no longer share one underlying image, and the combination keeps
    only their common part, so the result satisfies ``A x = y`` only where ``y`` itself is consistent with a
    single image and the sensitivities are exact. Pixels no coil sees (zero sensitivity) keep ``x_image``. For an exact multi-coil projection, solve the least-squares
    problem (e.g. a few conjugate-gradient steps); this cheap step is the one many samplers use.
    """
    mask = torch.as_tensor(mask, device=y.device).bool()
    if tuple(mask.shape) != tuple(y.shape[-2:]):
        raise SynthmedError(f"mask of shape {tuple(mask.shape)} does not match k-space (H, W) {tuple(y.shape[-2:])}")
    x = x_image if x_image.is_complex() else x_image.to(y.dtype if y.is_complex() else torch.complex64)
    if sens is None:
        return ifft2c(torch.where(mask, y, fft2c(x)))
    coil_kspace = fft2c(sens * x.unsqueeze(-3))
    combined = sense_combine(ifft2c(torch.where(mask, y, coil_kspace)), sens)
    # Where no coil sees the pixel the measurements say nothing about it: keep the prior's value.
    seen = sens.abs().square().sum(dim=0) > 1e-8
    return torch.where(seen, combined, x)
