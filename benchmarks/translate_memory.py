"""Bounded memory of ``synthmed translate``: peak resident memory against the number of slices of a volume.

The requirement: translate streams slices through the model in chunks (``--batch-size``), so a
512x512x400 volume translates in bounded memory; the peak RSS must not grow with the number of slices
beyond the whole-volume arrays that have to exist (the input volume and the output volume).

1. A tiny trained run, made once in ``--work``: ``synthmed phantom`` (4 subjects, 32^3), ``synthmed
   prepare --source T1 --target T2 --size 64``, ``synthmed train --model pix2pix --steps 2 --batch-size 2
   --set generator_channels=8 --set discriminator_channels=8``. The model's size does not matter here.
2. Synthetic float32 NIfTI volumes of ``--size`` x ``--size`` x Z for every Z of ``--depths`` (a smooth
   head-like ellipsoid with inner structure and noise, 0.5 x 0.5 x 1 mm voxels, axial slices along the
   third axis), written once and reused.
3. Every measurement is its own process: ``python -m synthmed translate RUN IN OUT --batch-size B --quiet
   --overwrite --device cpu``, run by ``synthmed.benchmarking.runner.run_measured`` (``subprocess.Popen``, reaped
   with ``os.wait4``, whose resource usage is that child's own (``ru_maxrss``: its peak RSS). The baseline is the same kind of
   process that only loads the run (python, torch, synthmed, the model: ``load_run``) and exits.
4. A least-squares line of peak RSS against Z gives the memory per slice, compared with the bytes per
   slice of one float32 volume (``size^2 x 4``): the input and the output volume, 2 volumes' worth, must
   exist; more means whole-volume copies beyond them.
5. Attribution (``--profile-depth``, default the largest Z): one more translate, in a child process that
   wraps the steps of ``synthmed.workflows.translate`` (read, the MR background percentile, foreground
   mask, geometry, fitting the normalisation, normalise + crop in slabs, model, uncrop + inverse
   normalisation in slabs, write) and records the RSS before each step and the step's own peak (the
   kernel's high-water mark ``VmHWM``, reset before each step through ``/proc/self/clear_refs``), in MB
   and in whole volumes.

MB here is MiB (2^20 bytes), as in the other benchmarks. Memory does not depend on the CPU load;
the wall times do, and the machine's load average is recorded. The JSON is rewritten atomically after
every measurement (``"complete": false`` until the end).

    .venv/bin/python benchmarks/translate_memory.py [--depths 50,100,200,400] [--size 512] [--batch-size 32]
        [--repeats 1] [--threads 1] [--profile-depth Z|0] [--work DIR] [--out F]
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
from typing import Any, NoReturn

from synthmed.benchmarking.results import write_json
from synthmed.benchmarking.runner import inside, load_average, run_measured, source_state, synthmed_command
from synthmed.errors import SynthmedError

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
DEFAULT_WORK = CACHE / "synthmed" / "bench-translate-memory"  # outside the repository
MIB = 1024**2

# A child that loads the run and exits: the memory every translate needs whatever the volume.
BASELINE_CHILD = """
import sys
from synthmed.workflows.translate import load_run
load_run(sys.argv[1], device="cpu")
"""

# A child that translates once with the steps of translate.py wrapped: RSS before each step, and the
# step's own peak (VmHWM reset to the current RSS before it). The last stdout line is the JSON record.
PROFILE_CHILD = r"""
import functools, json, sys, time
import synthmed.workflows.translate as T

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20

def hwm_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")

import os
PAGE = os.sysconf("SC_PAGE_SIZE")
RESET = True
steps = []

def wrap(owner, name, label):
    original = getattr(owner, name)
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        global RESET
        before = rss_mb()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the high-water mark to the current RSS
        except OSError:
            RESET = False  # peaks are then cumulative (the run's peak so far)
        start = time.perf_counter()
        result = original(*args, **kwargs)
        steps.append({"step": label, "rss_before_mb": round(before, 1), "peak_mb": round(hwm_mb(), 1),
                      "rss_after_mb": round(rss_mb(), 1), "seconds": round(time.perf_counter() - start, 2)})
        return result
    setattr(owner, name, wrapper)

# Whole steps only: the slab loops (crop_in_slabs, uncrop_in_slabs) call crop_slices, uncrop_slices and the
# normalisation once per slab; a wrapper inside a wrapped step would reset that step's high-water mark.
for name, label in [("read_volume", "read_volume"),
                    ("mr_low", "mr_low: the MR background percentile"),
                    ("foreground_mask", "foreground_mask"),
                    ("fit_geometry", "fit_geometry"),
                    ("fit_normalization", "fit_normalization"),
                    ("crop_in_slabs", "normalise + crop_slices, in slabs"),
                    ("translate_slices", "translate_slices: the model"),
                    ("uncrop_in_slabs", "uncrop_slices + inverse normalisation, in slabs"),
                    ("write_volume", "write_volume")]:
    wrap(T, name, label)
start_rss = rss_mb()
T.translate(sys.argv[1], sys.argv[2], sys.argv[3], overwrite=True, batch_size=int(sys.argv[4]), device="cpu",
            progress=False)
print(json.dumps({"rss_after_imports_mb": round(start_rss, 1), "peak_reset_per_step": RESET, "steps": steps}))
"""


def say(message: str) -> None:
    print(f"[translate-memory {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fail(message: str) -> NoReturn:
    print(f"translate_memory: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def measured(command: list[str], threads: int, log: Path) -> dict[str, float]:
    """Run ``command`` as a child, output appended to ``log``; its own peak RSS (``os.wait4``), wall time and CPU
    time. A failure stops the benchmark with the log's last lines."""
    try:
        return run_measured(command, log, threads=threads, cwd=log.parent, tail_lines=15).as_record()
    except SynthmedError as error:
        fail(str(error))


def synthmed_cli(arguments: list[str], threads: int, log: Path) -> dict[str, float]:
    return measured(synthmed_command(arguments), threads, log)


# --------------------------------------------------------------------------- inputs


def trained_run(work: Path, threads: int) -> Path:
    """The tiny pix2pix run (made once, reused)."""
    run = work / "run"
    if (run / "train_summary.json").is_file() and (run / "checkpoints" / "last.pt").is_file():
        return run
    log = work / "logs" / "setup.log"
    for stale in (work / "phantoms", work / "prep", run):
        if stale.exists():
            import shutil

            shutil.rmtree(stale)
    say("making the tiny pix2pix run")
    synthmed_cli(
        ["phantom", str(work / "phantoms"), "--subjects", "4", "--size", "32", "--seed", "0", "--quiet"], threads, log
    )
    synthmed_cli(
        [
            "prepare",
            str(work / "phantoms"),
            "--source",
            "T1",
            "--target",
            "T2",
            "--size",
            "64",
            "--out",
            str(work / "prep"),
            "--quiet",
        ],
        threads,
        log,
    )
    synthmed_cli(
        [
            "train",
            str(work / "prep"),
            "--model",
            "pix2pix",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--set",
            "generator_channels=8",
            "--set",
            "discriminator_channels=8",
            "--device",
            "cpu",
            "--out",
            str(run),
            "--quiet",
        ],
        threads,
        log,
    )
    return run


def head_volume(size: int, depth: int, path: Path, seed: int = 0) -> Path:
    """A smooth head-like float32 volume (size x size x depth) with noise, written slab by slab."""
    if path.is_file():
        return path
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(seed)
    data = np.empty((size, size, depth), dtype=np.float32)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1  # -1..1 in plane
    x, y = np.meshgrid(coords, coords, indexing="ij")
    for k in range(depth):
        z = ((k + 0.5) / depth) * 2 - 1
        # ellipsoid head (radii 0.8, 0.9, 1.0 of the half-extent), a darker skull shell, brighter "ventricles"
        r = np.sqrt((x / 0.8) ** 2 + (y / 0.9) ** 2 + np.float32(z * z))
        head = (r < 1.0).astype(np.float32)
        brain = 1.0 / (1.0 + np.exp((r - 0.85) * 40.0))
        ventricles = np.exp(-(((x / 0.15) ** 2 + (y / 0.3) ** 2 + np.float32((z / 0.4) ** 2)) * 2.0))
        texture = 0.1 * np.sin(9 * x + 3 * z) * np.cos(7 * y)
        image = 100.0 * head + 300.0 * brain * (1 + texture) + 200.0 * ventricles
        image += rng.normal(0.0, 10.0, size=image.shape).astype(np.float32)
        data[:, :, k] = np.clip(image, 0, None)
    affine = np.diag([0.5, 0.5, 1.0, 1.0])
    image = nib.Nifti1Image(data, affine)
    image.header.set_data_dtype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(".partial-" + path.name)
    nib.save(image, partial)
    os.replace(partial, path)
    return path


def least_squares(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Slope and intercept of the least-squares line."""
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx
    return slope, mean_y - slope * mean_x


# --------------------------------------------------------------------------- main


def depth_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give whole numbers separated by commas, e.g. 50,100,200,400"
        ) from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every depth must be at least 1 slice")
    if len(set(values)) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least two different depths (the slope needs them)")
    return sorted(set(values))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--depths",
        type=depth_list,
        default=depth_list("50,100,200,400"),
        help="numbers of slices Z, comma-separated (default 50,100,200,400)",
    )
    parser.add_argument("--size", type=int, default=512, help="in-plane size of the volumes (default 512)")
    parser.add_argument("--batch-size", type=int, default=32, help="translate --batch-size (default 32)")
    parser.add_argument("--repeats", type=int, default=1, help="measurements per depth (the lowest peak is used)")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of every child (default 1)")
    parser.add_argument(
        "--profile-depth",
        type=int,
        default=None,
        help="depth of the per-step attribution run (default the largest depth; 0: none)",
    )
    parser.add_argument("--suffix", choices=(".nii.gz", ".nii"), default=".nii.gz", help="input/output file type")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"work folder (default {DEFAULT_WORK})")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON report (default benchmarks/results/translate-memory-cpu.json)"
    )
    args = parser.parse_args()
    if args.size < 32:
        parser.error(f"--size {args.size}: must be at least 32")
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: must be at least 1")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: must be at least 1")
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: must be at least 1")
    if args.profile_depth is None:
        args.profile_depth = max(args.depths)
    if args.profile_depth < 0:
        parser.error(f"--profile-depth {args.profile_depth}: give a number of slices, or 0 for no attribution run")
    if inside(args.work, REPO):
        parser.error(f"--work {args.work} is inside the repository; the volumes (GBs) must stay outside it")
    args.out = args.out or RESULTS / "translate-memory-cpu.json"
    if args.out.suffix != ".json":
        parser.error(f"--out {args.out}: give a .json file name")
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; give a .json file name")
    if args.size**2 * 4 * max(args.depths) > 8 * 1024**3:
        parser.error(f"--size {args.size} x --depths {max(args.depths)}: over 8 GiB per volume; choose smaller")
    return args


def main() -> None:
    args = parse_args()
    import numpy  # noqa: F401  (fail early, in the parent, if the environment is broken)

    from synthmed.runtime.versions import versions

    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    logs = args.work / "logs"
    volume_mb = args.size * args.size * 4 / MIB  # one float32 slice, MB
    report: dict[str, Any] = {
        "benchmark": "translate-memory",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "threads_per_child": args.threads,
            "load_average_at_start": load_average(),
            "note": "peak RSS does not depend on CPU load; wall times were measured on a machine whose "
            "load average is given here (other jobs running), so they are indicative only",
        },
        "versions": versions(),
        "source_state_at_start": source_state(),
        "units": "MB = MiB (2^20 bytes); peak RSS = the child's ru_maxrss (os.wait4)",
        "settings": {
            "size": args.size,
            "depths": args.depths,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "suffix": args.suffix,
            "work": str(args.work),
            "command": "python -m synthmed translate RUN IN OUT --batch-size B --device cpu --quiet --overwrite",
        },
        "float32_slice_mb": round(volume_mb, 4),
        "rows": [],
    }
    out = args.out

    def refresh() -> None:
        write_json(out, report)

    run = trained_run(args.work, args.threads)
    report["run"] = {"folder": str(run), "model": "pix2pix", "generator_channels": 8, "slice_size": 64}
    refresh()

    baseline = [
        measured([sys.executable, "-c", BASELINE_CHILD, str(run)], args.threads, logs / "baseline.log")
        for _ in range(args.repeats)
    ]
    report["baseline"] = {
        "what": "python + imports + torch + load_run (the model), no volume",
        "peak_rss_mb": min(b["peak_rss_mb"] for b in baseline),
        "measurements": baseline,
    }
    base = report["baseline"]["peak_rss_mb"]
    say(f"baseline (load only): {base} MB")
    refresh()

    for depth in args.depths:
        name = f"head-{args.size}x{args.size}x{depth}"
        source = head_volume(args.size, depth, args.work / "volumes" / f"{name}{args.suffix}")
        target = args.work / "outputs" / f"{name}-T2{args.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        runs = [
            synthmed_cli(
                [
                    "translate",
                    str(run),
                    str(source),
                    str(target),
                    "--batch-size",
                    str(args.batch_size),
                    "--device",
                    "cpu",
                    "--quiet",
                    "--overwrite",
                ],
                args.threads,
                logs / "translate.log",
            )
            for _ in range(args.repeats)
        ]
        peak = min(r["peak_rss_mb"] for r in runs)
        one_volume = depth * volume_mb
        row = {
            "depth": depth,
            "shape": [args.size, args.size, depth],
            "float32_volume_mb": round(one_volume, 1),
            "input_file_mb": round(source.stat().st_size / MIB, 1),
            "peak_rss_mb": peak,
            "peak_minus_baseline_mb": round(peak - base, 1),
            "peak_minus_baseline_in_volumes": round((peak - base) / one_volume, 2),
            "wall_seconds": min(r["wall_seconds"] for r in runs),
            "measurements": runs,
        }
        report["rows"].append(row)
        say(
            f"Z={depth}: peak {peak} MB (baseline + {peak - base:.0f} MB = {(peak - base) / one_volume:.2f} volumes), "
            f"{row['wall_seconds']} s"
        )
        refresh()

    depths = [r["depth"] for r in report["rows"]]
    slope, intercept = least_squares(depths, [r["peak_rss_mb"] for r in report["rows"]])
    required = 2 * volume_mb  # input + output float32 volumes
    volumes = slope / volume_mb
    report["fit"] = {
        "slope_mb_per_slice": round(slope, 3),
        "intercept_mb": round(intercept, 1),
        "slope_in_float32_volumes": round(volumes, 2),
        "required_mb_per_slice": round(required, 3),
        "required_arrays": "input volume (float32, volume.data) + output volume (float32, the translation); "
        "no whole-volume float64 copy exists on this path (foreground_mask's float64 array is "
        "a sample of at most 2 million voxels)",
        "excess_mb_per_slice": round(slope - required, 3),
        "excess_mb_at_512x512x400": round((volumes - 2) * 400 * 512 * 512 * 4 / MIB),
    }
    accounted = slope <= required * 1.1
    report["verdict"] = (
        f"The memory that grows with Z is {'' if accounted else 'NOT '}accounted for by the whole-volume arrays: "
        f"peak RSS grows by {slope:.2f} MB per {args.size}x{args.size} slice = {volumes:.2f} float32 volumes, against "
        f"{required:.2f} MB (2 volumes: input + output) that must exist"
        + (
            "."
            if accounted
            else f"; about {volumes - 2:.1f} further whole-volume copies are alive at the peak "
            "(the slices themselves are streamed: the model's share does not grow with Z)."
        )
    )
    say(report["verdict"])
    refresh()

    if args.profile_depth:
        name = f"head-{args.size}x{args.size}x{args.profile_depth}"
        source = head_volume(args.size, args.profile_depth, args.work / "volumes" / f"{name}{args.suffix}")
        target = args.work / "outputs" / f"{name}-T2-profile{args.suffix}"
        log = logs / "profile.log"
        measured(
            [sys.executable, "-c", PROFILE_CHILD, str(run), str(source), str(target), str(args.batch_size)],
            args.threads,
            log,
        )
        record = json.loads(log.read_text().strip().splitlines()[-1])
        one_volume = args.profile_depth * volume_mb
        loaded = record["steps"][0]["rss_before_mb"]  # before the first read: imports and the model loaded
        for step in record["steps"]:
            step["held_before_in_volumes"] = round((step["rss_before_mb"] - loaded) / one_volume, 2)
            step["peak_in_volumes"] = round((step["peak_mb"] - loaded) / one_volume, 2)
            step["step_extra_in_volumes"] = round((step["peak_mb"] - step["rss_before_mb"]) / one_volume, 2)
        worst = max(record["steps"], key=lambda s: s["peak_mb"])
        report["attribution"] = {
            "depth": args.profile_depth,
            "float32_volume_mb": round(one_volume, 1),
            "how": "each step of translate.py wrapped in a child process; RSS before the step, and the step's own "
            "peak (VmHWM reset to the current RSS before it); *_in_volumes: above the RSS before the first "
            "step (run loaded), in float32 volumes",
            # not the child's ru_maxrss: resetting VmHWM resets that too
            "peak_rss_mb_whole_run": max(step["peak_mb"] for step in record["steps"]),
            "rss_after_imports_mb": record["rss_after_imports_mb"],
            "rss_with_run_loaded_mb": loaded,
            "steps": record["steps"],
            "peak_step": worst["step"],
            "peak_reset_per_step": record.get("peak_reset_per_step"),
        }
        say(
            f"attribution at Z={args.profile_depth}: peak in {worst['step']} "
            f"({worst['peak_in_volumes']} volumes above the loaded run)"
        )
        for step in record["steps"]:
            say(f"  {step['step']}: held {step['held_before_in_volumes']}, peak {step['peak_in_volumes']} volumes")

    report["machine"]["load_average_at_end"] = load_average()
    report["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    report["complete"] = True
    refresh()
    say(f"wrote {out}")


if __name__ == "__main__":
    main()
