"""Centred, orthonormal 2D Fourier transforms: the one convention for k-space in :mod:`synthmed.mri`.

MRI measures the Fourier transform of the image with the zero frequency (DC) in the middle of the sampled grid,
and every mask, calibration region and sensitivity estimate here assumes the same: the k-space centre sits at
index ``(H // 2, W // 2)``. Plain ``torch.fft.fft2`` puts DC at index ``(0, 0)`` and treats the image origin as
the first pixel; ``ifftshift`` before and ``fftshift`` after move both origins to the middle, so that a centred
object has a smooth, centred spectrum (no checkerboard phase).

``norm="ortho"`` makes the transform unitary: energy is preserved (Parseval), the inverse is the adjoint, and
the scale of k-space is the scale of the image whatever the matrix size. That is what lets the SENSE operator's
adjoint be written with the inverse transform, and a regularisation weight be set relative to the image's scale.
"""

from __future__ import annotations

import torch

_DIMS = (-2, -1)


def _complex(x: torch.Tensor) -> torch.Tensor:
    # A magnitude image is a valid input: it is the complex image with zero phase.
    return x if x.is_complex() else x.to(torch.complex64 if x.dtype != torch.float64 else torch.complex128)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Image -> k-space over the last two dimensions (any leading batch or coil dimensions), centred and
    orthonormal: DC at ``(H // 2, W // 2)``, ``||fft2c(x)|| == ||x||``. Real input is treated as complex."""
    x = _complex(x)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=_DIMS), norm="ortho"), dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """k-space -> image over the last two dimensions: the inverse, and (being unitary) the adjoint, of
    :func:`fft2c`."""
    k = _complex(k)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=_DIMS), norm="ortho"), dim=_DIMS)
