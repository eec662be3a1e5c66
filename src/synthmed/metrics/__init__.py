"""Evaluation metrics: image quality of synthesised volumes against references, and mask overlap."""

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
from synthmed.metrics.overlap import dice_iou

__all__ = [
    "PSNR_CAP_DB",
    "dice_iou",
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
