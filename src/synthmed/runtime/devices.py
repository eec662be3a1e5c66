"""Devices, mixed precision and seeding: what training and inference both need."""

from __future__ import annotations

import logging
import random
import warnings

import numpy as np
import torch

from synthmed.errors import SynthmedError

log = logging.getLogger(__name__)

AMP_MODES = ("auto", "bf16", "fp16", "off")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SynthmedError(f"--device {name}: not a device name (use auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise SynthmedError(
            f"--device {name}: no such CUDA device here (this torch sees {torch.cuda.device_count()}); use --device cpu"
        )
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SynthmedError(f"--device {name}: MPS is not available here; use --device cpu")
    return device


def autocast_dtype(mode: str, device: torch.device, training: bool = True) -> torch.dtype | None:
    """The autocast dtype of an ``--amp`` mode on ``device``; None = full precision.

    ``auto``: bf16 on CUDA GPUs that have it (Ampere and later), full precision elsewhere. ``bf16``: also on the CPU
    (fast on CPUs with AVX-512 BF16 or AMX). ``fp16``: float16, for GPUs without bf16 (V100, T4); in training with a
    gradient scaler (fp16's narrow range needs the scaled losses, bf16 does not). ``off``: full precision."""
    if mode not in AMP_MODES:
        raise SynthmedError(f"--amp {mode}: use {', '.join(AMP_MODES)}")
    if mode == "off":
        return None
    if mode == "fp16":
        if device.type in ("cuda", "cpu"):
            return torch.float16
        log.warning(
            "--amp fp16: no fp16 autocast on %s here; %s in full precision",
            device,
            "training" if training else "running",
        )
        return None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if mode == "bf16":
            log.warning("--amp bf16: this GPU has no bf16; full precision (--amp fp16 may help)")
        return None
    if device.type == "cpu" and mode == "bf16":
        return torch.bfloat16
    if mode == "bf16":
        log.warning("--amp bf16: no bf16 autocast on %s here; full precision", device)
    return None


def set_precision(model, mode: str, device: torch.device, training: bool = True) -> None:
    """Give ``model`` the autocast dtype of ``mode`` and, to train in fp16, a gradient scaler (the caller calls
    ``model.grad_scaler.update()`` once after each training step)."""
    model.amp_dtype = autocast_dtype(mode, device, training)
    model.grad_scaler = None
    if training and model.amp_dtype == torch.float16:
        model.grad_scaler = torch.amp.GradScaler(device.type)
        # The scaler skips the first steps while it finds its level; the schedulers' warning about a step
        # "before optimizer.step()" is expected then.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
