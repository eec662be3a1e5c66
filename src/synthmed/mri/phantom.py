"""Synthetic test objects for reconstruction: a Shepp-Logan head phantom and Gaussian coil profiles.

Reconstruction methods are judged against a known truth; the modified Shepp-Logan phantom (Shepp and Logan
1974, with the higher-contrast intensities of Toft 1996) is the field's standard piecewise-constant object: its
sharp edges are what undersampling aliases and what total-variation regularisation restores. Gaussian coil
profiles placed around the object, each with a slowly varying phase, stand in for a receive array: smooth, as
real sensitivities are, so the low-resolution estimate of :mod:`synthmed.mri.coils` applies.
"""

from __future__ import annotations

import math

import torch

# (intensity, semi-axis x, semi-axis y, centre x, centre y, rotation in degrees) on the square [-1, 1]^2.
_ELLIPSES = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.8740, 0.0, -0.0184, 0.0),
    (-0.2, 0.1100, 0.3100, 0.22, 0.0, -18.0),
    (-0.2, 0.1600, 0.4100, -0.22, 0.0, 18.0),
    (0.1, 0.2100, 0.2500, 0.0, 0.35, 0.0),
    (0.1, 0.0460, 0.0460, 0.0, 0.1, 0.0),
    (0.1, 0.0460, 0.0460, 0.0, -0.1, 0.0),
    (0.1, 0.0460, 0.0230, -0.08, -0.605, 0.0),
    (0.1, 0.0230, 0.0230, 0.0, -0.606, 0.0),
    (0.1, 0.0230, 0.0460, 0.06, -0.605, 0.0),
)


def _grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Pixel centres on [-1, 1], y pointing up (row 0 is the top of the image).
    y = torch.linspace(1, -1, height, dtype=torch.float64)
    x = torch.linspace(-1, 1, width, dtype=torch.float64)
    return torch.meshgrid(y, x, indexing="ij")


def shepp_logan(size: int | tuple[int, int] = 64) -> torch.Tensor:
    """The modified Shepp-Logan phantom as a float32 ``(H, W)`` image with values in [0, 1] (background 0)."""
    height, width = (size, size) if isinstance(size, int) else size
    yy, xx = _grid(height, width)
    image = torch.zeros(height, width, dtype=torch.float64)
    for value, a, b, x0, y0, degrees in _ELLIPSES:
        theta = math.radians(degrees)
        u = (xx - x0) * math.cos(theta) + (yy - y0) * math.sin(theta)
        v = -(xx - x0) * math.sin(theta) + (yy - y0) * math.cos(theta)
        image += value * ((u / a) ** 2 + (v / b) ** 2 <= 1)
    return image.clamp(0, 1).to(torch.float32)


def gaussian_coil_sensitivities(
    shape: tuple[int, int], coils: int = 8, width: float = 0.8, radius: float = 1.2, phase: float = math.pi
) -> torch.Tensor:
    """Synthetic complex sensitivities ``(coils, H, W)`` (complex64): Gaussian magnitude profiles of standard
    deviation ``width`` (in units of the half field of view) centred on a circle of ``radius`` around the
    image, each with a linear phase of up to ``phase`` radians across the field of view in its own direction.
    Not normalised: ``sqrt(sum_c |S_c|^2)`` varies over the image, as a real array's does."""
    height, width_px = shape
    yy, xx = _grid(height, width_px)
    maps = []
    for c in range(coils):
        angle = 2 * math.pi * c / coils
        cx, cy = radius * math.cos(angle), radius * math.sin(angle)
        magnitude = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2))
        ramp = 0.5 * phase * (xx * math.cos(angle + 1.0) + yy * math.sin(angle + 1.0))
        maps.append(magnitude * torch.exp(1j * ramp))
    return torch.stack(maps).to(torch.complex64)
