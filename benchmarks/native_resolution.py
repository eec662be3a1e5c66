"""Native resolution against resize-to-64, at an equal CPU training budget, on the dev real scans.

Both layouts come from the same subjects and split; each model is trained on each for the same wall-clock budget
(``--minutes`` for the native run, small preset, ``--batch-size`` 16; the resized run then trains for as many
steps, so both see the same number of 64 x 64 training images) and translates the held-out subjects without ``--reference`` (the plan's
scale model), with a clean background (the default):

- ``resized``: ``prepare --size 64``: every foreground box squeezed into 64 x 64 pixels, the toolkit's earlier
  layout; the model trains on whole 64 px slices and its outputs are resized back;
- ``native``: ``prepare`` (default): slices at the data's 1 mm pixel size, the model trains on random 64 px patches
  (``--patch 64``, the small preset's) and translates whole slices.

Scores (``synthmed evaluate``'s, in the target's units, inside the reference's foreground): PSNR, SSIM, the
scale-free PSNR/SSIM after a linear fit (``psnr_fit``/``ssim_fit``), the through-plane consistency
(``psnr_dz``, PSNR of slice-to-slice differences: stripes from slice-by-slice translation lower it) and the
identity baseline with matched intensity. ``background_voxels_off`` counts voxels outside the source's dilated
foreground that differ from the output's background value (0 for a clean background). PNGs of a middle axial and
sagittal slice (source | resized | native [| native with context] | reference) are written under ``--work``, never into the repository.

With ``--context K`` the native model is also trained with K neighbouring slices as input (2.5D), for as many
steps, to measure what it does to slice-to-slice consistency (``psnr_dz``).

Tasks (``--task``; split 0.75/0/0.25, seed 0):

- ``t1t2``: T1 -> T2 of ``brats/*`` (3) and ``ms/patient07`` (4 subjects: 3 train, 1 test);
- ``flair-t1c``: FLAIR -> T1c of ``brats/*`` (3), ``brats2013/*`` (6, z-scored inside the brain) and
  ``ms/patient07`` (T1POST): 10 subjects, 8 train, 2 test (the split rounds), raw scanner and z-scored scales mixed.

``--layouts native`` skips the resized run (for a task where only the native figures are wanted).

    cd benchmarks && ../.venv/bin/python native_resolution.py [--task t1t2] [--models pix2pix,ddpm] [--minutes 10]
        [--layouts native,resized] [--context 3] [--work DIR] [--out results/native-resolution-cpu.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scale_without_reference import _flair_t1c, _t1t2

from synthmed.benchmarking.results import write_json
from synthmed.benchmarking.runner import inside, source_state
from synthmed.data.foreground import foreground_mask
from synthmed.data.io import read_volume, write_volume
from synthmed.data.prepare import prepare
from synthmed.workflows.evaluate import evaluate_pairs
from synthmed.workflows.train import train
from synthmed.workflows.translate import BACKGROUND_MARGIN, dilated, load_run, translate_volume

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"
SPLIT = "0.75,0,0.25"
TASKS = {"t1t2": (_t1t2, ("T1", "T2")), "flair-t1c": (_flair_t1c, ("FLAIR", "T1c"))}
KEYS = ("psnr", "ssim", "psnr_fit", "ssim_fit", "psnr_dz")


def link_data(work: Path, task: str) -> Path:
    subjects_of, names = TASKS[task]
    data = work / "data"
    for subject, (source, target) in subjects_of().items():
        (data / subject).mkdir(parents=True, exist_ok=True)
        for link, path in zip((f"{name}.nii.gz" for name in names), (source, target)):
            if not (data / subject / link).exists():
                (data / subject / link).symlink_to(path)
    return data


def _means(result: dict) -> dict:
    return {k: round(result["mean"][k], 4) for k in KEYS if k in result["mean"]}


def _png(path: Path, rows: list[list[np.ndarray]]) -> None:
    """Rows of 2D images side by side, each scaled by its own 0.5-99.5th percentiles (grey, 8 bit)."""

    def grey(image: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(image, [0.5, 99.5])
        return (np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)

    lines = [np.concatenate([grey(np.rot90(image)) for image in row], axis=1) for row in rows]
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, 0), (0, width - line.shape[1]))) for line in lines]
    Image.fromarray(np.concatenate(lines, axis=0)).save(path)


def run(
    task: str, models: list[str], minutes: float, work: Path, context: int, layouts: list[str], batch_size: int
) -> dict:
    source_name, target_name = TASKS[task][1]
    data = link_data(work, task)
    preps = {
        "native": prepare(
            data, source=source_name, target=target_name, out=work / "prep-native", split=SPLIT, seed=0, progress=False
        )
    }
    if "resized" in layouts:
        preps["resized"] = prepare(
            data,
            source=source_name,
            target=target_name,
            out=work / "prep-resized",
            size=64,
            split=SPLIT,
            seed=0,
            progress=False,
        )
    plans = {layout: json.loads((prep / "plan.json").read_text()) for layout, prep in preps.items()}
    test = plans["native"]["split"]["test"]
    report: dict = {
        "subjects": plans["native"]["split"],
        "native_slice_size": plans["native"]["size"],
        "native_spacing_mm": plans["native"]["resolution"]["spacing_mm"],
        "models": {},
    }
    source_file = lambda subject: data / subject / f"{source_name}.nii.gz"  # noqa: E731
    target_file = lambda subject: data / subject / f"{target_name}.nii.gz"  # noqa: E731
    identity = evaluate_pairs([(s, source_file(s), target_file(s)) for s in test], match=True)
    report["identity_matched"] = _means(identity)
    for model in models:
        entry: dict = {}
        outputs: dict[str, dict[str, np.ndarray]] = {}
        steps = None
        runs = [layout for layout in ("native", "resized") if layout in layouts]
        runs += [f"native-context{context}"] if context > 1 else []
        for layout in runs:  # native first: the others get as many steps as it made
            prep = preps["resized" if layout == "resized" else "native"]
            run_dir = work / f"run-{model}-{layout}"
            summary_file = run_dir / "train_summary.json"
            if not summary_file.exists():
                torch.manual_seed(0)
                train(
                    prep,
                    model=model,
                    preset="small",
                    out=run_dir,
                    steps=steps or 100_000,
                    batch_size=batch_size,
                    context=context if "context" in layout else 1,
                    max_minutes=minutes if steps is None else None,
                    val_every=100_000,
                    checkpoint_every=500,
                    progress=False,
                )
            summary = json.loads(summary_file.read_text())
            steps = steps or summary["steps"]
            train_seconds = summary["seconds"]
            loaded = load_run(run_dir, checkpoint="last")
            pairs, off, translate_seconds = [], 0, 0.0
            for subject in test:
                volume = read_volume(source_file(subject))
                started = time.monotonic()
                image = translate_volume(loaded, volume, None).image
                translate_seconds += time.monotonic() - started
                outside = ~dilated(foreground_mask(volume.data), BACKGROUND_MARGIN)
                off += int(np.count_nonzero(image[outside] != image[outside].flat[0])) if outside.any() else 0
                out = work / "outputs" / model / layout / subject / f"{target_name}.nii.gz"
                out.parent.mkdir(parents=True, exist_ok=True)
                write_volume(out, image, like=volume, overwrite=True)
                pairs.append((subject, out, target_file(subject)))
                outputs.setdefault(subject, {})[layout] = image
            scores = evaluate_pairs(pairs)
            entry[layout] = {
                "train_seconds": train_seconds,
                "train_steps": summary["steps"],
                "translate_seconds_per_volume": round(translate_seconds / len(test), 1),
                "background_voxels_off": off,
                "scores": _means(scores),
                "per_subject": {
                    s: {k: round(v, 4) for k, v in m.items() if k in KEYS} for s, m in scores["per_subject"].items()
                },
            }
            print(model, layout, entry[layout]["train_steps"], "steps", entry[layout]["scores"], flush=True)
        if "resized" in entry:
            entry["native_minus_resized"] = {
                k: round(entry["native"]["scores"][k] - entry["resized"]["scores"][k], 4)
                for k in KEYS
                if k in entry["native"]["scores"]
            }
        if context > 1:
            entry["context_minus_native"] = {
                k: round(entry[runs[-1]]["scores"][k] - entry["native"]["scores"][k], 4)
                for k in KEYS
                if k in entry["native"]["scores"]
            }
        entry["native_minus_identity"] = {
            k: round(entry["native"]["scores"][k] - report["identity_matched"][k], 4) for k in ("psnr", "ssim")
        }
        report["models"][model] = entry
        for subject in test:
            source = read_volume(source_file(subject)).data
            reference = read_volume(target_file(subject)).data
            order = sorted(runs, key=lambda layout: layout != "resized")  # source | resized | native ... | reference
            images = [source, *(outputs[subject][layout] for layout in order), reference]
            axial, sagittal = source.shape[2] // 2 + 10, source.shape[0] // 2 + 10
            _png(
                work / f"{model}-{subject}.png",
                [[im[:, :, axial] for im in images], [im[sagittal, :, :] for im in images]],
            )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="t1t2")
    parser.add_argument("--models", default="pix2pix,ddpm")
    parser.add_argument("--layouts", default="native,resized", help="native, resized or both (comma-separated)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per model and layout")
    parser.add_argument("--context", type=int, default=1, help="also train the native model with this 2.5D context")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "synthmed" / "bench-native")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "native-resolution-cpu.json")
    args = parser.parse_args()
    if not REAL.is_dir():
        raise SystemExit(f"{REAL} is absent: this benchmark needs the dev real scans")
    if inside(args.work, REPO):
        raise SystemExit(f"--work {args.work} lies inside the repository; real data must stay outside it")
    layouts = [layout.strip() for layout in args.layouts.split(",")]
    if "native" not in layouts or not set(layouts) <= {"native", "resized"}:
        raise SystemExit(f"--layouts {args.layouts}: give native or native,resized")
    torch.set_num_threads(2)
    report = {
        "benchmark": "native_resolution",
        "date": datetime.date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "command": " ".join(["python", "native_resolution.py", *sys.argv[1:]]),
        **source_state(),
        "minutes_per_training": args.minutes,
        "task": args.task,
        **run(
            args.task,
            [m.strip() for m in args.models.split(",")],
            args.minutes,
            args.work,
            args.context,
            layouts,
            args.batch_size,
        ),
    }
    write_json(args.out, report)
    print(
        json.dumps(
            {
                m: {k: v for k, v in e.items() if k.endswith(("_resized", "_identity", "_native"))}
                for m, e in report["models"].items()
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
