"""Accelerated MRI on real brains: zero-filled vs total-variation CS vs the diffusion prior (``score-mri``), at 4x
and 8x, with time per slice.

1. The prior: ``synthmed train --model score-mri --preset small`` for ``--minutes`` on the T2 magnitude slices of
   the four BraTS-layout and MS brains of ``../shared/data/real`` (native 1 mm resolution, 64 px patches).
2. Single coil, retrospective: the 25 IXI T2 slices (``ixi_slices/T2.mat``: another data set, site and slice
   geometry than the prior saw) undersampled with random lines and a fully sampled centre of 8% (seed 0) at 4x and
   8x; PSNR/SSIM/NMSE against the fully sampled slices over the whole image and inside the head.
3. Multi-coil, as acquired: BART's 8-coil brain k-space (``kspace/bart-brain/ksp``, 12.7% Poisson-disc samples,
   about 7.9x); it has no fully sampled counterpart, so its figures compare with BART's own ``pics``
   reconstruction (``img``, first map set) after a least-squares scale: agreement with another method, not
   accuracy.
4. ``figure.png`` in the work folder: zero-filled / CS / diffusion / reference / std map for one IXI slice at 8x and
   for the BART brain (real scans: kept out of the repository).

    .venv/bin/python benchmarks/mri_reconstruction.py --work W [--data ../shared/data/real] [--minutes 30] \
        [--steps 50] [--samples 4] [--threads 2] [--every 1] [--out F]

A finished training run in ``W`` is reused. Writes ``benchmarks/results/mri-reconstruction-cpu.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthmed.benchmarking.results import write_json
from synthmed.benchmarking.runner import load_average, run_measured, source_state, synthmed_command
from synthmed.data.io import read_volume, write_volume
from synthmed.data.recipes.shared_real import REAL_SUBJECTS
from synthmed.files import write_text_atomic
from synthmed.metrics.image import nmse, psnr, ssim
from synthmed.mri import read_cfl
from synthmed.workflows.reconstruct import Sampling, reconstruct

RESULTS = Path(__file__).resolve().parent / "results"


def say(message: str) -> None:
    print(f"[mri {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def train_prior(work: Path, data: Path, minutes: float, threads: int) -> Path:
    run = work / "run"
    if (run / "train_summary.json").is_file():
        return run
    lines = ["subject,modality,path,split"]
    for subject, (folder, files, _, _) in REAL_SUBJECTS.items():
        lines.append(f"{subject},t2,{(data / folder / files['t2']).resolve()},train")
    write_text_atomic(work / "manifest.csv", "\n".join(lines) + "\n")
    logs = work / "logs"
    if not (work / "prep" / "plan.json").is_file():
        run_measured(
            synthmed_command(["prepare", "--manifest", str(work / "manifest.csv"), "--source", "t2"])
            + ["--out", str(work / "prep"), "--quiet"],
            logs / "prepare.log",
        )
    say(f"training the prior for {minutes} min")
    run_measured(
        synthmed_command(["train", str(work / "prep"), "--model", "score-mri", "--preset", "small"])
        + ["--steps", "100000", "--max-minutes", str(minutes), "--out", str(run), "--quiet"],
        logs / "train.log",
        threads=threads,
    )
    return run


def scaled_scores(image: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Scores after the least-squares scale of ``image`` onto ``reference`` (different coil normalisations)."""
    scale = float((image * reference).sum() / max((image * image).sum(), 1e-12))
    fitted, peak = image * scale, float(reference.max() - reference.min())
    return {
        "psnr": psnr(fitted, reference, data_range=peak),
        "ssim": ssim(fitted, reference, data_range=peak),
        "nmse": nmse(fitted, reference),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/real")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=50, help="DDIM network evaluations per reconstruction")
    parser.add_argument("--samples", type=int, default=4, help="reconstructions per slice (mean + std)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--every", type=int, default=1, help="reconstruct every N-th IXI slice (CPU time)")
    parser.add_argument("--out", type=Path, default=RESULTS / "mri-reconstruction-cpu.json")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    run = train_prior(work, args.data, args.minutes, args.threads)
    result: dict[str, Any] = {
        "benchmark": "mri-reconstruction",
        "complete": False,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": load_average()},
        "source": source_state(),
        "settings": {
            "minutes": args.minutes,
            "steps": args.steps,
            "samples": args.samples,
            "threads": args.threads,
            "sampler": "ddim",
            "ixi_slices": f"every {args.every}",
        },
        "training": json.loads((run / "train_summary.json").read_text()),
        "ixi_t2": {},
        "bart_brain": {},
    }
    if args.out.is_file():  # an interrupted run with the same settings: keep what it finished
        earlier = json.loads(args.out.read_text())
        if earlier.get("settings") == result["settings"]:
            result["ixi_t2"], result["bart_brain"] = earlier.get("ixi_t2", {}), earlier.get("bart_brain", {})
    result["training"] = {k: result["training"].get(k) for k in ("trained_steps", "seconds", "parameters")}
    # the slices as NIfTI (no geometry in the .mat: identity affine), every N-th one to bound the CPU time
    ixi = work / "ixi_t2.nii.gz"
    write_volume(ixi, read_volume(args.data / "ixi_slices" / "T2.mat").data[..., :: args.every], overwrite=True)
    methods = {"zero-filled": "zero-filled", "cs": "cs", "diffusion": str(run)}
    for acceleration in (4, 8):
        for name, method in methods.items():
            out = work / f"ixi-{acceleration}x-{name}.nii.gz"
            if f"{acceleration}x/{name}" in result["ixi_t2"] and out.is_file():
                continue
            diffusion = name == "diffusion"
            start = time.perf_counter()
            record = reconstruct(
                method,
                ixi,
                out,
                sampling=Sampling("random", acceleration, 0.08, 0),
                sampler="ddim" if diffusion else None,
                steps=args.steps if diffusion else None,
                samples=args.samples if diffusion else 1,
                overwrite=True,
                progress=False,
            )
            seconds = time.perf_counter() - start
            result["ixi_t2"][f"{acceleration}x/{name}"] = {
                **{k: round(v, 4) for k, v in record["metrics"].items()},
                "seconds_per_slice": round(seconds / record["slices"], 2),
                "notes": record["notes"],
            }
            say(
                f"IXI {acceleration}x {name}: {record['metrics']['psnr']:.2f} dB, {seconds / record['slices']:.2f} s/slice"
            )
            write_json(args.out, result)
    reference = np.abs(read_cfl(args.data / "kspace" / "bart-brain" / "img", squeeze="all"))
    reference = reference[..., 0] if reference.ndim == 3 else reference
    for name, method in methods.items():
        out = work / f"bart-{name}.nii.gz"
        if name in result["bart_brain"] and out.is_file():
            continue
        diffusion = name == "diffusion"
        start = time.perf_counter()
        record = reconstruct(
            method,
            args.data / "kspace" / "bart-brain" / "ksp.cfl",
            out,
            sampling=Sampling("measured"),
            sampler="ddim" if diffusion else None,
            steps=args.steps if diffusion else None,
            samples=args.samples if diffusion else 1,
            overwrite=True,
            progress=False,
        )
        image = read_volume(out).data[..., 0]
        result["bart_brain"][name] = {
            **{k: round(v, 4) for k, v in scaled_scores(image, reference).items()},
            "seconds": round(time.perf_counter() - start, 2),
            "notes": record["notes"],
        }
        say(f"BART brain {name}: {result['bart_brain'][name]['psnr']:.2f} dB vs pics")
        write_json(args.out, result)
    result["figure"] = str(figure(work, ixi, reference))
    result["complete"] = True
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_json(args.out, result)
    say(f"wrote {args.out}")


def figure(work: Path, ixi: Path, bart_reference: np.ndarray) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synthmed.workflows.reconstruct import std_path

    fully = np.abs(read_volume(ixi).data)
    middle = fully.shape[-1] // 2
    rows = [
        (
            "IXI T2 8x",
            lambda name: read_volume(work / f"ixi-8x-{name}.nii.gz").data[..., middle],
            fully[..., middle],
            work / "ixi-8x-diffusion.nii.gz",
        ),
        (
            "BART brain",
            lambda name: read_volume(work / f"bart-{name}.nii.gz").data[..., 0],
            bart_reference,
            work / "bart-diffusion.nii.gz",
        ),
    ]
    fig, axes = plt.subplots(len(rows), 5, figsize=(15, 3.4 * len(rows)), squeeze=False)
    for axis_row, (title, load, reference, diffusion_path) in zip(axes, rows):
        images = [(name, load(name)) for name in ("zero-filled", "cs", "diffusion")]
        std_file = std_path(diffusion_path)
        std = read_volume(std_file).data[..., 0 if "bart" in title.lower() else middle] if std_file.exists() else None
        panels = images + [("reference", reference), ("diffusion std", std)]
        for axis, (name, pixels) in zip(axis_row, panels):
            axis.axis("off")
            if pixels is None:
                continue
            top = np.percentile(pixels, 99.5) if name != "diffusion std" else np.percentile(pixels, 99.9)
            axis.imshow(np.rot90(pixels), cmap="magma" if name == "diffusion std" else "gray", vmin=0, vmax=top)
            axis.set_title(f"{title}: {name}", fontsize=9)
    fig.tight_layout()
    path = work / "figure.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
