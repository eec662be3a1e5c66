"""Retrospective undersampling: from a fully sampled image or k-space to the measurements an accelerated scan
would have acquired, and the zero-filled reconstruction that every method has to beat.

Magnitude images (the usual training data) have no phase, but real MR images do: a smooth background phase
from field inhomogeneity and coil/receiver phase. A reconstruction tested only on real-valued images can rely
on conjugate symmetry of k-space, which real data lacks; :func:`synthetic_phase` adds a seeded, smooth
low-order polynomial phase so that the experiment keeps that difficulty.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from synthmed.errors import SynthmedError
from synthmed.mri.coils import root_sum_of_squares, sense_adjoint
from synthmed.mri.fourier import fft2c, ifft2c


def synthetic_phase(shape: tuple[int, int], seed: int = 0, order: int = 2, max_phase: float = math.pi) -> torch.Tensor:
    """A unit-magnitude complex64 ``(H, W)`` map ``exp(i phi)`` with ``phi`` a random polynomial of degree
    ``order`` in the normalised coordinates (each coefficient uniform in ``[-1, 1]``), scaled to span at most
    ``max_phase`` radians. The same ``seed`` gives the same map."""
    if order < 0:
        raise SynthmedError(f"phase polynomial order {order!r} must be >= 0")
    height, width = shape
    rng = np.random.Generator(np.random.PCG64(seed))
    y = np.linspace(-1, 1, height)[:, None]
    x = np.linspace(-1, 1, width)[None, :]
    phi = np.zeros((height, width))
    for i in range(order + 1):
        for j in range(order + 1 - i):
            phi = phi + rng.uniform(-1, 1) * y**i * x**j
    span = float(phi.max() - phi.min())
    if span > 0:
        phi = (phi - phi.min()) / span * max_phase
    return torch.from_numpy(np.exp(1j * phi)).to(torch.complex64)


def _check_mask(mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    mask = torch.as_tensor(mask)
    if tuple(mask.shape) != tuple(shape[-2:]):
        raise SynthmedError(f"mask of shape {tuple(mask.shape)} does not match k-space (H, W) {tuple(shape[-2:])}")
    return mask


def undersample_image(
    image: torch.Tensor, mask: torch.Tensor, phase_seed: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-coil measurements of an image: returns ``(y, x)`` with ``x`` the complex ground truth (the image,
    times :func:`synthetic_phase` when ``phase_seed`` is given) and ``y = M * F(x)`` its masked k-space,
    zero where not acquired. ``image`` is ``(..., H, W)``; ``mask`` is boolean ``(H, W)``."""
    mask = _check_mask(mask, tuple(image.shape))
    x = image.to(torch.complex64) if not image.is_complex() else image
    if phase_seed is not None:
        x = x * synthetic_phase(tuple(image.shape[-2:]), seed=phase_seed).to(x.dtype)
    return fft2c(x) * mask, x


def undersample_kspace(kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fully sampled (multi-coil ``(C, H, W)`` or single ``(H, W)``) k-space with the samples ``mask`` does not
    acquire set to zero: the same mask for every coil, as in a real acquisition."""
    mask = _check_mask(mask, tuple(kspace.shape))
    return kspace * mask


def zero_filled(y: torch.Tensor, sens: torch.Tensor | None = None, coils: bool | None = None) -> torch.Tensor:
    """The zero-filled reconstruction's magnitude: ``|F^H y|`` for single-coil ``(H, W)`` k-space; for
    multi-coil ``(C, H, W)`` the root-sum-of-squares of the coil images, or ``|A^H y|`` (SENSE adjoint) when
    sensitivities are given. ``coils`` says whether the third-last dimension is coils (default: when ``y`` has
    three or more dimensions)."""
    multi = y.ndim >= 3 if coils is None else coils
    if not multi:
        return ifft2c(y).abs()
    if sens is not None:
        return sense_adjoint(y, sens).abs()
    return root_sum_of_squares(ifft2c(y))
