"""``synthmed translate``: apply a trained run to whole volumes, same geometry out.

Each input volume goes through the same steps as at preparation (foreground box,
square crop, resize, per-volume normalisation of the source), its slices are batched
through the model, and the output is pasted back into the source grid and written
with the source's affine and header.

Intensities come back in the target's units. For CT targets the fixed HU window makes
that exact. MR units are arbitrary per scan, so the output takes the scale of a
reference scan of the target modality when one is given (``reference``: a file, or a
folder mirrored on the input folder; only its two robust percentiles are used), and
otherwise the median scale of the training targets recorded in the plan.

Stochastic models (diffusion) take sampling options (sampler, number of network
evaluations, eta) and a seed; with ``samples = K > 1`` each slice is sampled K times, the
mean is written as the translation and the per-voxel standard deviation (in the target's
units, same geometry) beside it as ``<name>_std<suffix>``: an uncertainty map. Noise is
drawn per chunk of slices from a generator seeded with (seed, chunk), so the same command
(same seed, batch size and device) writes the same volumes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from synthmed.data.discovery import file_modality, strip_subject_prefix
from synthmed.data.foreground import foreground_mask
from synthmed.data.geometry import (
    SliceGeometry,
    box_overlap,
    crop_slices,
    fit_geometry,
    fit_native_geometry,
    foreground_side_mm,
    from_slices,
    in_plane_spacing,
    native_size,
    slice_axis,
    to_slices,
    uncrop_slices,
)
from synthmed.data.input_profile import differences as input_differences
from synthmed.data.input_profile import measure as measure_input
from synthmed.data.io import (
    Volume,
    ensure_writable_folder,
    is_volume_path,
    output_suffix,
    read_volume,
    volume_suffix,
    write_volume,
)
from synthmed.data.normalize import Normalization, fit_normalization, modality_kind, mr_low
from synthmed.data.plan import Plan
from synthmed.engine.checkpoint import load_checkpoint
from synthmed.engine.run_folder import RunFolder, RunRecord
from synthmed.errors import SynthmedError
from synthmed.files import (
    finite_json,
    output_lock,
    read_marker,
    record_written,
    refuse_overlap,
    refuse_replacing_foreign,
    remove_stale_temporaries,
    same_file,
    temporary_path,
    write_marker,
)
from synthmed.models.base import SynthesisModel
from synthmed.models.registry import config_from_dict, instantiate
from synthmed.nn import fused
from synthmed.nn.layers import unwrapped
from synthmed.nn.patches import padded_to_multiple
from synthmed.runtime.devices import pick_device, set_precision

log = logging.getLogger(__name__)

# Air in Hounsfield units is -1000; MR magnitudes are not negative. A scan whose 0.5th percentile lies this far
# below zero is a CT (or a CT-like map), never an MR image.
CT_AIR_LEVEL = -500.0


@dataclass
class Sampling:
    """How a stochastic model samples: options for ``model.translate`` plus repeats and seed."""

    options: dict = field(default_factory=dict)  # e.g. {"sampler": "ddim", "steps": 50, "eta": 0.0}
    samples: int = 1
    seed: int = 0


@dataclass
class Translation:
    image: np.ndarray  # the (mean) translation, source grid, target units
    std: np.ndarray | None = None  # per-voxel standard deviation over samples (samples > 1)


@dataclass
class LoadedRun:
    model: SynthesisModel
    plan: Plan  # for direction B2A, the plan with source and target swapped
    info: RunRecord
    checkpoint: Path
    direction: str = "A2B"


def load_run(
    run: str | Path, device: str = "auto", checkpoint: str = "best", direction: str = "A2B", amp: str = "off"
) -> LoadedRun:
    """Model (EMA weights where the run kept them) + plan of a run folder, ready to translate.

    ``amp``: the networks' precision (``off``: full, the default; ``bf16``/``fp16``/``auto`` as in ``train``: faster,
    outputs differ by the reduced precision's round-off).

    ``direction`` B2A (models trained both ways) translates the plan's target modality back
    into its source modality: everything downstream sees a plan with the two roles swapped.
    """
    folder = RunFolder(run)
    info, plan = folder.load()
    path = folder.find_checkpoint(checkpoint)
    target = pick_device(device)
    record = load_checkpoint(path, map_location=target)
    missing = [key for key in ("model", "config", "state") if key not in record]
    if missing:
        raise SynthmedError(f"{path}: checkpoint lacks {', '.join(missing)}; it is damaged or from another tool")
    check_checkpoint_fits(record, info, plan, path, folder)
    model = instantiate(record["model"], config_from_dict(record["model"], record["config"]))
    try:
        if record.get("networks"):
            load_networks(model, record["state"], record["networks"])
        else:
            model.load_state_dict(record["state"])
        for name, values in (record.get("ema") or {}).items():
            getattr(model, name).load_state_dict(values)
    except (RuntimeError, KeyError, AttributeError) as error:
        raise SynthmedError(
            f"{path}: weights do not fit the {record['model']} model ({str(error).splitlines()[0][:100]})"
        ) from None
    model.to(target).eval()
    set_precision(model, amp, target, training=False)
    if direction not in ("A2B", "B2A"):
        raise SynthmedError(f"--direction {direction}: use A2B ({plan.source} -> {plan.target}) or B2A (the reverse)")
    if direction not in model.directions:
        raise SynthmedError(
            f"{model.name} translates {plan.source} -> {plan.target} only (A2B); B2A needs a model "
            "trained in both directions (e.g. cyclegan)"
        )
    if info.directions is not None and direction not in info.directions:
        raise SynthmedError(
            f"{folder.root} has weights for {', '.join(info.directions)} only ({plan.source} -> {plan.target}); "
            f"{direction} needs the reverse generator (synthmed import ... --reverse FILE)"
        )
    if direction == "B2A":
        plan = plan.swapped()
    return LoadedRun(model, plan, info, path, direction)


def prepare_for_inference(model: SynthesisModel, compile: bool = False) -> None:
    """Ready a loaded model's networks for translation or generation: channels_last memory on a CPU for the models
    measured faster that way (NCHW where float32 convolutions take the Winograd path) and, with ``compile``,
    ``torch.compile`` of each network (in place, lazily: only the networks the sampler calls are compiled, at their
    first call). On a CPU compilation was measured to gain nothing for the diffusion networks at 256 px and to cost
    40-100 s at the first call; it is meant for GPUs."""
    if model.channels_last_inference and model.device.type == "cpu":
        # Winograd convolutions (float32, one thread; synthmed.nn.fused) read NCHW maps: there NCHW is faster.
        winograd = model.fused_winograd and model.amp_dtype is None and fused.winograd_active(model.device)
        model.to(memory_format=torch.contiguous_format if winograd else torch.channels_last)
    if compile:
        for child in model.children():
            if any(True for _ in child.parameters()):
                child.compile()


def load_networks(model: SynthesisModel, state: dict, networks: list[str]) -> None:
    """Load a checkpoint that holds only some of a model's networks (an imported run keeps just the generators it
    translates with): each listed network strictly, anything outside them refused, the others left as built."""
    for key in state:
        if key.split(".", 1)[0] not in networks:
            raise KeyError(f"{key} is outside the checkpoint's networks {networks}")
    for name in networks:
        prefix = f"{name}."
        unwrapped(model.get_submodule(name)).load_state_dict(
            {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
        )


# Settings that may differ between a checkpoint and run.json: the step budget grows when a run is resumed.
RESUMABLE_SETTINGS = ("steps",)


def check_checkpoint_fits(record: dict, info: RunRecord, plan: Plan, path: Path, folder: RunFolder) -> None:
    """Refuse a checkpoint that is not this run's: another model, another configuration (size, channels, ...)
    or trained on another prepared data set (its plan's digest). A checkpoint copied in from elsewhere would
    otherwise translate with exit status 0 and outputs of the wrong model or scale."""
    if record["model"] != info.model:
        raise SynthmedError(
            f"{path} is a {record['model']} checkpoint, but {folder.run_json} is a {info.model} "
            "run: the checkpoint belongs to another run; copy run folders whole"
        )
    saved = finite_json({k: v for k, v in dict(record["config"]).items() if k not in RESUMABLE_SETTINGS})
    expected = finite_json({k: v for k, v in info.config.items() if k not in RESUMABLE_SETTINGS})
    if saved != expected:
        changed = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
        shown = ", ".join(
            f"{k}: {saved.get(k)!r} in the checkpoint, {expected.get(k)!r} in run.json" for k in changed[:2]
        )
        raise SynthmedError(
            f"{path} was trained with another configuration than {folder.run_json} ({shown}"
            f"{' ...' if len(changed) > 2 else ''}): it belongs to another run; copy run folders whole"
        )
    digest = record.get("plan_digest")
    if digest and digest != plan.digest():
        raise SynthmedError(
            f"{path} was trained on another prepared data set than {folder.plan_json} describes "
            "(its plan differs): it belongs to another run; copy run folders whole"
        )
    size = expected.get("image_size")
    if size is not None and size != plan.size and info.patch != size:  # patch-trained runs differ
        raise SynthmedError(
            f"{folder.run_json} is a {size} px model, but {folder.plan_json} prepares "
            f"{plan.size} px slices: the run folder mixes two runs"
        )


def check_sampling(model: SynthesisModel, sampling: Sampling) -> None:
    """Refuse sampling options a model does not have, before any volume is read."""
    options = {k: v for k, v in sampling.options.items() if v is not None}
    if sampling.samples < 1:
        raise SynthmedError(f"--samples {sampling.samples}: must be at least 1")
    if not model.stochastic:
        given = [f"--{k}" for k in options] + (["--samples"] if sampling.samples > 1 else [])
        if given:
            raise SynthmedError(
                f"{model.name} translates deterministically; {', '.join(given)} apply to diffusion models"
            )
        return
    unknown = sorted(set(options) - set(model.sampling_options))
    if unknown:
        takes = (
            f"it takes {', '.join('--' + o for o in model.sampling_options)}"
            if model.sampling_options
            else "its sampling is fixed (only --samples and --seed apply)"
        )
        raise SynthmedError(f"{model.name} has no sampling option {', '.join('--' + o for o in unknown)}; {takes}")
    try:
        model.check_sampling(**options)
    except ValueError as error:
        raise SynthmedError(f"{model.name}: {error}") from None


GPU_BATCH_SIZE = 32
CPU_BATCH_PIXELS = 256 * 256


def default_batch_size(device: torch.device, slice_shape: tuple[int, ...]) -> int:
    """Slices per forward pass when none is given: 32 on a GPU; on a CPU as many as add up to one 256 x 256 slice.

    A CPU runs the convolutions one sample after the other, so a larger batch saves nothing, and once a batch's
    feature maps outgrow the cache every layer slows down: syndiff at 256 px on one thread took 8.3 s per slice at
    batch 1 and 12.9 s at batch 4 (benchmarks/results/diffusion-inference-syndiff-batches-1thread-cpu.json)."""
    if device.type != "cpu":
        return GPU_BATCH_SIZE
    pixels = int(np.prod(slice_shape[-2:]))
    return max(1, min(GPU_BATCH_SIZE, CPU_BATCH_PIXELS // max(pixels, 1)))


def translate_slices(
    model: SynthesisModel,
    slices: np.ndarray,
    batch_size: int | None = None,
    sampling: Sampling | None = None,
    progress: bool = False,
    direction: str = "A2B",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Model outputs for normalised slices (N, H, W): the mean over samples and, for K > 1, their std.
    ``batch_size`` None: :func:`default_batch_size`."""
    sampling = sampling or Sampling()
    batch_size = batch_size or default_batch_size(model.device, slices.shape)
    translate = model.translate if direction == "A2B" else model.translate_reverse

    def forward(images: torch.Tensor, **kw) -> torch.Tensor:
        return padded_to_multiple(lambda x: translate(x, **kw), images, model.size_multiple)

    device = model.device
    options = {k: v for k, v in sampling.options.items() if v is not None}
    context = int(getattr(model.config, "context", 1)) if direction == "A2B" else 1  # reverse networks: 1 slice
    mean = np.empty_like(slices)
    std = np.empty_like(slices) if sampling.samples > 1 else None
    starts = range(0, len(slices), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc="slices", unit="chunk", leave=False, disable=not progress or len(starts) < 2):
            chunk = torch.from_numpy(stacked_context(slices, start, start + batch_size, context)).to(device)
            if not model.stochastic:
                mean[start : start + batch_size] = forward(chunk)[:, 0].float().cpu().numpy()
                continue
            generator = torch.Generator(device=device).manual_seed(sampling.seed * 1_000_003 + start)
            draws = torch.stack(
                [forward(chunk, generator=generator, **options)[:, 0].float() for _ in range(sampling.samples)]
            )
            mean[start : start + batch_size] = draws.mean(0).cpu().numpy()
            if std is not None:
                std[start : start + batch_size] = draws.std(0, correction=0).cpu().numpy()
    return mean, std


def stacked_context(slices: np.ndarray, start: int, stop: int, context: int) -> np.ndarray:
    """Model inputs (B, context, H, W) for slices ``start:stop`` of a volume's stack (N, H, W): each slice with its
    ``context // 2`` neighbours on each side in slice order, background (-1) beyond the volume's ends."""
    stop = min(stop, len(slices))
    if context == 1:
        return np.ascontiguousarray(slices[start:stop, None])
    half = context // 2
    out = np.full((stop - start, context, *slices.shape[1:]), -1.0, dtype=np.float32)
    for channel, offset in enumerate(range(-half, half + 1)):
        lo, hi = max(start + offset, 0), min(stop + offset, len(slices))
        if hi > lo:
            out[lo - start - offset : hi - start - offset, channel] = slices[lo:hi]
    return out


def translate_volume(
    loaded: LoadedRun,
    volume: Volume,
    target_normalization: Normalization | None,
    batch_size: int | None = None,
    sampling: Sampling | None = None,
    progress: bool = False,
    mask_background: bool = True,
    strict: bool = False,
) -> Translation:
    """Translate one source volume into the source's grid and the target's units.

    With ``mask_background`` (the default) every voxel outside the source's foreground, dilated by
    :data:`BACKGROUND_MARGIN` voxels, is the target's background level and its uncertainty 0. That level is
    the bottom of the target's range, what the model's -1 stands for: the 0.5th percentile of an MR volume
    (its background, also for scans z-scored with a constant background, as BraTS 2013's are) and -1000 HU
    for CT. Without it a network paints texture and a rim into the air around the head, which nobody
    should have to mask by hand.

    An input unlike the training inputs (:mod:`synthmed.data.input_profile`: a whole head for a model of
    skull-stripped brains, another spacing or contrast) gets a one-line warning naming what differs, or with
    ``strict`` an error."""
    plan, model = loaded.plan, loaded.model
    data = volume.data
    if float(data.max()) == float(data.min()):
        raise SynthmedError(f"{volume.path}: constant image (all voxels {data.min():g}); nothing to translate")
    source_kind = plan.normalization_kind[plan.source]
    # The MR background level copies the whole volume once: taken before the foreground mask exists, so that
    # the input, the mask and that copy are never in memory together.
    low = mr_low(data) if source_kind == "mr" else None
    foreground = foreground_mask(data)
    if not foreground.any():
        raise SynthmedError(f"{volume.path}: empty foreground (nothing above the background level)")
    geometry = input_geometry(plan, volume, foreground)
    normalization = fit_normalization(data, foreground, source_kind, name=str(volume.path), low=low)
    check_like_training(plan, volume, foreground, normalization, strict)
    if target_normalization is None:  # no reference: the plan's scale model, from this input's own range
        target_normalization = plan.target_scale.predict(normalization)
    outside = ~dilated(foreground, BACKGROUND_MARGIN) if mask_background else None
    del foreground
    interpolation = plan.interpolation  # as the training slices were made
    # From here on the only whole volumes are the input and the output: slabs of slices are normalised and
    # cropped into the model-sized stack, and the model outputs are pasted back slab by slab.
    slices = crop_in_slabs(data, normalization, geometry, interpolation)
    mean, std = translate_slices(model, slices, batch_size, sampling, progress=progress, direction=loaded.direction)
    del slices
    image = uncrop_in_slabs(
        mean,
        geometry,
        fill=-1.0,
        interpolation=interpolation,
        finish=lambda part: target_normalization.invert(part, in_place=True),
    )
    if outside is not None:
        image[outside] = np.float32(target_normalization.lo)
    if std is None:
        return Translation(image)
    # The normalisation is linear: a std in [-1, 1] units scales by half the intensity range.
    scale = 0.5 * (target_normalization.hi - target_normalization.lo)
    std_map = uncrop_in_slabs(
        std, geometry, fill=0.0, interpolation=interpolation, finish=lambda part: (part * scale).astype(np.float32)
    )
    if outside is not None:
        std_map[outside] = 0.0
    return Translation(image, std_map)


def input_geometry(plan: Plan, volume: Volume, foreground: np.ndarray) -> SliceGeometry:
    """How an input volume becomes model slices, as the plan made the training slices: at native resolution a
    square at the plan's pixel size just large enough for this input's foreground (the model takes whole slices of
    any size), else the foreground box resized to the plan's size."""
    axis = slice_axis(volume.affine, plan.axis, volume.is_2d)
    if not plan.resolution.native:
        return fit_geometry(foreground, axis, plan.size)
    pixel_mm, target_mm = in_plane_spacing(volume.spacing, axis), float(plan.resolution.spacing_mm)
    size = native_size(foreground_side_mm(foreground, axis, pixel_mm), target_mm)
    return fit_native_geometry(foreground, axis, size, pixel_mm, target_mm)


def check_like_training(
    plan: Plan, volume: Volume, foreground: np.ndarray, normalization: Normalization, strict: bool
) -> None:
    if plan.input_profile is None:  # plans made before the profile was recorded
        return
    found = measure_input(volume.data, foreground, volume.spacing, normalization.apply(volume.data[foreground]))
    said = input_differences(
        plan.input_profile, found, resampled_to=plan.resolution.spacing_mm if plan.resolution.native else None
    )
    if not said:
        return
    message = f"{volume.path} is unlike the scans the model was trained on: {'; '.join(said)}"
    if strict:
        raise SynthmedError(f"{message} (refused: --strict)")
    log.warning("%s; the translation may be meaningless (--strict makes this an error)", message)


# Voxels the source's foreground mask is grown by before the background is set: the mask's edge follows an
# intensity threshold, and the skin or a brain's outer CSF may lie a voxel or two outside it.
BACKGROUND_MARGIN = 2


def dilated(mask: np.ndarray, voxels: int) -> np.ndarray:
    """``mask`` grown by ``voxels`` (26-connected steps; in-plane only for a single slice)."""
    structure = np.ones((3, 3, 3) if mask.shape[2] > 1 else (3, 3, 1), dtype=bool)
    return ndimage.binary_dilation(mask, structure=structure, iterations=voxels)


# Slices per slab in crop_in_slabs / uncrop_in_slabs: each slab costs a few slab-sized float32 arrays.
SLAB_SLICES = 8


def crop_in_slabs(
    data: np.ndarray, normalization: Normalization, geometry: SliceGeometry, interpolation: str
) -> np.ndarray:
    """``crop_slices(normalization.apply(data), geometry, fill=-1.0, ...)``, the same values, without a
    normalised copy of the whole volume: normalised and cropped :data:`SLAB_SLICES` slices at a time.

    A first pass finds the range of the cropped stack (the normalised voxels inside the box, and the fill
    where the box leaves the image), which the bicubic resize of every slab clamps to, as for the whole stack.
    """
    stack = to_slices(data, geometry.axis)
    rows, cols, box_rows, box_cols = box_overlap(geometry)
    starts = range(0, len(stack), SLAB_SLICES)
    low, high = np.inf, -np.inf
    for start in starts:
        inside = normalization.apply(stack[start : start + SLAB_SLICES, rows, cols])
        low, high = min(low, float(inside.min())), max(high, float(inside.max()))
    if box_rows != slice(0, geometry.side) or box_cols != slice(0, geometry.side):  # the box leaves the image
        low, high = min(low, -1.0), max(high, -1.0)
    out = np.empty((len(stack), geometry.size, geometry.size), dtype=np.float32)
    for start in starts:
        part = normalization.apply(stack[start : start + SLAB_SLICES])
        out[start : start + SLAB_SLICES] = crop_slices(
            from_slices(part, geometry.axis), geometry, fill=-1.0, interpolation=interpolation, value_range=(low, high)
        )
    return out


def uncrop_in_slabs(
    stack: np.ndarray,
    geometry: SliceGeometry,
    fill: float,
    interpolation: str,
    finish: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """``finish(uncrop_slices(stack, geometry, fill, ...))``, the same values, written slab by slab into one
    preallocated volume (``finish`` maps voxels one by one, e.g. back to the target's units)."""
    value_range = (float(stack.min()), float(stack.max()))
    out = np.empty((len(stack), *geometry.plane_shape), dtype=np.float32)  # as uncrop_slices lays it out
    for start in range(0, len(stack), SLAB_SLICES):
        part = uncrop_slices(
            stack[start : start + SLAB_SLICES],
            geometry,
            fill=fill,
            interpolation=interpolation,
            value_range=value_range,
        )
        out[start : start + SLAB_SLICES] = finish(to_slices(part, geometry.axis))
    return from_slices(out, geometry.axis)


def _reference_normalization(loaded: LoadedRun, reference: Path | None) -> Normalization | None:
    """The output's scale: the reference's; without one the plan's target scale (None: it depends on the input,
    :func:`translate_volume` predicts it) or, for plans made before it existed and CT, the training median."""
    target = loaded.plan.target
    if reference is None:
        if loaded.plan.target_scale is not None:
            return None  # predicted from the input's own scale: see translate_volume
        return loaded.plan.reference(target)
    volume = read_volume(reference)
    kind = loaded.plan.normalization_kind.get(target) or modality_kind(target)
    low = mr_low(volume.data)
    if kind == "mr" and low <= CT_AIR_LEVEL:
        raise SynthmedError(
            f"--reference {reference} has intensities down to {low:g} (its 0.5th percentile), as a CT "
            f"in Hounsfield units has; the output {target} is an MR image: give a {target} scan as "
            "--reference"
        )
    if kind == "ct":
        if low > CT_AIR_LEVEL:
            log.warning(
                "--reference %s does not look like a CT in Hounsfield units (0.5th percentile %g, no air "
                "near -1000); a CT output needs no reference (its HU window is fixed) and ignores it",
                reference,
                low,
            )
        return loaded.plan.reference(target)
    return fit_normalization(volume.data, foreground_mask(volume.data), kind, name=str(reference), low=low)


def plan_outputs(
    loaded: LoadedRun, input_path: Path, output: Path, reference: Path | None, name: str | None = None
) -> list[tuple[Path, Path, Path | None]]:
    """(input, output, reference) triples for a file or a folder input; in subject folders the output is named
    ``name`` (default: the target modality as the training files spell it)."""
    if not input_path.exists() and not any(c in str(input_path) for c in "*?["):
        raise SynthmedError(f"{input_path}: no such file or folder")
    if input_path.is_file() or not input_path.is_dir() or is_volume_path(input_path) and not _has_subjects(input_path):
        if output.is_dir():
            raise SynthmedError(f"{output} is a folder; for a single input give an output file name like out.nii.gz")
        return [(input_path, output, reference)]
    jobs = []
    source = loaded.plan.source
    aliases = loaded.plan.aliases
    for entry in sorted(input_path.iterdir()):
        if entry.is_dir():
            files = [
                f
                for f in sorted(entry.iterdir())
                if volume_suffix(f) and file_modality(f, entry.name, aliases) == source
            ]
            if not files:
                log.warning("%s: no %s scan in this subject folder; skipped", entry, source)
                continue
            in_file = files[0]
            suffix = output_suffix(in_file)
            out_file = output / entry.name / f"{name or _target_name(loaded)}{suffix}"
            ref = None
            if reference is not None:
                matches = (
                    [
                        f
                        for f in sorted((reference / entry.name).glob("*"))
                        if volume_suffix(f) and file_modality(f, entry.name, aliases) == loaded.plan.target
                    ]
                    if (reference / entry.name).is_dir()
                    else []
                )
                ref = matches[0] if matches else None
                if ref is None:
                    raise SynthmedError(f"reference folder {reference / entry.name} has no {loaded.plan.target} scan")
            jobs.append((in_file, out_file, ref))
        elif volume_suffix(entry):
            out_file = output / (entry.name[: -len(volume_suffix(entry))] + output_suffix(entry))
            ref = None
            if reference is not None:
                ref = reference / entry.name if reference.is_dir() else reference
                if not ref.exists():
                    raise SynthmedError(f"no reference {ref} for {entry}")
            jobs.append((entry, out_file, ref))
    if not jobs:
        raise SynthmedError(
            f"{input_path}: no volumes found (neither image files nor subject folders with a {source} scan)"
        )
    return jobs


def _has_subjects(folder: Path) -> bool:
    return any(p.is_dir() for p in folder.iterdir())


def _target_name(loaded: LoadedRun) -> str:
    """The user's own spelling of the target modality (e.g. 'T2', 't2w', 'T2SPACE'), from the files it was trained on."""
    target, aliases = loaded.plan.target, loaded.plan.aliases
    for subject, record in loaded.plan.volumes.items():
        path = record.files.get(target)
        if path and file_modality(path, subject, aliases) == target:
            name = Path(path).name
            return strip_subject_prefix(name[: -len(volume_suffix(Path(name)))], subject)
    return target


def translate(
    run: str | Path,
    input_path: str | Path,
    output: str | Path,
    *,
    reference: str | Path | None = None,
    overwrite: bool = False,
    batch_size: int | None = None,
    device: str = "auto",
    checkpoint: str = "best",
    channel: int | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    eta: float | None = None,
    samples: int = 1,
    seed: int = 0,
    direction: str = "A2B",
    amp: str = "off",
    compile: bool = False,
    mask_background: bool = True,
    strict: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Translate a file or a folder; returns the written paths (with ``*_std`` maps when
    ``samples > 1``). Refuses to overwrite unless asked. ``mask_background``, ``strict``: see
    :func:`translate_volume`; ``compile``: see :func:`prepare_for_inference`."""
    loaded = load_run(run, device=device, checkpoint=checkpoint, direction=direction, amp=amp)
    if batch_size is not None and batch_size < 1:
        raise SynthmedError(f"--batch-size {batch_size}: must be at least 1")
    if loaded.model.task != "translate":
        raise SynthmedError(f"{run} holds a {loaded.info.model} generator; use `synthmed generate`")
    prepare_for_inference(loaded.model, compile=compile)
    sampling = Sampling({"sampler": sampler, "steps": steps, "eta": eta}, samples=samples, seed=seed)
    check_sampling(loaded.model, sampling)
    jobs = plan_outputs(loaded, Path(input_path), Path(output), Path(reference) if reference else None)
    if samples > 1:
        jobs = [(in_file, (out_file, std_path(out_file)), ref) for in_file, out_file, ref in jobs]
    else:
        jobs = [(in_file, (out_file,), ref) for in_file, out_file, ref in jobs]
    output = Path(output)
    folder_mode = jobs[0][1][0] != output  # a folder of inputs: outputs go below OUTPUT
    with output_lock(output):
        check_outputs(jobs, Path(input_path), output, Path(reference) if reference else None, overwrite, folder_mode)
        for folder in sorted({outs[0].parent for _, outs, _ in jobs}):
            ensure_writable_folder(folder)
            remove_stale_temporaries(folder)  # partial outputs of a translation that was killed

        def process(volume: Volume, ref: Path | None) -> tuple[np.ndarray, ...]:
            result = translate_volume(
                loaded,
                volume,
                _reference_normalization(loaded, ref),
                batch_size=batch_size,
                sampling=sampling,
                progress=progress,
                mask_background=mask_background,
                strict=strict,
            )
            return result.image, result.std

        written = run_jobs(jobs, process, channel, overwrite, progress, marker_folder=output if folder_mode else None)
        if not folder_mode:
            record_written(written, "translate")
        return written


def check_outputs(
    jobs: list,
    input_path: Path,
    output: Path,
    reference: Path | None,
    overwrite: bool,
    folder_mode: bool,
    command: str = "translate",
) -> None:
    """Refuse outputs that would destroy data: an output on (or around, or inside) an input or a reference, an
    existing output without ``overwrite``, and in folder mode any existing file synthmed did not write (a
    subject folder holding other scans means OUTPUT is somebody's data folder)."""
    refuse_overlap(output, [input_path, reference], what="output")
    sources = [path for in_file, _, ref in jobs for path in (in_file, ref) if path is not None]
    for _, outs, _ in jobs:
        for out in outs:
            for source in sources:
                if same_file(out, source):
                    raise SynthmedError(
                        f"output {out} is the input {source}; writing it would destroy the input: choose another output"
                    )
    existing = [out for _, outs, _ in jobs for out in outs if out.exists() or out.is_symlink()]
    if existing and not overwrite:
        raise SynthmedError(
            f"{existing[0]} exists ({len(existing)} output(s) would be replaced); pass --overwrite to replace"
        )
    if not folder_mode:
        refuse_replacing_foreign(existing, command)  # e.g. the real T2 beside the T1 being translated
        return
    marker = read_marker(output)
    ours = set(marker["written"]) if marker and marker["command"] == command else set()
    for out in existing:
        if str(out.relative_to(output)) not in ours:
            raise SynthmedError(
                f"{out} exists and was not written by synthmed {command}; --overwrite replaces only "
                f"synthmed's own outputs: move it away or write into a new folder"
            )
    for folder in sorted({outs[0].parent for _, outs, _ in jobs} - {output}):
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if volume_suffix(entry) and not entry.name.startswith(".") and str(entry.relative_to(output)) not in ours:
                raise SynthmedError(
                    f"{folder} holds {entry.name}, a scan synthmed {command} did not write: {output} "
                    "looks like a data folder; write into a new folder"
                )


def run_jobs(
    jobs: list,
    process: Callable[[Volume, Path | None], tuple[np.ndarray | None, ...]],
    channel: int | None,
    overwrite: bool,
    progress: bool,
    marker_folder: Path | None,
    command: str = "translate",
) -> list[Path]:
    """Read each job's input, ``process`` it (with its reference) into one array per output file, and write them
    in the input's geometry."""
    # Each result goes to a hidden partial file beside its destination; all are renamed at the end,
    # so a failure on the fifth volume leaves no output of the first four behind.
    partials: list[tuple[Path, Path]] = []
    written: list[Path] = []
    try:
        for in_file, outs, ref in tqdm(jobs, desc=command, unit="volume", disable=not progress or len(jobs) < 2):
            volume = read_volume(in_file, channel=channel)
            for out_file, data in zip(outs, process(volume, ref)):
                if (
                    volume_suffix(out_file) == ".mhd"
                ):  # header + .raw pair: its name is inside the header, write in place
                    written.append(write_volume(out_file, data, like=volume, overwrite=overwrite))
                    continue
                partial = temporary_path(out_file, "partial")
                partials.append((write_volume(partial, data, like=volume, overwrite=True), out_file))
        if marker_folder is not None:  # before the renames: what it lists is synthmed's to replace, even after a crash
            write_marker(
                marker_folder, command, [str(out.relative_to(marker_folder)) for _, outs, _ in jobs for out in outs]
            )
        for partial, out_file in partials:
            if out_file.is_dir():
                raise SynthmedError(f"{out_file} is a folder; cannot replace it with a volume")
            partial.replace(out_file)
            written.append(out_file)
    except BaseException:
        for partial, _ in partials:
            partial.unlink(missing_ok=True)
        raise
    return written


def std_path(output: Path) -> Path:
    """Where the uncertainty map of ``output`` goes: ``T2.nii.gz`` -> ``T2_std.nii.gz``."""
    suffix = volume_suffix(output) or ""
    return output.with_name(f"{output.name[: len(output.name) - len(suffix)]}_std{suffix}")
