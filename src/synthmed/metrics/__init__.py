"""Evaluation metrics (image quality of synthesised volumes against references)."""

from synthmed.metrics.image import (
    PSNR_CAP_DB,
    foreground_mask,
    image_metrics,
    mae,
    max_normalised,
    nmse,
    psnr,
    ssim,
    summarize,
)

__all__ = [
    "PSNR_CAP_DB",
    "foreground_mask",
    "image_metrics",
    "mae",
    "max_normalised",
    "nmse",
    "psnr",
    "ssim",
    "summarize",
]
