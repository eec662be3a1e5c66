"""Downstream proof for paired generators: does adding generated image + lesion-mask pairs to the real training
data help a lesion segmenter? And always-available statistics of generated masks.

**Segmentation benchmark** (:func:`segbench`). A small 2D MONAI U-Net (:func:`segmentation_network`) is trained
on a prepared folder's *train*-split slices (image = the prepared ``source`` modality, mask = ``label > 0``):

- training set of the real-only arm (``N = 0``): **all** train-split slices of the prepared folder. ``prepare``
  already keeps only slices whose foreground covers at least its minimum fraction, so every training slice has
  non-trivial foreground; slices without lesion are kept (they teach the network not to fire on healthy tissue);
- arm ``NAME+N``: the same real slices plus the first ``N`` generated pairs (file order) of the generated folder
  ``NAME``. A folder with fewer than ``N`` pairs or with slices of another size is refused before anything is
  trained. A folder with images but no masks (an image-only generator such as ``ddpm-gen``) gets no arm, and the
  result says why: its images cannot be used for supervised segmentation (FID is still computed for it);
- every arm gets the same number of optimiser steps and batch size; each step draws ``batch_size`` slices with
  replacement from the arm's pool (real and generated alike): a share ``lesion_fraction`` (default 1/2) of them
  uniformly from the pool's slices whose mask holds lesion, the rest uniformly from the whole pool (foreground
  oversampling as in nnU-Net: lesions are rare, and without it the network learns to predict nothing), and flips
  each at random left-right and up-down (probability 1/2 each); loss = Dice + BCE (MONAI
  ``DiceCELoss(sigmoid=True, batch=True)``: soft Dice over the whole batch's voxels, so slices without lesion are
  no problem), Adam;
- each seed fixes the network's initial weights and the batch/flip draws; the same seed gives every arm the same
  initial weights, so per-seed differences between arms are paired.

**Evaluation.** The network segments every slice of each *test*-split subject (sigmoid > 0.5). Per subject, Dice
and IoU are computed over the pooled voxels of the evaluated slices (not averaged per slice): with
``lesion_slices_only=True`` (default) the evaluated slices are those whose reference mask holds lesion, otherwise
all the subject's slices. Both variants are always recorded per subject (``lesion_slices`` and ``all_slices``),
with the false-positive voxels on lesion-free slices; the flag picks the headline. A subject with no reference
lesion voxel in the evaluated slices has Dice/IoU ``None`` and is left out of the means (it is listed, with its
false-positive voxel count). Per seed, the headline is the mean over the scored subjects; per arm, the mean and
sample standard deviation (``ddof = 1``; ``None`` for one seed) over seeds of those per-seed means.

:func:`synthmed.metrics.dice_iou` on its own: Dice = 2|P∩R| / (|P| + |R|), IoU = |P∩R| / |P∪R| over all voxels it is given;
when both are empty it returns (1.0, 1.0) (nothing to find, nothing found).

**Mask statistics** (:func:`mask_statistics`, :func:`compare_mask_statistics`): per-slice lesion area (pixels) and
number of connected components (``scipy.ndimage.label``, 4-connectivity in 2D), summarised, and two-sample
Kolmogorov-Smirnov statistics between real and generated masks. :func:`image_mask_consistency`: a segmenter
trained on real data applied to generated images, scored against the generated masks.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from synthmed.errors import SynthmedError
from synthmed.metrics import dice_iou
from synthmed.workflows.train import GENERATOR_MULTIPLE

log = logging.getLogger(__name__)

THRESHOLD = 0.5  # on the sigmoid of the logit
SEGMENT_BATCH = 64
LESION_FRACTION = 0.5  # of each training batch drawn from slices with lesion


# --------------------------------------------------------------------------- network, training, inference


def segmentation_network(size: int, channels: Sequence[int] = (16, 32, 64), num_res_units: int = 1) -> nn.Module:
    """A 2D MONAI U-Net: 1 input channel, 1 output logit channel, stride-2 downsampling between levels."""
    from monai.networks.nets import UNet

    channels = tuple(int(c) for c in channels)
    if len(channels) < 2:
        raise SynthmedError(f"segmentation network channels {channels}: give at least two levels")
    factor = 2 ** (len(channels) - 1)
    if size % factor:
        raise SynthmedError(
            f"slice size {size} is not divisible by {factor} ({len(channels)} U-Net levels); "
            "use fewer levels or another size"
        )
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=num_res_units,
    )


def _as_array(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3:
        raise SynthmedError(f"{name}: expected an array (n, H, W), got shape {x.shape}")
    return x


def train_segmenter(
    images: np.ndarray,
    masks: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    channels: Sequence[int] = (16, 32, 64),
    lesion_fraction: float = LESION_FRACTION,
    on_step: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train :func:`segmentation_network` on ``images`` (n, H, W) in [-1, 1] and binary ``masks`` (n, H, W).

    Dice + BCE loss, Adam, ``steps`` steps of ``batch_size`` slices, random left-right / up-down flips. Of each
    batch, ``round(lesion_fraction * batch_size)`` slices are drawn (uniformly, with replacement) from the slices
    whose mask holds lesion, the rest from all slices (foreground oversampling as in nnU-Net: lesions are rare;
    with no lesion slice at all every slice is drawn from all slices). Deterministic for a given ``seed``
    (weights, batches, flips) on CPU; the global torch RNG state is left as it was. Returns the network in eval mode.
    """
    from monai.losses import DiceCELoss

    images, masks = _as_array(images, "images"), _as_array(masks, "masks")
    if images.shape != masks.shape:
        raise SynthmedError(f"images {images.shape} and masks {masks.shape} differ in shape")
    if len(images) == 0:
        raise SynthmedError("no training slices")
    if steps < 1 or batch_size < 1:
        raise SynthmedError(f"steps ({steps}) and batch size ({batch_size}) must be positive")
    if images.shape[1] != images.shape[2]:
        raise SynthmedError(f"slices must be square, got {images.shape[1:]}")
    device = torch.device(device)
    x_all = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    y_all = torch.from_numpy((np.asarray(masks) > 0).astype(np.float32))[:, None]
    if not 0.0 <= lesion_fraction <= 1.0:
        raise SynthmedError(f"lesion fraction {lesion_fraction}: use a value in [0, 1]")
    lesion_rows = np.flatnonzero(y_all.reshape(len(y_all), -1).amax(dim=1).numpy() > 0)
    n_lesion = int(round(lesion_fraction * batch_size)) if len(lesion_rows) else 0
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = segmentation_network(images.shape[1], channels).to(device)
    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    network.train()
    for step in range(steps):
        pick = rng.integers(0, len(images), batch_size)
        if n_lesion:
            pick[:n_lesion] = lesion_rows[rng.integers(0, len(lesion_rows), n_lesion)]
        flips = rng.random((batch_size, 2)) < 0.5
        x, y = x_all[pick].clone(), y_all[pick].clone()
        for dim, column in ((3, 0), (2, 1)):  # left-right, up-down
            chosen = torch.from_numpy(np.flatnonzero(flips[:, column]))
            if len(chosen):
                x[chosen] = x[chosen].flip(dim)
                y[chosen] = y[chosen].flip(dim)
        x, y = x.to(device), y.to(device)
        loss = loss_fn(network(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    network.eval()
    return network


@torch.no_grad()
def segment(network: nn.Module, images: np.ndarray) -> np.ndarray:
    """Binary masks (uint8 {0, 1}, (n, H, W)) of ``images`` (n, H, W): sigmoid(logit) > 0.5."""
    images = _as_array(images, "images")
    network.eval()
    device = next(network.parameters()).device
    out = np.zeros(images.shape, dtype=np.uint8)
    for start in range(0, len(images), SEGMENT_BATCH):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + SEGMENT_BATCH], dtype=np.float32))[:, None]
        logits = network(x.to(device))[:, 0]
        out[start : start + len(x)] = (torch.sigmoid(logits) > THRESHOLD).cpu().numpy()
    return out


def _subject_scores(pred: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Per-subject overlap, pooled over the lesion slices and over all slices (see the module docstring)."""
    ref = ref > 0
    pred = pred > 0
    has_lesion = ref.reshape(len(ref), -1).any(axis=1)
    result: dict[str, Any] = {
        "n_slices": int(len(ref)),
        "n_lesion_slices": int(has_lesion.sum()),
        "reference_voxels": int(ref.sum()),
        "predicted_voxels": int(pred.sum()),
        "false_positive_voxels_on_lesion_free_slices": int(pred[~has_lesion].sum()),
    }
    for key, chosen in (("lesion_slices", has_lesion), ("all_slices", np.ones(len(ref), dtype=bool))):
        if not ref[chosen].any():
            result[key] = {"dice": None, "iou": None}
        else:
            dice, iou = dice_iou(pred[chosen], ref[chosen])
            result[key] = {"dice": dice, "iou": iou}
    return result


def _mean_sd(values: Sequence[float | None]) -> dict[str, Any]:
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    mean = float(np.mean(kept)) if kept else None
    sd = float(np.std(kept, ddof=1)) if len(kept) > 1 else None
    return {"mean": mean, "sd": sd, "n": len(kept), "values": [None if v is None else float(v) for v in values]}


# --------------------------------------------------------------------------- mask statistics


def _quartiles(x: np.ndarray) -> dict[str, float | None]:
    if len(x) == 0:
        return {"mean": None, "sd": None, "min": None, "q1": None, "median": None, "q3": None, "max": None}
    q = np.percentile(x, [0, 25, 50, 75, 100])
    return {
        "mean": float(x.mean()),
        "sd": float(x.std(ddof=1)) if len(x) > 1 else None,
        "min": float(q[0]),
        "q1": float(q[1]),
        "median": float(q[2]),
        "q3": float(q[3]),
        "max": float(q[4]),
    }


def _areas_counts(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    masks = _as_array(masks, "masks") > 0
    areas = masks.reshape(len(masks), -1).sum(axis=1).astype(np.int64)
    counts = np.array([ndimage.label(m)[1] for m in masks], dtype=np.int64)  # 4-connectivity (cross) in 2D
    return areas, counts


def mask_statistics(masks: np.ndarray) -> dict[str, Any]:
    """Per-slice lesion area (pixels) and connected-component count (4-connected), summarised.

    ``area`` and ``components`` summarise all slices; ``area_nonempty`` and ``components_nonempty`` only the
    slices with lesion; ``empty_fraction`` is the share of slices without lesion; ``component_area`` summarises
    the sizes of all components.
    """
    from scipy import ndimage

    masks = _as_array(masks, "masks") > 0
    areas, counts = _areas_counts(masks)
    sizes = []
    for m in masks:
        labelled, n = ndimage.label(m)
        if n:
            sizes.extend(np.bincount(labelled.ravel())[1:].tolist())
    nonempty = areas > 0
    return {
        "slices": int(len(masks)),
        "empty_fraction": float(1 - nonempty.mean()) if len(masks) else None,
        "area": _quartiles(areas.astype(np.float64)),
        "components": _quartiles(counts.astype(np.float64)),
        "area_nonempty": _quartiles(areas[nonempty].astype(np.float64)),
        "components_nonempty": _quartiles(counts[nonempty].astype(np.float64)),
        "component_area": _quartiles(np.asarray(sizes, dtype=np.float64)),
        "total_components": int(counts.sum()),
    }


def compare_mask_statistics(real_masks: np.ndarray, generated_masks: np.ndarray) -> dict[str, Any]:
    """:func:`mask_statistics` of both sets and two-sample Kolmogorov-Smirnov tests (``scipy.stats.ks_2samp``)
    of per-slice areas and component counts: over all slices, and over the non-empty slices only (where the
    lesion shapes are compared without the empty-slice proportion). ``None`` where a side has no value."""
    from scipy.stats import ks_2samp

    real_areas, real_counts = _areas_counts(real_masks)
    gen_areas, gen_counts = _areas_counts(generated_masks)

    def ks(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        if len(a) == 0 or len(b) == 0:
            return {"statistic": None, "pvalue": None, "n_real": int(len(a)), "n_generated": int(len(b))}
        result = ks_2samp(a, b)
        return {
            "statistic": float(result.statistic),
            "pvalue": float(result.pvalue),
            "n_real": int(len(a)),
            "n_generated": int(len(b)),
        }

    real_nonempty, gen_nonempty = real_areas > 0, gen_areas > 0
    real_stats, gen_stats = mask_statistics(real_masks), mask_statistics(generated_masks)
    real_empty, gen_empty = real_stats["empty_fraction"], gen_stats["empty_fraction"]
    return {
        "real": real_stats,
        "generated": gen_stats,
        "ks": {
            "area": ks(real_areas, gen_areas),
            "components": ks(real_counts, gen_counts),
            "area_nonempty": ks(real_areas[real_nonempty], gen_areas[gen_nonempty]),
            "components_nonempty": ks(real_counts[real_nonempty], gen_counts[gen_nonempty]),
        },
        "empty_fraction_difference": None if real_empty is None or gen_empty is None else gen_empty - real_empty,
    }


def image_mask_consistency(segmenter: nn.Module, images: np.ndarray, masks: np.ndarray) -> dict[str, Any]:
    """Do generated images show the lesions their generated masks say? A segmenter trained on real data
    segments ``images``; Dice against ``masks``: ``mean_dice_nonempty`` averages per-slice Dice over the slices
    whose generated mask holds lesion, ``pooled_dice`` / ``pooled_iou`` pool all voxels of all slices, and
    ``predicted_on_empty_fraction`` is the share of empty-mask slices where the segmenter finds lesion."""
    images, masks = _as_array(images, "images"), _as_array(masks, "masks") > 0
    if images.shape != masks.shape:
        raise SynthmedError(f"images {images.shape} and masks {masks.shape} differ in shape")
    pred = segment(segmenter, images) > 0
    nonempty = masks.reshape(len(masks), -1).any(axis=1)
    per_slice = [dice_iou(p, m)[0] for p, m in zip(pred[nonempty], masks[nonempty])]
    pooled_dice, pooled_iou = dice_iou(pred, masks) if masks.any() or pred.any() else (None, None)
    pred_any = pred.reshape(len(pred), -1).any(axis=1)
    return {
        "slices": int(len(images)),
        "nonempty_slices": int(nonempty.sum()),
        "mean_dice_nonempty": float(np.mean(per_slice)) if per_slice else None,
        "sd_dice_nonempty": float(np.std(per_slice, ddof=1)) if len(per_slice) > 1 else None,
        "pooled_dice": pooled_dice,
        "pooled_iou": pooled_iou,
        "predicted_on_empty_fraction": float(pred_any[~nonempty].mean()) if (~nonempty).any() else None,
    }


# --------------------------------------------------------------------------- the benchmark


def _load_generated(generated: dict[str, str | Path] | None, counts: list[int], size: int) -> dict[str, dict]:
    """Read and check every generated folder before any training (see the module docstring). Image-only folders
    (no masks) are kept for the sample-quality part (FID) and left out of the segmentation arms."""
    from synthmed.data.generated import read_generated

    loaded: dict[str, dict] = {}
    need = max(counts) if counts else 0
    for name, folder in (generated or {}).items():
        if not name or "+" in name:
            raise SynthmedError(f"generated set name {name!r}: give a non-empty name without '+'")
        images, masks, info = read_generated(folder)
        side = images.shape[1]
        padded_side = -(-size // GENERATOR_MULTIPLE) * GENERATOR_MULTIPLE
        if images.shape[2] == side == padded_side != size:
            # A generator of native-resolution slices made them padded to a multiple its U-Net halves evenly: the
            # prepared slice is their middle.
            middle = slice((side - size) // 2, (side - size) // 2 + size)
            images = images[:, middle, middle]
            masks = masks[:, middle, middle] if masks is not None else None
        if images.shape[1:] != (size, size):
            raise SynthmedError(
                f"generated set {name!r} ({folder}) has {images.shape[1]}x{images.shape[2]} slices but the prepared "
                f"folder's slices are {size}x{size}; generate at the prepared size (or prepare with --size "
                f"{images.shape[1]})"
            )
        if masks is not None and len(images) < need:
            raise SynthmedError(
                f"generated set {name!r} ({folder}) holds {len(images)} pairs, fewer than the "
                f"{need} asked for by the extra counts; generate more or lower the counts"
            )
        loaded[name] = {"folder": str(folder), "images": images, "masks": masks, "info": info}
    return loaded


def _parse_counts(extra_counts: Sequence[int]) -> list[int]:
    counts = []
    for n in extra_counts:
        if isinstance(n, bool) or int(n) != n or n < 0:
            raise SynthmedError(f"extra count {n!r}: use whole numbers >= 0")
        if int(n) not in counts:
            counts.append(int(n))
    return counts


def segbench(
    prep: str | Path,
    generated: dict[str, str | Path] | None,
    *,
    extra_counts: Sequence[int],
    seeds: Sequence[int],
    steps: int,
    batch_size: int,
    lr: float = 1e-3,
    device: str = "cpu",
    lesion_slices_only: bool = True,
    channels: Sequence[int] = (16, 32, 64),
    lesion_fraction: float = LESION_FRACTION,
    consistency: bool = True,
    inception_weights: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a lesion segmenter on real train-split pairs alone (arm ``real``, N = 0) and on real + the first N
    generated pairs of each generated folder (arm ``NAME+N``) for each N > 0 in ``extra_counts``; score every arm
    and seed on the test-split subjects. Returns a JSON-able dict (see the module docstring for the rules).

    ``consistency``: also apply each seed's real-only segmenter to every generated folder's images
    (:func:`image_mask_consistency`). Mask statistics of every generated folder against the real train-split
    masks are always included. A folder of images without masks (an image-only generator such as ``ddpm-gen``)
    gets no segmentation arm: the report says so, because its images cannot supervise a segmenter.

    ``inception_weights``: a local Inception-v3 file; each folder's images then get an FID against the real
    train-split slices that hold a lesion (the slices PIG trains on). Without it FID is recorded as unavailable.
    """
    from synthmed.data.datasets import PreparedData
    from synthmed.runtime.devices import pick_device

    data = PreparedData(prep)
    if "label" not in data.arrays:
        raise SynthmedError(f"{prep}: no label slices; prepare with --label (e.g. --label lesion)")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SynthmedError(f"seeds {seeds}: give one or more distinct seeds")
    counts = _parse_counts(extra_counts)
    if steps < 1 or batch_size < 1:
        raise SynthmedError(f"steps ({steps}) and batch size ({batch_size}) must be positive")
    size = data.plan.size
    segmentation_network(size, channels)  # refuses a size the U-Net cannot halve
    torch_device = pick_device(device)
    loaded = _load_generated(generated, counts, size)

    train_rows, test_rows = data.rows("train"), data.rows("test")
    if len(train_rows) == 0:
        raise SynthmedError(f"{prep}: the train split has no slices")
    if len(test_rows) == 0:
        raise SynthmedError(f"{prep}: the test split has no slices; prepare with a split that gives test subjects")
    real_images = np.asarray(data.arrays["source"][train_rows], dtype=np.float32)
    real_masks = (np.asarray(data.arrays["label"][train_rows]) > 0).astype(np.uint8)
    if not real_masks.any():
        log.warning("%s: the train split holds no lesion voxel; the segmenters cannot learn lesions", prep)
    test_images = np.asarray(data.arrays["source"][test_rows], dtype=np.float32)
    test_masks = (np.asarray(data.arrays["label"][test_rows]) > 0).astype(np.uint8)
    test_subject_numbers = np.asarray(data.arrays["index"][test_rows, 0])
    number_to_subject = {data.plan.volumes[s].number: s for s in data.plan.split["test"]}
    subjects = [number_to_subject[n] for n in sorted(set(test_subject_numbers.tolist()))]
    headline = "lesion_slices" if lesion_slices_only else "all_slices"

    arms: list[dict[str, Any]] = [{"arm": "real", "generated": None, "n_generated": 0}]
    for name in loaded:
        if loaded[name]["masks"] is None:
            continue
        for n in counts:
            if n > 0:
                arms.append({"arm": f"{name}+{n}", "generated": name, "n_generated": n})

    def say(message: str) -> None:
        log.debug(message)
        if progress:
            print(f"[segbench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    result: dict[str, Any] = {
        "benchmark": "segbench",
        "settings": {
            "steps": int(steps),
            "batch_size": int(batch_size),
            "lr": float(lr),
            "seeds": seeds,
            "extra_counts": counts,
            "device": str(torch_device),
            "lesion_slices_only": bool(lesion_slices_only),
            "network": {
                "kind": "monai.networks.nets.UNet",
                "spatial_dims": 2,
                "channels": list(channels),
                "strides": [2] * (len(channels) - 1),
                "num_res_units": 1,
                "norm": "instance",
            },
            "loss": "monai DiceCELoss(sigmoid=True, batch=True): soft Dice over the batch's voxels + BCE with logits",
            "optimizer": "Adam",
            "augmentation": "random left-right and up-down flips, probability 1/2 each",
            "lesion_fraction": float(lesion_fraction),
            "sampling": "each step draws round(lesion_fraction * batch_size) slices uniformly with replacement from "
            "the pool's slices whose mask holds lesion, the rest uniformly from the whole pool (real and "
            "generated alike)",
            "training_set": "all train-split slices of the prepared folder (prepare keeps only slices with "
            "non-trivial foreground; lesion-free slices included), plus for arm NAME+N the first N "
            "pairs of generated set NAME",
            "evaluation": (
                "test-split subjects; per subject Dice/IoU over the pooled voxels of its slices that "
                "contain reference lesion"
                if lesion_slices_only
                else "test-split subjects; per subject Dice/IoU over the pooled voxels of all its slices"
            )
            + "; prediction = sigmoid > 0.5; subjects without reference lesion are left out of the "
            "means; per-seed value = mean over subjects; arm value = mean and sample sd over seeds",
            "headline_slices": headline,
        },
        "data": {
            "prepared": str(prep),
            "source": data.plan.source,
            "label": data.plan.label,
            "size": size,
            "train_subjects": list(data.plan.split["train"]),
            "test_subjects": subjects,
            "train_slices": int(len(train_rows)),
            "train_lesion_slices": int(real_masks.reshape(len(real_masks), -1).any(axis=1).sum()),
            "train_lesion_voxels": int(real_masks.sum()),
            "test_slices": int(len(test_rows)),
            "test_lesion_slices": int(test_masks.reshape(len(test_masks), -1).any(axis=1).sum()),
            "test_lesion_voxels": int(test_masks.sum()),
        },
        "generated": {},
        "arms": [],
        "summary": {},
    }
    from synthmed.metrics.fid import fid_or_unavailable

    real_lesion_images = real_images[real_masks.reshape(len(real_masks), -1).any(axis=1)]
    for name, entry in loaded.items():
        info = entry["info"]
        image_only = entry["masks"] is None
        result["generated"][name] = {
            "folder": entry["folder"],
            "available": int(len(entry["images"])),
            "masks": not image_only,
            "generation": {
                k: info.get(k)
                for k in ("run", "model", "checkpoint", "n", "sampler", "steps", "seed", "format", "mask_threshold")
                if k in info
            },
            "fid": fid_or_unavailable(
                real_lesion_images, entry["images"], str(inception_weights) if inception_weights else None
            ),
            "fid_reference": "the real train-split slices that hold a lesion",
            "mask_statistics": None if image_only else compare_mask_statistics(real_masks, entry["masks"]),
            "mask_statistics_reference": "the real train-split label masks (label > 0), all slices",
            "consistency": [] if consistency and not image_only else None,
        }
        if image_only:
            result["generated"][name]["segmentation"] = (
                "not used: these are images without lesion masks (an image-only generator), so they cannot "
                "supervise a segmenter; pairing them with masks from elsewhere would not test the generator"
            )

    for arm in arms:
        if arm["generated"] is None:
            images, masks = real_images, real_masks
        else:
            extra = loaded[arm["generated"]]
            n = arm["n_generated"]
            images = np.concatenate([real_images, extra["images"][:n]])
            masks = np.concatenate([real_masks, extra["masks"][:n]])
        arm.update({"n_real": int(len(real_images)), "n_train": int(len(images)), "seeds": []})
        for seed in seeds:
            started = time.perf_counter()
            network = train_segmenter(
                images,
                masks,
                steps=steps,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                device=torch_device,
                channels=channels,
                lesion_fraction=lesion_fraction,
            )
            seconds = time.perf_counter() - started
            pred = segment(network, test_images)
            per_subject = {}
            for number in sorted(set(test_subject_numbers.tolist())):
                chosen = test_subject_numbers == number
                per_subject[number_to_subject[number]] = _subject_scores(pred[chosen], test_masks[chosen])
            dice = [s[headline]["dice"] for s in per_subject.values() if s[headline]["dice"] is not None]
            iou = [s[headline]["iou"] for s in per_subject.values() if s[headline]["iou"] is not None]
            arm["seeds"].append(
                {
                    "seed": seed,
                    "train_seconds": round(seconds, 2),
                    "dice": float(np.mean(dice)) if dice else None,
                    "iou": float(np.mean(iou)) if iou else None,
                    "subjects_scored": len(dice),
                    "subjects": per_subject,
                }
            )
            say(
                f"{arm['arm']} seed {seed}: Dice {arm['seeds'][-1]['dice']}, IoU {arm['seeds'][-1]['iou']} "
                f"({seconds:.1f} s)"
            )
            if arm["generated"] is None:
                if consistency:
                    for name, entry in loaded.items():
                        if entry["masks"] is None:
                            continue
                        result["generated"][name]["consistency"].append(
                            {"seed": seed, **image_mask_consistency(network, entry["images"], entry["masks"])}
                        )
        arm["dice"] = _mean_sd([s["dice"] for s in arm["seeds"]])
        arm["iou"] = _mean_sd([s["iou"] for s in arm["seeds"]])
        result["arms"].append(arm)

    real_arm = result["arms"][0]
    real_dice = {s["seed"]: s["dice"] for s in real_arm["seeds"]}
    for arm in result["arms"]:
        deltas = [
            None if s["dice"] is None or real_dice[s["seed"]] is None else s["dice"] - real_dice[s["seed"]]
            for s in arm["seeds"]
        ]
        result["summary"][arm["arm"]] = {
            "n_generated": arm["n_generated"],
            "dice_mean": arm["dice"]["mean"],
            "dice_sd": arm["dice"]["sd"],
            "iou_mean": arm["iou"]["mean"],
            "iou_sd": arm["iou"]["sd"],
            "dice_minus_real": _mean_sd(deltas) if arm is not real_arm else None,
        }
    return result
