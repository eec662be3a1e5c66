"""Evaluation metrics (image quality of synthesised volumes against references)."""

from synthmed.metrics.image import (
    PSNR_CAP_DB,
    image_metrics,
    linear_fit,
    mae,
    max_normalised,
    nmse,
    psnr,
    ssim,
    summarize,
    through_plane_psnr,
)

__all__ = [
    "PSNR_CAP_DB",
    "image_metrics",
    "linear_fit",
    "mae",
    "max_normalised",
    "nmse",
    "psnr",
    "ssim",
    "summarize",
    "through_plane_psnr",
]
