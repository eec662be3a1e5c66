"""Intensity scale of MR outputs without ``--reference``, on the dev real scans.

A user translating a T1 has no T2 whose scale the output could take. ``prepare`` fits a scale model on the
training pairs (``plan.json``'s ``target_scale``: the training targets' median (lo, hi), or (lo, hi)
proportional to the input's own range, whichever predicts held-out training subjects better). This script
measures, for one model trained per task, each held-out subject translated three ways:

- ``reference``: the output on the real target's scale (``translate --reference``), the best case;
- ``plan``: without a reference, the plan's scale model (what ``translate`` does now);
- ``median``: without a reference, the training targets' median scale (what ``translate`` did before);

and the identity baseline (the source mapped onto the target's scale, ``evaluate --match-intensity``). Scores
are the toolkit's (``synthmed evaluate``: masked PSNR/SSIM in the target's units, inside its foreground).

Tasks, from ``../shared/data/real`` (files linked under uniform names into ``--work``, never copied into the
repository):

- ``t1t2``: T1 -> T2 of ``brats/*`` (3) and ``ms/patient07``: 4 subjects, split 0.5/0.25/0.25.
- ``flair-t1c``: FLAIR -> T1c of ``brats/*`` (3, raw scanner units), ``brats2013/*`` (6, z-scored inside the
  brain) and ``ms/patient07`` (T1POST): 10 subjects, split 0.6/0.2/0.2; raw and z-scored scales mixed, as a
  user pooling public sets would have them.

Each: ``prepare --size 64`` (seed 0), ``train --model pix2pix --preset small --steps N --batch-size 8``.

    cd benchmarks && ../.venv/bin/python scale_without_reference.py [--task t1t2|flair-t1c|all] [--steps 300]
        [--work DIR] [--out results/scale-without-reference-cpu.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

from synthmed.benchmarking.results import write_json
from synthmed.benchmarking.runner import inside, source_state
from synthmed.data.io import read_volume, write_volume
from synthmed.data.normalize import Normalization
from synthmed.data.prepare import prepare
from synthmed.workflows.evaluate import evaluate_pairs
from synthmed.workflows.train import train
from synthmed.workflows.translate import _reference_normalization, load_run, translate_volume

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"


# subject folder -> (source file, target file), per task
def _t1t2() -> dict[str, tuple[Path, Path]]:
    found = {}
    for folder in sorted((REAL / "brats").iterdir()):
        names = {f.name.lower(): f for f in folder.iterdir()}
        source = next(
            f for n, f in names.items() if n in ("t1.nii.gz",) or n.endswith(("-t1n.nii.gz", "_t1_bet.nii.gz"))
        )
        target = next(
            f for n, f in names.items() if n in ("t2.nii.gz",) or n.endswith(("-t2w.nii.gz", "_t2_bet.nii.gz"))
        )
        found[folder.name] = (source, target)
    ms = REAL / "ms" / "patient07"
    found["patient07"] = (next(ms.glob("T1_*.nii.gz")), next(ms.glob("T2_*.nii.gz")))
    return found


def _flair_t1c() -> dict[str, tuple[Path, Path]]:
    found = {}
    for folder in sorted((REAL / "brats").iterdir()):
        names = {f.name.lower(): f for f in folder.iterdir()}
        source = next(
            f for n, f in names.items() if n == "flair.nii.gz" or n.endswith(("-t2f.nii.gz", "_fla_bet.nii.gz"))
        )
        target = next(
            f for n, f in names.items() if n == "t1c.nii.gz" or n.endswith(("-t1c.nii.gz", "_t1c_bet.nii.gz"))
        )
        found[folder.name] = (source, target)
    for folder in sorted((REAL / "brats2013").glob("brats_*")):
        found[folder.name] = (next(folder.glob("Flair_*.nii.gz")), next(folder.glob("T1c_*.nii.gz")))
    ms = REAL / "ms" / "patient07"
    found["patient07"] = (next(ms.glob("FLAIR_*.nii.gz")), next(ms.glob("T1POST_*.nii.gz")))
    return found


TASKS = {"t1t2": (_t1t2, ("T1", "T2"), "0.5,0.25,0.25"), "flair-t1c": (_flair_t1c, ("FLAIR", "T1c"), "0.6,0.2,0.2")}


def _scores(pairs) -> dict:
    result = evaluate_pairs(pairs)
    return {
        "per_subject": {s: {k: result["per_subject"][s][k] for k in ("psnr", "ssim")} for s in result["per_subject"]},
        "mean": {k: result["mean"][k] for k in ("psnr", "ssim")},
    }


def run_task(name: str, steps: int, work: Path) -> dict:
    subjects_of, (source_name, target_name), split = TASKS[name]
    data = work / name / "data"
    for subject, (source, target) in subjects_of().items():
        (data / subject).mkdir(parents=True, exist_ok=True)
        for link, path in ((f"{source_name}.nii.gz", source), (f"{target_name}.nii.gz", target)):
            if not (data / subject / link).exists():
                (data / subject / link).symlink_to(path)
    prep = prepare(
        data,
        source=source_name,
        target=target_name,
        out=work / name / "prep",
        size=64,
        split=split,
        seed=0,
        progress=False,
    )
    plan = json.loads((prep / "plan.json").read_text())
    run = work / name / "run"
    started = time.monotonic()
    if not (run / "checkpoints" / "last.pt").exists():
        torch.manual_seed(0)
        train(prep, model="pix2pix", preset="small", out=run, steps=steps, batch_size=8, progress=False)
    train_seconds = round(time.monotonic() - started, 1)
    loaded = load_run(run, checkpoint="last")
    target = plan["target"]
    median = Normalization.from_dict(plan["reference_normalization"][target])
    outputs = work / name / "outputs"
    rows: dict[str, list] = {"reference": [], "plan": [], "median": [], "identity_matched": []}
    for subject in plan["split"]["test"]:
        source_file = data / subject / f"{source_name}.nii.gz"
        reference_file = data / subject / f"{target_name}.nii.gz"
        volume = read_volume(source_file)
        for way, normalization in (
            ("reference", _reference_normalization(loaded, reference_file)),
            ("plan", None),
            ("median", median),
        ):
            image = translate_volume(loaded, volume, normalization).image
            out = outputs / way / subject / f"{target_name}.nii.gz"
            out.parent.mkdir(parents=True, exist_ok=True)
            write_volume(out, image, like=volume, overwrite=True)
            rows[way].append((subject, out, reference_file))
        rows["identity_matched"].append((subject, source_file, reference_file))
    scores = {way: _scores(pairs) for way, pairs in rows.items() if way != "identity_matched"}
    identity = evaluate_pairs(rows["identity_matched"], match=True)
    scores["identity_matched"] = {"mean": {k: identity["mean"][k] for k in ("psnr", "ssim")}}
    return {
        "subjects": {"train": plan["split"]["train"], "val": plan["split"]["val"], "test": plan["split"]["test"]},
        "target_scale": plan["target_scale"],
        "train_steps": steps,
        "train_seconds": train_seconds,
        "scores": scores,
        "plan_minus_median_psnr_db": round(scores["plan"]["mean"]["psnr"] - scores["median"]["mean"]["psnr"], 2),
        "reference_minus_plan_psnr_db": round(scores["reference"]["mean"]["psnr"] - scores["plan"]["mean"]["psnr"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="all", choices=[*TASKS, "all"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "synthmed" / "bench-scale")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "scale-without-reference-cpu.json"
    )
    args = parser.parse_args()
    if not REAL.is_dir():
        raise SystemExit(f"{REAL} is absent: this benchmark needs the dev real scans")
    if inside(args.work, REPO):
        raise SystemExit(f"--work {args.work} lies inside the repository; real data must stay outside it")
    torch.set_num_threads(2)
    report = {
        "benchmark": "scale_without_reference",
        "date": datetime.date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "command": " ".join(["python", "scale_without_reference.py", *sys.argv[1:]]),
        **source_state(),
        "tasks": {},
    }
    for name in TASKS if args.task == "all" else [args.task]:
        report["tasks"][name] = run_task(name, args.steps, args.work)
        write_json(args.out, report)
        summary = report["tasks"][name]["scores"]
        print(
            name,
            {way: round(s["mean"]["psnr"], 2) for way, s in summary.items()},
            "model:",
            report["tasks"][name]["target_scale"]["model"],
        )


if __name__ == "__main__":
    main()
