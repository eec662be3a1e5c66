"""``synthmed reconstruct METHOD INPUT OUTPUT``: images from undersampled MRI k-space.

``METHOD`` is a run folder of a diffusion prior (``train --model score-mri``: reconstruction by its sampler with data
consistency at every step, :mod:`synthmed.models.score_mri`), or one of the baselines ``zero-filled`` (the inverse
FFT of the k-space with zeros where nothing was acquired) and ``cs`` (total-variation compressed sensing,
:mod:`synthmed.mri.cs`).

``INPUT`` is either

- a magnitude image (NIfTI 2D/3D, PNG, anything synthmed reads): its k-space is undersampled retrospectively with
  ``--mask`` at ``--accel`` (every slice of a volume with the same mask, along ``--axis``), optionally with a smooth
  synthetic phase (``--phase``), and the printed PSNR/SSIM compare the reconstruction with the input; or
- raw k-space: ``.npy`` complex ``(H, W)`` or ``(coils, H, W)``, ``.h5`` (a dataset ``kspace``, fastMRI's
  ``(slices, coils, H, W)`` or ``(slices, H, W)``), or BART ``.cfl``/``.hdr`` (``(1, H, W, coils)``). Fully sampled
  k-space is undersampled retrospectively like an image; k-space that is already undersampled is reconstructed as
  acquired with ``--mask measured``. Several coils: sensitivities from the fully sampled centre
  (:func:`synthmed.mri.coils.estimate_sensitivities`).

``OUTPUT`` gets the magnitude in the input's geometry (a volume for a volume; for k-space a NIfTI or PNG by its
suffix), and with ``--samples K`` (diffusion) the per-pixel standard deviation over the K reconstructions beside it
(``OUTPUT_std``): the posterior uncertainty.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from synthmed.data.foreground import foreground_mask
from synthmed.data.io import Volume, read_volume, volume_suffix, write_volume
from synthmed.errors import SynthmedError
from synthmed.files import output_lock, record_written, refuse_replacing_foreign, same_file
from synthmed.metrics.image import nmse, psnr, ssim
from synthmed.models.score_mri import Acquisition
from synthmed.mri.bart import read_cfl
from synthmed.mri.coils import estimate_sensitivities, sense_combine
from synthmed.mri.cs import cs_reconstruction
from synthmed.mri.fourier import fft2c, ifft2c
from synthmed.mri.masks import KINDS, achieved_acceleration, undersampling_mask
from synthmed.mri.undersample import synthetic_phase
from synthmed.workflows.translate import load_run

log = logging.getLogger(__name__)

COMMAND = "reconstruct"
BASELINES = ("zero-filled", "cs")
MASKS = (*KINDS, "measured")
KSPACE_SUFFIXES = (".npy", ".h5", ".cfl", ".hdr")
FULLY_SAMPLED = 0.95  # k-space with at least this fraction of non-zero samples counts as fully sampled


@dataclass
class Slices:
    """The acquisitions of one input, and what to compare with and write like."""

    acquisitions: list[Acquisition]
    references: list[np.ndarray] | None  # fully sampled magnitudes, when known
    like: Volume | None = None  # the input image's geometry (images only)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Sampling:
    mask: str = "random"
    acceleration: float = 4.0
    center: float = 0.08
    seed: int = 0
    phase: bool = False


def is_kspace_path(path: Path) -> bool:
    return path.suffix.lower() in KSPACE_SUFFIXES


def read_kspace(path: Path) -> np.ndarray:
    """Complex k-space as ``(slices, coils, H, W)`` from ``.npy``, ``.h5`` (dataset ``kspace``) or BART."""
    suffix = path.suffix.lower()
    if suffix in (".cfl", ".hdr"):
        data = read_cfl(path, squeeze="none")
        # BART's axes: 0 readout, 1 and 2 phase encoding, 3 coils, the rest maps, echoes, time, ...
        planar = [axis for axis in range(3) if data.shape[axis] != 1]
        if len(planar) != 2 or any(size != 1 for size in data.shape[4:]):
            raise SynthmedError(
                f"{path}: BART array of dimensions {' x '.join(map(str, data.shape[:6]))} ...; expected one 2D "
                "acquisition (two of the first three dimensions, coils in the fourth)"
            )
        kspace = data.reshape(data.shape[:4]).squeeze(axis=tuple(a for a in range(3) if a not in planar))
        return np.moveaxis(kspace, -1, 0)[None]
    if suffix == ".npy":
        data = np.load(path, allow_pickle=False)
    else:
        import h5py

        with h5py.File(path, "r") as file:
            if "kspace" not in file:
                raise SynthmedError(f"{path}: no dataset 'kspace' (have {', '.join(file.keys())})")
            data = file["kspace"][()]
    if not np.iscomplexobj(data):
        raise SynthmedError(f"{path}: k-space must be complex; got {data.dtype}")
    if data.ndim == 2:  # (H, W)
        return data[None, None]
    if data.ndim == 3:  # .npy: (coils, H, W); fastMRI single-coil .h5: (slices, H, W)
        return data[:, None] if suffix == ".h5" else data[None]
    if data.ndim == 4:  # (slices, coils, H, W)
        return data
    raise SynthmedError(
        f"{path}: k-space of shape {data.shape}; expected (H, W), (coils, H, W) or (slices, coils, H, W)"
    )


def _mask_for(kspace: torch.Tensor, sampling: Sampling, name: str) -> tuple[torch.Tensor, bool]:
    """(the sampling mask, whether it was simulated) for k-space ``(coils, H, W)``."""
    acquired = kspace.abs().sum(dim=0) > 0
    fraction = float(acquired.float().mean())
    if sampling.mask == "measured":
        return acquired, False
    if fraction < FULLY_SAMPLED:
        raise SynthmedError(
            f"{name}: the k-space is already undersampled ({100 * fraction:.1f}% of the samples are non-zero); "
            "pass --mask measured to reconstruct it as acquired"
        )
    mask = undersampling_mask(
        tuple(acquired.shape), sampling.mask, sampling.acceleration, center=sampling.center, seed=sampling.seed
    )
    return mask, True


def load_slices(path: Path, sampling: Sampling) -> Slices:
    """The acquisitions to reconstruct from an image (simulated) or a k-space file."""
    if is_kspace_path(path):
        data = torch.from_numpy(read_kspace(path).astype(np.complex64))
        acquisitions, references, notes = [], [], []
        for kspace in data:
            mask, simulated = _mask_for(kspace, sampling, str(path))
            sens = estimate_sensitivities(kspace, mask) if kspace.shape[0] > 1 else None
            measured = kspace * mask
            acquisitions.append(Acquisition(measured if sens is not None else measured[0], mask, sens))
            if simulated:  # the fully sampled k-space is the reference, combined as the reconstruction is
                full = ifft2c(kspace)
                references.append((sense_combine(full, sens) if sens is not None else full[0]).abs().numpy())
        notes.append(f"acceleration {achieved_acceleration(acquisitions[0].mask):.2f}")
        return Slices(acquisitions, references or None, None, notes)
    volume = read_volume(path)
    magnitude = np.abs(volume.data.astype(np.float32))
    shape = magnitude.shape[:2]
    if min(shape) < 8:
        raise SynthmedError(f"{path}: slices of {shape[0]} x {shape[1]} are too small to reconstruct")
    if sampling.mask == "measured":
        raise SynthmedError("--mask measured is for k-space inputs; an image needs random, equispaced or poisson")
    mask = undersampling_mask(shape, sampling.mask, sampling.acceleration, center=sampling.center, seed=sampling.seed)
    phase = synthetic_phase(shape, seed=sampling.seed) if sampling.phase else None
    acquisitions, references = [], []
    for z in range(magnitude.shape[2]):
        image = torch.from_numpy(magnitude[:, :, z]).to(torch.complex64)
        if phase is not None:
            image = image * phase
        acquisitions.append(Acquisition(fft2c(image) * mask, mask))
        references.append(magnitude[:, :, z])
    notes = [f"acceleration {achieved_acceleration(mask):.2f} ({sampling.mask}, centre {sampling.center:g})"]
    return Slices(acquisitions, references, volume, notes)


def std_path(output: Path) -> Path:
    suffix = volume_suffix(output) or output.suffix
    return output.with_name(f"{output.name[: len(output.name) - len(suffix)]}_std{suffix}")


def reconstruct(
    method: str | Path,
    input_path: str | Path,
    output: str | Path,
    *,
    sampling: Sampling = Sampling(),
    sampler: str | None = None,
    steps: int | None = None,
    samples: int = 1,
    dc_weight: float | None = None,
    iterations: int = 200,
    seed: int = 0,
    device: str = "auto",
    checkpoint: str = "best",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Reconstruct ``input_path`` into ``output`` (see the module docstring); returns what was done and, where the
    fully sampled image is known, PSNR/SSIM/NMSE against it."""
    input_path, output = Path(input_path), Path(output)
    if not input_path.exists():
        raise SynthmedError(f"{input_path}: no such file")
    if sampling.mask not in MASKS:
        raise SynthmedError(f"--mask {sampling.mask}: use one of {', '.join(MASKS)}")
    if samples < 1:
        raise SynthmedError("--samples must be at least 1")
    model = None
    if str(method) not in BASELINES:
        if not Path(method).is_dir():
            raise SynthmedError(f"{method}: neither a run folder nor a baseline ({', '.join(BASELINES)})")
        model = load_run(method, device=device, checkpoint=checkpoint).model
        if not getattr(model, "reconstructs_kspace", False):
            raise SynthmedError(f"{method} holds a {model.name} model; reconstruction needs train --model score-mri")
        try:
            model.check_sampling(sampler, steps, None)
        except ValueError as error:
            raise SynthmedError(str(error)) from None
    elif samples > 1:
        raise SynthmedError(f"--samples is for diffusion priors; {method} is deterministic")
    if not volume_suffix(output):
        raise SynthmedError(f"{output}: give an image file name (.nii.gz, .png, ...)")
    outputs = [output] + ([std_path(output)] if samples > 1 else [])
    for path in outputs:
        if same_file(path, input_path) or (
            is_kspace_path(input_path) and same_file(path, input_path.with_suffix(".cfl"))
        ):
            raise SynthmedError(f"{path} is the input; choose another output (--overwrite never replaces an input)")
    with output_lock(output):
        for path in outputs:
            if path.exists() and not overwrite:
                raise SynthmedError(f"{path} exists; pass --overwrite to replace it")
        refuse_replacing_foreign([p for p in outputs if p.exists() or p.is_symlink()], COMMAND)
        slices = load_slices(input_path, sampling)
        means, stds = [], []
        generator = torch.Generator().manual_seed(seed)
        for acquisition in tqdm(
            slices.acquisitions, desc="slices", unit="slice", disable=not progress or len(slices.acquisitions) < 2
        ):
            if model is None and str(method) == "zero-filled":
                images = acquisition.adjoint().abs()[None]
            elif model is None:
                images = cs_reconstruction(
                    acquisition.kspace, acquisition.mask, acquisition.sens, iterations=iterations
                ).abs()[None]
            else:
                images = (
                    model.reconstruct(
                        acquisition,
                        sampler=sampler,
                        steps=steps,
                        samples=samples,
                        dc_weight=dc_weight,
                        generator=generator,
                    )
                    .abs()
                    .cpu()
                )
            means.append(images.mean(0).numpy())
            stds.append(images.std(0, unbiased=False).numpy())
        mean, std = np.stack(means, axis=-1), np.stack(stds, axis=-1)
        if volume_suffix(output) == ".png":
            # PNG holds whole numbers: 8-bit where the input was, else 16-bit
            top = 255 if slices.like is not None and float(slices.like.data.max()) <= 255 else 65535
            mean, std = (np.clip(np.rint(a), 0, top) for a in (mean, std))
        written = [write_volume(output, mean, like=slices.like, overwrite=overwrite)]
        if samples > 1:
            written.append(write_volume(outputs[1], std, like=slices.like, overwrite=overwrite))
        record_written(written, COMMAND)
    result = {"method": str(method), "slices": len(means), "notes": slices.notes, "written": [str(p) for p in written]}
    if slices.references is not None:
        reference = np.stack(slices.references, axis=-1)
        peak = float(reference.max() - reference.min())
        head = foreground_mask(reference)
        # over the whole image (the fastMRI convention) and inside the head, where the diagnosis is
        result["metrics"] = {
            "psnr": psnr(mean, reference, data_range=peak),
            "ssim": ssim(mean, reference, data_range=peak),
            "nmse": nmse(mean, reference),
            "psnr_head": psnr(mean, reference, head, data_range=peak),
            "ssim_head": ssim(mean, reference, head, data_range=peak),
            "nmse_head": nmse(mean, reference, head),
        }
    return result
