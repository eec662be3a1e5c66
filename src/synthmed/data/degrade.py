"""Degraded copies of clean scans, for paired restoration data (``synthmed degrade``).

MedGAN (Armanious et al.) was shown on MR motion-artefact correction and PET denoising
besides PET -> CT. Those tasks need pairs *degraded -> clean* of one scan; this module
makes the degraded half from the clean one, keeping its geometry, so that ``prepare`` can
pair the two like any two co-registered modalities.

Kinds and what ``severity`` s (0 < s <= 3) means:

``motion`` (MR, k-space)
    Rigid in-plane motion between the shots of a segmented acquisition. The phase-encode
    lines of each slice's k-space are split into :data:`MOTION_SEGMENTS` contiguous
    segments (shots). ``round(s/3 * (segments - 1))`` of the segments (at least one) are
    acquired with the head moved: a translation of up to ``3 s`` px in a random in-plane
    direction (a linear phase ramp on those k-space lines) and a rotation of up to
    ``3 s`` degrees (the image is rotated before those lines are taken). So severity 1
    moves a third of the segments by up to 3 px / 3 degrees; severity 3 moves every
    segment by up to 9 px / 9 degrees. The segment holding the centre of k-space is never
    moved: it fixes the image position, so the degraded scan stays registered with the
    clean one (a pair for supervised training must be aligned).

    Per 2D slice, with one motion trajectory for the whole volume. Why 2D and shared: in
    a 2D multi-slice acquisition (the usual clinical T1/T2/FLAIR) each repetition time
    acquires the same k-space segment of every slice, so a movement at one moment
    corrupts the same segments of all slices; the ghosts it makes run along the in-plane
    phase-encode axis, which is what a slice-wise model sees. A 3D k-space version would
    model 3D acquisitions (MPRAGE) but needs through-plane interpolation on anisotropic
    volumes, and through-plane motion is not modelled here. Slices are taken along
    ``axis`` (default axial, as in ``prepare``); the phase-encode axis is the first of the
    two in-plane voxel axes (left-right for an axial RAS volume, the usual choice for
    axial brain scans). The output is the magnitude of the inverse FFT; an image with
    negative values (CT, z-scored MR) keeps its sign: the real part is taken instead.

``noise`` (MR, Rician)
    ``sqrt((x + n1)^2 + n2^2)`` with Gaussian ``n1``, ``n2`` of standard deviation
    ``sigma = s * 0.03 * reference``, where ``reference`` is the 99th percentile of the
    foreground measured from the background level (the 1st percentile of the volume when
    that is negative, else 0). Images with negative values are not magnitude images: they
    get Gaussian noise ``x + n1`` of the same sigma, so their sign is not folded.

``lowdose`` (PET-like, Poisson)
    The image is read as an expected count rate: at severity s the ``reference`` intensity
    (the foreground's 99th percentile) corresponds to ``1000 * 4^-s`` expected counts (a dose
    fraction of 4^-s of a 1000-count reference scan). Counts are drawn from a Poisson
    distribution and scaled back to the original units, so the mean is preserved and the
    variance, ``x * reference / counts``, grows by 4 per severity unit. Only for non-negative
    images: a volume with negative values is refused.

Randomness: one ``numpy.random.Generator`` per volume, seeded by ``seed`` (a single file) or
by ``(seed, crc32(subject id))`` (a folder, so each subject moves differently and adding a
subject changes no other). The draws do not depend on ``severity``: with the same seed a
higher severity moves a superset of the segments further, scales the same noise up
(``noise``), or lowers the count level (``lowdose``).

Folders: ``IN/<subject>/<NAME>.nii.gz`` -> ``OUT/<subject>/<NAME>_<kind>.nii.gz`` plus, beside it,
a symbolic link to the clean scan under its own file name (a copy where links are not
possible), so ``synthmed prepare OUT --source NAME_<kind> --target NAME`` pairs them with the
default one-folder-per-subject discovery. ``OUT/degrade-NAME_<kind>.json`` records the options and the
drawn parameters per subject.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.fft
from scipy import ndimage
from tqdm.auto import tqdm

from synthmed.data.discovery import canonical_modality, file_modality, parse_aliases
from synthmed.data.foreground import foreground_mask
from synthmed.data.geometry import slice_axis
from synthmed.data.io import (
    Volume,
    ensure_writable_folder,
    is_volume_path,
    output_suffix,
    read_volume,
    volume_suffix,
    write_volume,
)
from synthmed.errors import SynthmedError
from synthmed.files import (
    json_text,
    output_lock,
    record_written,
    refuse_replacing_foreign,
    remove_stale_temporaries,
    temporary_path,
    write_text_atomic,
    written_by_synthmed,
)

log = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "MAX_SEVERITY",
    "SegmentMotion",
    "add_lowdose_noise",
    "add_motion",
    "add_rician_noise",
    "degrade",
    "degrade_array",
    "motion_kspace",
    "plan_motion",
    "reference_intensity",
]

KINDS = ("motion", "noise", "lowdose")
MAX_SEVERITY = 3.0
MOTION_SEGMENTS = 12  # shots per slice (fewer when a slice has fewer phase-encode lines)
MOTION_PX_PER_SEVERITY = 3.0  # largest translation, px, per severity unit
MOTION_DEG_PER_SEVERITY = 3.0  # largest rotation, degrees, per severity unit
NOISE_FRACTION_PER_SEVERITY = 0.03  # Rician sigma / reference intensity, per severity unit
LOWDOSE_REFERENCE_COUNTS = 1000.0  # expected counts at the reference intensity, before the dose fraction
LOWDOSE_BASE = 4.0  # dose fraction = LOWDOSE_BASE ** -severity


# --------------------------------------------------------------------------- checks


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise SynthmedError(f"--kind {kind!r}: unknown degradation; use one of {', '.join(KINDS)}")
    return kind


def check_severity(severity: float) -> float:
    try:
        value = float(severity)
    except (TypeError, ValueError):
        raise SynthmedError(f"--severity {severity!r}: not a number; use a value in (0, {MAX_SEVERITY:g}]") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_SEVERITY:
        raise SynthmedError(f"--severity {severity}: must be in (0, {MAX_SEVERITY:g}] (1 = moderate, 3 = severe)")
    return value


def reference_intensity(volume: np.ndarray) -> float:
    """A robust bright level of the scan: the foreground's 99th percentile above the background.

    The background level is the volume's 1st percentile when that is negative (CT air at
    -1000 HU), else 0 (MR and PET backgrounds). Noise levels are fractions of this.
    """
    data = np.asarray(volume)
    foreground = foreground_mask(data)
    if not foreground.any():
        raise SynthmedError("the image has no foreground (constant or empty); nothing to scale the noise to")
    background = min(0.0, float(np.percentile(data, 1.0)))
    reference = float(np.percentile(data[foreground], 99.0)) - background
    if not reference > 0:
        raise SynthmedError("the image's foreground is not brighter than its background; nothing to scale the noise to")
    return reference


# --------------------------------------------------------------------------- motion


@dataclass(frozen=True)
class SegmentMotion:
    """Where the head was while one segment (shot) of k-space lines was acquired."""

    segment: int  # index into the segment list
    shift: tuple[float, float]  # px along (phase-encode, readout)
    angle: float  # degrees, in-plane


def phase_segments(n_lines: int, n_segments: int = MOTION_SEGMENTS) -> list[np.ndarray]:
    """Groups of phase-encode line indices, contiguous in k-space (from -k_max to +k_max).

    Indices are in the FFT's own order (DC at index 0, as ``scipy.fft.fft`` returns them), so a
    segment around the centre of k-space wraps around index 0.
    """
    centred = np.array_split(np.arange(n_lines), min(n_segments, n_lines))
    return [(c - n_lines // 2) % n_lines for c in centred]  # the inverse of fftshift's reordering


def plan_motion(
    n_lines: int, severity: float, rng: np.random.Generator, n_segments: int = MOTION_SEGMENTS
) -> tuple[list[np.ndarray], list[SegmentMotion]]:
    """Segments of ``n_lines`` phase-encode lines and the motion of the corrupted ones.

    The same draws are made whatever the severity (segment order, direction, unit
    amplitudes), so with one generator state a higher severity corrupts a superset of the
    segments with proportionally larger motions.
    """
    severity = check_severity(severity)
    segments = phase_segments(n_lines, n_segments)
    centre = next(j for j, s in enumerate(segments) if 0 in s)  # the segment holding DC
    candidates = [j for j in range(len(segments)) if j != centre]
    if not candidates:
        raise SynthmedError(f"motion needs at least 2 phase-encode lines per slice, the slices have {n_lines}")
    order = rng.permutation(len(candidates))
    radius = rng.uniform(0.0, 1.0, len(segments))
    direction = rng.uniform(0.0, 2 * math.pi, len(segments))
    turn = rng.uniform(-1.0, 1.0, len(segments))
    count = max(1, int(math.floor(min(1.0, severity / MAX_SEVERITY) * len(candidates) + 0.5)))
    max_shift, max_angle = MOTION_PX_PER_SEVERITY * severity, MOTION_DEG_PER_SEVERITY * severity
    motions = []
    for j in sorted(candidates[i] for i in order[:count]):
        r = max_shift * radius[j]
        motions.append(
            SegmentMotion(
                segment=j, shift=(r * math.cos(direction[j]), r * math.sin(direction[j])), angle=max_angle * turn[j]
            )
        )
    return segments, motions


def motion_kspace(stack: np.ndarray, segments: list[np.ndarray], motions: list[SegmentMotion]) -> np.ndarray:
    """2D k-space (FFT order, complex64) of each slice of a (slices, phase, readout) stack acquired with ``motions``.

    Lines of unmoved segments are the clean image's k-space exactly. For a moved segment
    the image is rotated about the slice centre (linear interpolation), its k-space taken,
    and its lines multiplied by the phase ramp ``exp(-2 pi i (f_pe d_pe + f_ro d_ro))`` of the
    translation (Fourier shift theorem; f in cycles per pixel, sub-pixel shifts allowed).
    """
    stack = np.asarray(stack, dtype=np.float32)
    kspace = scipy.fft.fft2(stack, axes=(1, 2))
    n_pe, n_ro = stack.shape[1:]
    f_pe = scipy.fft.fftfreq(n_pe)[:, None]
    f_ro = scipy.fft.fftfreq(n_ro)[None, :]
    fill = float(stack.min()) if stack.size else 0.0
    for motion in motions:
        lines = segments[motion.segment]
        moved = stack
        if motion.angle != 0.0:
            moved = ndimage.rotate(stack, motion.angle, axes=(1, 2), reshape=False, order=1, mode="constant", cval=fill)
        moved_k = scipy.fft.fft2(moved, axes=(1, 2))[:, lines, :]
        ramp = np.exp(-2j * math.pi * (f_pe[lines] * motion.shift[0] + f_ro * motion.shift[1]))
        kspace[:, lines, :] = moved_k * ramp[None].astype(np.complex64)
    return kspace


def _planes(volume: np.ndarray, axis: int) -> tuple[int, int, int]:
    """(slice, phase-encode, readout) voxel axes: phase-encode is the first in-plane axis."""
    in_plane = [a for a in range(3) if a != axis]
    return axis, in_plane[0], in_plane[1]


def add_motion(volume: np.ndarray, severity: float, rng: np.random.Generator, axis: int = 2) -> tuple[np.ndarray, dict]:
    """Motion-corrupted copy of a 3D volume (slices along voxel ``axis``) and the drawn motion."""
    volume = np.asarray(volume)
    order = _planes(volume, axis)
    stack = np.moveaxis(volume, order, (0, 1, 2))
    n_pe = stack.shape[1]
    segments, motions = plan_motion(n_pe, severity, rng)
    corrupted = scipy.fft.ifft2(motion_kspace(stack, segments, motions), axes=(1, 2))
    # A magnitude image is what the scanner reconstructs; a signed image keeps its sign (real part).
    result = np.abs(corrupted) if float(volume.min()) >= 0 else corrupted.real
    info = {
        "segments": len(segments),
        "phase_encode_axis": order[1],
        "slice_axis": order[0],
        # lines as centred k-space rows (0 = -k_max), first and last, for reading the record
        "moved": [
            dict(asdict(m), lines=[int(c.min()), int(c.max())])
            for m in motions
            for c in [(segments[m.segment] + n_pe // 2) % n_pe]
        ],
    }
    return np.moveaxis(result, (0, 1, 2), order).astype(np.float32), info


# --------------------------------------------------------------------------- noise


def add_rician_noise(volume: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``sqrt((x + n1)^2 + n2^2)``, n1, n2 ~ N(0, sigma^2); ``x + n1`` when the image has negative values."""
    data = np.asarray(volume, dtype=np.float64)
    n1 = rng.standard_normal(data.shape) * sigma
    n2 = rng.standard_normal(data.shape) * sigma
    if float(data.min()) < 0:
        return (data + n1).astype(np.float32)
    return np.sqrt((data + n1) ** 2 + n2**2).astype(np.float32)


def _require_non_negative(data: np.ndarray) -> None:
    if float(data.min()) < 0:
        raise SynthmedError(
            f"lowdose needs a non-negative (PET-like) image, this one goes down to {float(data.min()):g}; "
            f"use --kind noise for signed images such as CT"
        )


def add_lowdose_noise(volume: np.ndarray, counts_per_unit: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts of mean ``x * counts_per_unit``, scaled back by ``1 / counts_per_unit`` (mean kept)."""
    data = np.asarray(volume, dtype=np.float64)
    _require_non_negative(data)
    if not counts_per_unit > 0:
        raise SynthmedError(f"lowdose: counts per unit must be positive, got {counts_per_unit}")
    return (rng.poisson(data * counts_per_unit) / counts_per_unit).astype(np.float32)


# --------------------------------------------------------------------------- one array


def degrade_array(
    data: np.ndarray, kind: str, severity: float, rng: np.random.Generator, axis: int = 2
) -> tuple[np.ndarray, dict]:
    """Degraded float32 copy of a 3D array and a JSON-able record of what was drawn."""
    check_kind(kind)
    severity = check_severity(severity)
    data = np.asarray(data)
    if data.ndim != 3:
        raise SynthmedError(f"degrade needs a 3D array (X, Y, Z), got shape {data.shape}")
    if kind == "motion":
        return add_motion(data, severity, rng, axis=axis)
    if kind == "noise":
        sigma = severity * NOISE_FRACTION_PER_SEVERITY * reference_intensity(data)
        rician = float(data.min()) >= 0
        info = {"sigma": sigma, "distribution": "rician" if rician else "gaussian"}
        return add_rician_noise(data, sigma, rng), info
    _require_non_negative(data)  # before reference_intensity, for the clearer message
    reference = reference_intensity(data)
    dose = LOWDOSE_BASE**-severity
    counts = LOWDOSE_REFERENCE_COUNTS * dose
    info = {"dose_fraction": dose, "counts_at_reference": counts, "reference_intensity": reference}
    return add_lowdose_noise(data, counts / reference, rng), info


# --------------------------------------------------------------------------- files and folders


@dataclass
class _Job:
    source: Path  # clean scan
    out: Path  # degraded scan
    subject: str | None = None  # None for a single file
    link: Path | None = None  # where the clean scan is linked beside the degraded one


def _has_subject_folders(folder: Path) -> bool:
    return any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


def _plan_jobs(input_path: Path, output: Path, kind: str, name: str | None, aliases: dict[str, str]) -> list[_Job]:
    if not input_path.exists():
        raise SynthmedError(f"{input_path}: no such file or folder")
    if input_path.is_file() or (is_volume_path(input_path) and not _has_subject_folders(input_path)):
        if output.is_dir():
            raise SynthmedError(f"{output} is a folder; for a single input give an output file name like out.nii.gz")
        return [_Job(input_path, output)]
    if not name:
        raise SynthmedError(
            f"{input_path} is a folder of subjects: pass --name MODALITY (e.g. --name T1) to choose the scan to degrade"
        )
    wanted = canonical_modality(name, aliases)
    out_name = f"{name}_{kind}"
    if canonical_modality(out_name, aliases) == wanted:
        raise SynthmedError(f"--name {name}: the degraded scan would have the same modality name as the clean one")
    jobs = []
    for entry in sorted(p for p in input_path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = [
            f
            for f in sorted(entry.iterdir())
            if f.is_file() and volume_suffix(f) and file_modality(f, entry.name, aliases) == wanted
        ]
        if not files:
            log.warning("%s: no %s scan in this subject folder; skipped", entry, name)
            continue
        if len(files) > 1:
            raise SynthmedError(f"{entry}: {len(files)} files are {name} ({files[0].name}, {files[1].name}); keep one")
        clean = files[0]
        folder = output / entry.name
        jobs.append(_Job(clean, folder / f"{out_name}{output_suffix(clean)}", entry.name, folder / clean.name))
    if not jobs:
        raise SynthmedError(f"{input_path}: no subject folder holds a {name} scan")
    return jobs


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _mhd_data_file(header: Path) -> Path | None:
    """The data file a MetaImage header names (``ElementDataFile = T1.raw``), when it is a separate file."""
    try:
        for line in header.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "ElementDataFile":
                value = value.strip()
                if value and value != "LOCAL" and " " not in value and not value.startswith("LIST"):
                    return header.parent / value
    except OSError:
        pass
    return None


def _link_clean(clean: Path, link: Path, overwrite: bool) -> str:
    """Put the clean scan beside its degraded copy (symbolic link; a copy where links fail)."""
    pairs = [(clean, link)]
    if volume_suffix(clean) == ".mhd" and (data_file := _mhd_data_file(clean)) is not None:
        pairs.append((data_file, link.parent / data_file.name))
    how = "link"
    for target, where in pairs:
        if _same_file(target, where):  # OUT is IN, or the link is already there
            how = "in place" if not where.is_symlink() else how
            continue
        if where.exists() or where.is_symlink():
            if not overwrite:
                raise SynthmedError(f"{where} exists; pass --overwrite to replace it")
            if where.is_dir():
                raise SynthmedError(f"{where} is a folder; cannot replace it with the clean scan")
            if not where.is_symlink() and not written_by_synthmed(where):  # a link loses nothing; a file may be data
                raise SynthmedError(
                    f"{where} exists and is a file synthmed did not write; delete it yourself or choose another output"
                )
            where.unlink()
        try:
            where.symlink_to(target.resolve())
        except OSError:
            shutil.copy2(target, where)
            how = "copy"
    return how


def _subject_rng(seed: int, subject: str | None) -> np.random.Generator:
    """``seed`` alone for a single file; ``(seed, crc32(subject))`` in a folder (negative seeds allowed)."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    if subject is None:
        return np.random.default_rng(seed)
    return np.random.default_rng([seed, zlib.crc32(subject.encode())])


def degrade(
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    kind: str,
    severity: float = 1.0,
    seed: int = 0,
    name: str | None = None,
    aliases=None,
    axis: str | int = "axial",
    overwrite: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Degrade a file, or the ``name`` scan of every subject folder; returns the degraded paths.

    ``aliases`` (as for ``prepare``: ``"t1c_bet=t1c"``) map file names to modalities when
    looking for ``name`` in the subject folders.

    Outputs keep the input's shape, affine and header (float32). Nothing is replaced
    without ``overwrite``; in a folder, all volumes are written under hidden partial
    names and renamed at the end, so a failure leaves no partial result.
    """
    check_kind(kind)
    severity = check_severity(severity)
    input_path, output = Path(input_path), Path(output)
    jobs = _plan_jobs(input_path, output, kind, name, parse_aliases(aliases))
    with output_lock(output):
        return _degrade_jobs(
            jobs,
            output,
            kind=kind,
            severity=severity,
            seed=seed,
            name=name,
            axis=axis,
            overwrite=overwrite,
            progress=progress,
        )


def _degrade_jobs(
    jobs: list,
    output: Path,
    *,
    kind: str,
    severity: float,
    seed: int,
    name: str | None,
    axis,
    overwrite: bool,
    progress: bool,
) -> list[Path]:
    existing = [job.out for job in jobs if job.out.exists()]
    if existing and not overwrite:
        raise SynthmedError(
            f"{existing[0]} exists ({len(existing)} output(s) would be replaced); pass --overwrite to replace"
        )
    if any(_same_file(job.source, job.out) for job in jobs):
        raise SynthmedError(f"{jobs[0].out}: the output would replace its own input; choose another output")
    folder_mode = jobs[0].subject is not None
    summary_path = output / f"degrade-{name}_{kind}.json" if folder_mode else None
    replaced = existing + [
        job.link
        for job in jobs
        if folder_mode and job.link.exists() and not job.link.is_symlink() and not _same_file(job.source, job.link)
    ]
    if summary_path is not None and summary_path.exists():
        replaced.append(summary_path)
    refuse_replacing_foreign(replaced, "degrade")  # only synthmed's own outputs, never a scan of the user's
    for folder in sorted({job.out.parent for job in jobs}):
        ensure_writable_folder(folder)
        remove_stale_temporaries(folder)  # partial outputs of a run that was killed

    records: dict[str, dict] = {}
    partials: list[tuple[Path, Path]] = []
    written: list[Path] = []
    try:
        for job in tqdm(jobs, desc=f"degrade ({kind})", unit="volume", disable=not progress or not folder_mode):
            volume: Volume = read_volume(job.source)
            try:
                degraded, info = degrade_array(
                    volume.data,
                    kind,
                    severity,
                    _subject_rng(seed, job.subject),
                    axis=slice_axis(volume.affine, axis, volume.is_2d),
                )
            except SynthmedError as error:
                raise SynthmedError(f"{job.source}: {error}") from None
            records[job.subject or job.source.name] = {"clean": str(job.source), "degraded": str(job.out), **info}
            if not folder_mode or volume_suffix(job.out) == ".mhd":  # write_volume is atomic per file already
                written.append(write_volume(job.out, degraded, like=volume, overwrite=overwrite))
                continue
            partial = temporary_path(job.out, "partial")
            partials.append((write_volume(partial, degraded, like=volume, overwrite=True), job.out))
        for partial, out in partials:
            if out.is_dir():
                raise SynthmedError(f"{out} is a folder; cannot replace it with a volume")
            partial.replace(out)
            written.append(out)
    except BaseException:
        for partial, _ in partials:
            partial.unlink(missing_ok=True)
        raise
    if folder_mode:
        for job in jobs:
            records[job.subject]["clean_beside"] = _link_clean(job.source, job.link, overwrite)
        summary = {
            "kind": kind,
            "severity": severity,
            "seed": seed,
            "name": name,
            "axis": str(axis),
            "pair_with": f"synthmed prepare {output} --source {name}_{kind} --target {name}",
            "subjects": records,
        }
        write_text_atomic(summary_path, json_text(summary))
        copies = [job.link for job in jobs if records[job.subject]["clean_beside"] == "copy"]
        record_written([*written, *copies, summary_path], "degrade")
    else:
        record_written(written, "degrade")
    return written
