"""``synthmed generate RUN --n N --out DIR``: new slices (and, for ``pig``, their lesion masks) from a trained
generator, written as described in :mod:`synthmed.data.generated`.

Slices are sampled in chunks of ``batch_size`` (default 16, fewer for large slices on a CPU) with a progress bar;
the noise comes from one generator seeded with ``seed`` on the model's device, so the same seed, batch size and device give the same files. Masks are the
binarised final mask estimate (``x0_hat > mask_threshold``, 0 in [-1, 1] units by default: the midpoint between
background and lesion). ``generation.json`` is written last: a folder without it is an interrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from synthmed.data.generated import FORMATS, GENERATED_NAME, to_unit, write_pair
from synthmed.data.io import ensure_writable_folder
from synthmed.diffusion.samplers import get_sampler
from synthmed.errors import SynthmedError
from synthmed.files import default_file_mode, json_text, output_lock, ownership_problem, write_marker, write_text_atomic
from synthmed.workflows.translate import default_batch_size, load_run, prepare_for_inference

log = logging.getLogger(__name__)

CONTACT_SHEET_PAIRS = 16
GENERATE_BATCH_SIZE = 16  # on a GPU; a CPU takes fewer at large sizes (translate.default_batch_size)


def generate(
    run: str | Path,
    n: int,
    out: str | Path,
    *,
    steps: int | None = None,
    sampler: str | None = None,
    eta: float | None = None,
    fmt: str = "png",
    seed: int = 0,
    batch_size: int | None = None,
    checkpoint: str = "best",
    device: str = "auto",
    overwrite: bool = False,
    amp: str = "off",
    compile: bool = False,
    progress: bool = True,
) -> dict:
    """Generate ``n`` slices into ``out``; returns the contents of ``generation.json``."""
    if n < 1:
        raise SynthmedError(f"--n {n}: must be at least 1")
    if batch_size is not None and batch_size < 1:
        raise SynthmedError(f"--batch-size {batch_size}: must be at least 1")
    if fmt not in FORMATS:
        raise SynthmedError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    loaded = load_run(run, device=device, checkpoint=checkpoint, amp=amp)
    model = loaded.model
    if model.task != "generate":
        raise SynthmedError(f"{run} holds a {loaded.info.model} translator; use `synthmed translate`")
    prepare_for_inference(model, compile=compile)
    if batch_size is None:
        size = model.config.image_size
        batch_size = min(GENERATE_BATCH_SIZE, default_batch_size(model.device, (size, size)))
    try:
        model.check_sampling(sampler=sampler, steps=steps, eta=eta)
    except ValueError as error:
        raise SynthmedError(str(error)) from None
    out = Path(out)
    with output_lock(out):
        return _generate(
            loaded,
            run,
            n,
            out,
            steps=steps,
            sampler=sampler,
            eta=eta,
            fmt=fmt,
            seed=seed,
            batch_size=batch_size,
            overwrite=overwrite,
            progress=progress,
        )


def _generated_entry(entry: Path) -> bool:
    """Whether ``entry`` is something ``generate`` writes: numbered pairs, the contact sheet, its record."""
    return entry.is_file() and (
        bool(GENERATED_NAME.match(entry.name)) or entry.name in ("contact_sheet.png", "generation.json")
    )


def _generate(
    loaded,
    run,
    n: int,
    out: Path,
    *,
    steps,
    sampler,
    eta,
    fmt: str,
    seed: int,
    batch_size: int,
    overwrite: bool,
    progress: bool,
) -> dict:
    model = loaded.model
    if out.exists() and not out.is_dir():
        raise SynthmedError(f"--out {out} is a file, not a folder; choose another --out")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SynthmedError(
                f"{out} is not empty; pass --overwrite to replace generated files there or choose another --out"
            )
        problem = ownership_problem(
            out, "generate", _generated_entry, legacy=lambda folder: (folder / "generation.json").is_file()
        )
        if problem:
            raise SynthmedError(
                f"{out} {problem}; --overwrite replaces only a folder of synthmed generate: choose another --out"
            )
    ensure_writable_folder(out)
    for stale in out.iterdir():
        if _generated_entry(stale):
            stale.unlink()  # --overwrite: no files of an earlier, larger run left to mix in
    write_marker(out, "generate")

    generator = torch.Generator(device=model.device).manual_seed(seed)
    options = {k: v for k, v in (("sampler", sampler), ("steps", steps), ("eta", eta)) if v is not None}
    files: list[str] = []
    sheet: list[tuple[np.ndarray, np.ndarray | None]] = []
    started = time.perf_counter()
    number = 0
    with tqdm(total=n, unit="slice", desc="generate", disable=not progress) as bar:
        for _ in range(math.ceil(n / batch_size)):
            count = min(batch_size, n - number)
            result = model.sample(count, generator=generator, **options)
            images = result["image"][:, 0].float().cpu().numpy()
            masks = result["mask"][:, 0].cpu().numpy() > 0.5 if "mask" in result else [None] * count
            for image, mask in zip(images, masks):
                number += 1
                files += write_pair(out, number, image, mask, fmt)
                if len(sheet) < CONTACT_SHEET_PAIRS:
                    sheet.append((image, mask))
            bar.update(count)
    seconds = time.perf_counter() - started
    write_contact_sheet(out / "contact_sheet.png", sheet)
    config = model.config
    info = {
        "run": str(Path(run).resolve()),
        "model": loaded.info.model,
        "checkpoint": loaded.checkpoint.name,
        "n": n,
        "sampler": sampler or config.sampler,
        "steps": steps
        if steps is not None
        else get_sampler(sampler or config.sampler).default_steps(config.timesteps, config.sampling_steps),
        "eta": config.eta if eta is None else eta,
        "seed": seed,
        "batch_size": batch_size,
        "device": str(model.device),
        "autocast": str(model.amp_dtype or "off"),
        "format": fmt,
        "size": int(config.image_size),
        "source": loaded.plan.source,
        "label": loaded.plan.label,
        "masks": bool(model.makes_masks),
        "mask_threshold": getattr(config, "mask_threshold", None),
        "mask_rule": "mask = final mask estimate > mask_threshold (in [-1, 1] units)" if model.makes_masks else None,
        "image_values": "PNG: round(255 (x + 1) / 2); NIfTI: (x + 1) / 2, for the model's x in [-1, 1]",
        "seconds": round(seconds, 2),
        "seconds_per_slice": round(seconds / n, 4),
        "files": files,
    }
    write_text_atomic(out / "generation.json", json_text(info))
    return info


def write_contact_sheet(path: Path, pairs: list[tuple[np.ndarray, np.ndarray | None]], columns: int = 4) -> Path:
    """A grid of generated slices; where there is a mask, its outline is drawn in red on the image."""
    tiles = []
    for image, mask in pairs:
        grey = np.round(to_unit(image) * 255).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        if mask is not None and mask.any():
            outline = mask & ~ndimage.binary_erosion(mask)
            rgb[outline] = (255, 0, 0)
        tiles.append(rgb)
    height, width = tiles[0].shape[:2]
    rows = math.ceil(len(tiles) / columns)
    sheet = np.zeros((rows * (height + 2), min(columns, len(tiles)) * (width + 2), 3), dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[r * (height + 2) : r * (height + 2) + height, c * (width + 2) : c * (width + 2) + width] = tile
    Image.fromarray(sheet).save(path)
    path.chmod(default_file_mode())
    return path
