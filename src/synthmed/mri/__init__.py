"""Undersampled MRI: the measurement side of reconstruction (k-space, masks, coils, data consistency) and a
classical compressed-sensing baseline; the building blocks a score-based reconstruction plugs its prior into.

Conventions: k-space is centred (DC at ``(H // 2, W // 2)``) and the 2D FFT orthonormal
(:mod:`~synthmed.mri.fourier`); images and k-space are complex torch tensors whose last two dimensions are
``(H, W)``, with coils, when present, the third-last; masks are boolean ``(H, W)`` tensors, ``True`` where a
sample was acquired. This package imports only torch, NumPy and synthmed's bottom layer (errors, files).
"""

from synthmed.mri.bart import read_cfl, read_cfl_shape, write_cfl
from synthmed.mri.coils import (
    calibration_region,
    estimate_sensitivities,
    root_sum_of_squares,
    sense_adjoint,
    sense_combine,
    sense_forward,
)
from synthmed.mri.consistency import hard_data_consistency
from synthmed.mri.cs import cs_reconstruction, total_variation, tv_reconstruction
from synthmed.mri.fourier import fft2c, ifft2c
from synthmed.mri.masks import achieved_acceleration, undersampling_mask
from synthmed.mri.phantom import gaussian_coil_sensitivities, shepp_logan
from synthmed.mri.undersample import synthetic_phase, undersample_image, undersample_kspace, zero_filled

__all__ = [
    "achieved_acceleration",
    "calibration_region",
    "cs_reconstruction",
    "estimate_sensitivities",
    "fft2c",
    "gaussian_coil_sensitivities",
    "hard_data_consistency",
    "ifft2c",
    "read_cfl",
    "read_cfl_shape",
    "root_sum_of_squares",
    "sense_adjoint",
    "sense_combine",
    "sense_forward",
    "shepp_logan",
    "synthetic_phase",
    "total_variation",
    "tv_reconstruction",
    "undersample_image",
    "undersample_kspace",
    "undersampling_mask",
    "write_cfl",
    "zero_filled",
]
