"""``synthmed anomaly RUN INPUT OUTPUT``: anomaly maps of whole scans from a diffusion model of healthy anatomy.

Each slice of the input (normalised and cut as the run's training slices were, at its native resolution or
resized) is noised to a partial step and reconstructed by the model (:meth:`AnoDDPM.reconstruct`); the anomaly
map is the smoothed absolute difference, averaged over ``samples`` reconstructions. Both the map and the
reconstruction are written in the input's geometry: the map (``OUTPUT``) in the input's intensity units, 0 outside
the head, and the reconstruction beside it (``<name>_recon<suffix>``), the input's own voxels outside the head.
A folder of subject folders gives ``OUTPUT/<subject>/anomaly<suffix>`` and its reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from synthmed.data.foreground import foreground_mask
from synthmed.data.io import Volume, ensure_writable_folder, volume_suffix
from synthmed.data.normalize import fit_normalization, mr_low
from synthmed.errors import SynthmedError
from synthmed.files import output_lock, record_written, remove_stale_temporaries
from synthmed.nn.patches import padded_to_multiple
from synthmed.workflows.translate import (
    BACKGROUND_MARGIN,
    LoadedRun,
    check_like_training,
    check_outputs,
    crop_in_slabs,
    dilated,
    input_geometry,
    load_run,
    plan_outputs,
    run_jobs,
    uncrop_in_slabs,
)

COMMAND = "anomaly"


@dataclass(frozen=True)
class Detection:
    """How the slices are reconstructed (None: the run's setting)."""

    t_star: int | None = None
    noise: str | None = None
    method: str | None = None
    steps: int | None = None
    samples: int = 1
    seed: int = 0

    def options(self) -> dict:
        chosen = {"t_star": self.t_star, "noise": self.noise, "method": self.method, "steps": self.steps}
        return {key: value for key, value in chosen.items() if value is not None}


def recon_path(output: Path) -> Path:
    """Where the reconstruction of ``output`` goes: ``map.nii.gz`` -> ``map_recon.nii.gz``."""
    suffix = volume_suffix(output) or ""
    return output.with_name(f"{output.name[: len(output.name) - len(suffix)]}_recon{suffix}")


def detect_slices(
    loaded: LoadedRun, slices: np.ndarray, detection: Detection, batch_size: int, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly maps, reconstructions) of normalised slices (N, H, W), in the model's [-1, 1] units."""
    model = loaded.model
    maps, reconstructions = np.empty_like(slices), np.empty_like(slices)
    starts = range(0, len(slices), batch_size)
    for start in tqdm(starts, desc="slices", unit="chunk", leave=False, disable=not progress or len(starts) < 2):
        chunk = torch.from_numpy(slices[start : start + batch_size][:, None]).to(model.device)
        generator = torch.Generator().manual_seed(detection.seed * 1_000_003 + start)

        def both(x: torch.Tensor) -> torch.Tensor:
            anomaly, reconstruction = model.anomaly_map(
                x, samples=detection.samples, generator=generator, **detection.options()
            )
            return torch.cat([anomaly, reconstruction], dim=1)

        # pad with the background for networks that need sides divisible by their multiple
        out = padded_to_multiple(both, chunk, model.size_multiple).float().cpu().numpy()
        maps[start : start + batch_size] = out[:, 0]
        reconstructions[start : start + batch_size] = out[:, 1]
    return maps, reconstructions


def detect_volume(
    loaded: LoadedRun, volume: Volume, detection: Detection, batch_size: int = 16, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly map, reconstruction) of one volume, both in its grid and intensity units."""
    plan, data = loaded.plan, volume.data
    if float(data.max()) == float(data.min()):
        raise SynthmedError(f"{volume.path}: constant image (all voxels {data.min():g}); nothing to detect")
    kind = plan.normalization_kind[plan.source]
    low = mr_low(data) if kind == "mr" else None
    foreground = foreground_mask(data)
    if not foreground.any():
        raise SynthmedError(f"{volume.path}: empty foreground (nothing above the background level)")
    geometry = input_geometry(plan, volume, foreground)
    normalization = fit_normalization(data, foreground, kind, name=str(volume.path), low=low)
    check_like_training(plan, volume, foreground, normalization, strict=False)
    outside = ~dilated(foreground, BACKGROUND_MARGIN)
    del foreground
    slices = crop_in_slabs(data, normalization, geometry, plan.interpolation)
    maps, reconstructions = detect_slices(loaded, slices, detection, batch_size, progress)
    del slices
    # the normalisation is linear: a difference in [-1, 1] units scales by half the intensity range
    scale = 0.5 * (normalization.hi - normalization.lo)
    anomaly = uncrop_in_slabs(
        maps, geometry, fill=0.0, interpolation=plan.interpolation, finish=lambda p: (p * scale).astype(np.float32)
    )
    np.clip(anomaly, 0, None, out=anomaly)  # an interpolated map may dip below zero
    anomaly[outside] = 0.0
    reconstruction = uncrop_in_slabs(
        reconstructions,
        geometry,
        fill=-1.0,
        interpolation=plan.interpolation,
        finish=lambda p: normalization.invert(p, in_place=True),
    )
    reconstruction[outside] = data[outside]
    return anomaly, reconstruction


def anomaly(
    run: str | Path,
    input_path: str | Path,
    output: str | Path,
    *,
    t_star: int | None = None,
    noise: str | None = None,
    method: str | None = None,
    steps: int | None = None,
    samples: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    device: str = "auto",
    checkpoint: str = "best",
    channel: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Anomaly maps (and reconstructions) of a file or a folder; returns the written paths."""
    loaded = load_run(run, device=device, checkpoint=checkpoint)
    if not getattr(loaded.model, "detects_anomalies", False):
        raise SynthmedError(
            f"{run} holds a {loaded.info.model} model; anomaly maps need one that reconstructs "
            "healthy anatomy (train --model anoddpm)"
        )
    if batch_size < 1 or samples < 1:
        raise SynthmedError("--batch-size and --samples must be at least 1")
    detection = Detection(t_star=t_star, noise=noise, method=method, steps=steps, samples=samples, seed=seed)
    try:  # the settings, checked before any volume is read
        loaded.model.check_detection(**detection.options())
    except ValueError as error:
        raise SynthmedError(str(error)) from None
    jobs = plan_outputs(loaded, Path(input_path), Path(output), None, name=COMMAND)
    jobs = [(in_file, (out_file, recon_path(out_file)), None) for in_file, out_file, _ in jobs]
    output = Path(output)
    folder_mode = jobs[0][1][0] != output
    with output_lock(output):
        check_outputs(jobs, Path(input_path), output, None, overwrite, folder_mode, command=COMMAND)
        for folder in sorted({outs[0].parent for _, outs, _ in jobs}):
            ensure_writable_folder(folder)
            remove_stale_temporaries(folder)

        def process(volume: Volume, _reference) -> tuple[np.ndarray, np.ndarray]:
            return detect_volume(loaded, volume, detection, batch_size=batch_size, progress=progress)

        written = run_jobs(
            jobs, process, channel, overwrite, progress, marker_folder=output if folder_mode else None, command=COMMAND
        )
        if not folder_mode:
            record_written(written, COMMAND)
        return written
