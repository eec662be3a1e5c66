"""Aligned patch sampling for training and sliding-window stitching for inference (patch-based translation).

:func:`aligned_patches` cuts one patch per sample at a random position, the same position in every tensor given
(the two domains' slices: fine structure at the same place of the head in both).

:func:`sliding_window` applies a function to overlapping patches (stride ``patch // 2`` by default, the last
window flush with the border) and blends the results with a positive pyramid weight that is largest at the
patch centre and smallest at its edges, so neighbouring patches cross-fade instead of leaving seams. Every pixel
gets the weighted mean of the windows covering it; an identity function therefore gives back the input
(to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def aligned_patches(
    tensors: list[torch.Tensor], patch: int, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """One random ``patch`` x ``patch`` crop per sample, at the same position in every tensor of ``tensors``."""
    n, _, height, width = tensors[0].shape
    if patch > min(height, width):
        raise ValueError(f"patch {patch} is larger than the image ({height}x{width})")
    if any(t.shape[0] != n or t.shape[-2:] != (height, width) for t in tensors):
        raise ValueError("aligned patches need tensors of the same batch size and image size")
    rows = torch.randint(0, height - patch + 1, (n,), generator=generator).tolist()
    cols = torch.randint(0, width - patch + 1, (n,), generator=generator).tolist()
    return [
        torch.stack([t[i, :, r : r + patch, c : c + patch] for i, (r, c) in enumerate(zip(rows, cols))])
        for t in tensors
    ]


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Window offsets covering [0, size): every ``stride``, plus one flush with the end."""
    if patch >= size:
        return [0]
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def pyramid_weight(patch: int, device=None) -> torch.Tensor:
    """(patch, patch) weights min(i + 1, patch - i) * min(j + 1, patch - j): positive, peaked at the centre."""
    ramp = torch.arange(patch, device=device, dtype=torch.float32)
    ramp = torch.minimum(ramp + 1, patch - ramp)
    return ramp[:, None] * ramp[None, :]


def sliding_window(
    function: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    patch: int,
    stride: int | None = None,
    batch: int = 64,
) -> torch.Tensor:
    """Apply ``function`` (B, C, patch, patch) -> (B, C', patch, patch) over ``images`` (N, C, H, W) and stitch."""
    n, _, height, width = images.shape
    patch_h, patch_w = min(patch, height), min(patch, width)
    if patch_h != patch_w:
        raise ValueError(f"image {height}x{width} is smaller than the patch {patch} on one side only")
    stride = stride or max(1, patch // 2)
    positions = [(r, c) for r in window_starts(height, patch_h, stride) for c in window_starts(width, patch_w, stride)]
    weight = pyramid_weight(patch_h, images.device)
    output = total = None
    for i in range(0, len(positions), max(1, batch // max(n, 1))):
        chunk = positions[i : i + max(1, batch // max(n, 1))]
        crops = torch.cat([images[:, :, r : r + patch_h, c : c + patch_w] for r, c in chunk])
        results = function(crops).float()
        if output is None:
            output = torch.zeros(n, results.shape[1], height, width, device=images.device)
            total = torch.zeros(1, 1, height, width, device=images.device)
        for k, (r, c) in enumerate(chunk):
            output[:, :, r : r + patch_h, c : c + patch_w] += results[k * n : (k + 1) * n] * weight
            total[:, :, r : r + patch_h, c : c + patch_w] += weight
    return output / total


def padded_to_multiple(
    function: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, multiple: int, fill: float = -1.0
) -> torch.Tensor:
    """``function(images)`` for networks that take only sides divisible by ``multiple`` (a U-Net halving the image
    ``log2(multiple)`` times): the images are padded on all sides with ``fill`` (the background, -1 in the model's
    range) to the next multiple, and the result is cut back to the input's size."""
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not pad_h and not pad_w:
        return function(images)
    top, left = pad_h // 2, pad_w // 2
    padded = torch.nn.functional.pad(images, (left, pad_w - left, top, pad_h - top), value=fill)
    return function(padded)[..., top : top + height, left : left + width]
