"""Unpaired translation quality: SynDiff versus CycleGAN at an equal training budget, both directions.

Issue 4 asks for the quality of the two unpaired translators on held-out subjects, T1 -> T2 and
T2 -> T1, trained unpaired and evaluated against the true paired image, at an equal training
budget. This benchmark does that through the command line only, each step in its own process:

1. data: ``synthmed phantom`` (8 synthetic heads, 64^3, seed 7) or the three BraTS-layout scans
   of ../shared/data/real/brats; ``synthmed prepare`` once (source T1 = A, target T2 = B, 64 px).
   Phantoms split 5 train / 1 val / 2 test subjects, BraTS 2 train / 0 val / 1 test.
2. ``synthmed train`` for ``syndiff`` and ``cyclegan`` (preset ``small``), the same ``--steps``,
   ``--batch-size`` and ``--seed`` for both. Training time is taken from the run's
   ``train_summary.json`` (the training loop, periodic validation included) and from the wall
   clock of the process (start-up included).
3. For every test subject and both directions, ``synthmed translate RUN INPUT OUT --direction
   A2B|B2A --reference REF --checkpoint last`` (SynDiff with ``--seed 0``), then ``synthmed
   evaluate OUT REF``: masked PSNR/SSIM/MAE/NMSE in the reference's units, inside the
   reference's foreground (evaluate's default mask). ``REF`` is the subject's true scan of the
   output modality; translate takes only its two robust percentiles as the output's intensity
   scale, for both models alike.
4. Identity baseline: ``synthmed evaluate INPUT REF --match-intensity`` (the input scan mapped
   onto the reference's scale by the same two percentiles).

Both models are scored from ``last.pt`` (the end of the equal budget): ``best.pt`` is picked by
validation PSNR of the A2B direction only, and the BraTS split has no validation subject.

Every torch process runs with OMP_NUM_THREADS = MKL_NUM_THREADS = ``--threads`` (train and
translate have no threads option of their own). Phantoms, the prepared folder, runs, outputs
and logs live in ``--work`` (default ~/.cache/synthmed/bench-unpaired-quality, outside the
repository; ``--data brats`` refuses a ``--work`` inside it). A finished run is reused on a
rerun, an unfinished one resumed with ``--resume``. The JSON is rewritten atomically after
every measurement (``"complete": false`` until the end).

    .venv/bin/python benchmarks/unpaired_quality.py --data phantoms|brats [--steps 1500]
        [--batch-size 4] [--seed 0] [--threads 1] [--checkpoint last|best] [--work DIR] [--out F]

Generalised for issue 6 (defaults keep the issue-4 benchmark above unchanged): ``--models``
(comma list of unpaired models, default ``syndiff,cyclegan``), ``--source``/``--target`` (default
T1/T2), ``--directions`` (default ``A2B,B2A``), ``--lesion NAME`` (a per-subject mask file, found in
the test subject's folder by name and binarised (> 0) into the work dir; every prediction and the
identity baseline are then also scored inside it with ``synthmed evaluate PRED REF --mask MASK``)
and ``--brats-test SUBJECT`` (BraTS only: a manifest in the work dir puts that subject in the
test split and the others in train, e.g. TCGA-DU-7294, the one scan with tumour labels), and ``--data ms``
(the BraTS runs of that split, reused, scored on the one MS scan, T1 -> T1POST, with its expert lesion mask).

    .venv/bin/python benchmarks/unpaired_quality.py --data phantoms --models gmm-unit,unit,cyclegan \
        --source T1 --target T1c --directions A2B --lesion lesion --batch-size 2 --steps 1500
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_common import inside, load_average, source_state, thread_env, write_json  # paired_quality uses them as uq.inside, uq.write_json
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"
RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
DEFAULT_WORK = CACHE / "synthmed" / "bench-unpaired-quality"  # outside the repository

MODELS = ("syndiff", "cyclegan")  # the default --models (issue 4)
DEFAULT_SOURCE, DEFAULT_TARGET = "T1", "T2"
PRESET = "small"
SIZE = 64
PHANTOMS = {"subjects": 8, "size": SIZE, "seed": 7}
PHANTOM_SPLIT = "0.7,0.1,0.2"  # 8 subjects -> 5 train, 1 val, 2 test
BRATS_ALIASES = "t1_bet=t1,t1c_bet=t1c,t2_bet=t2,fla_bet=flair"
BRATS_SPLIT = "0.67,0,0.33"  # 3 subjects -> 2 train, 0 val, 1 test
SPLIT_SEED = 0
METRICS = ("psnr", "ssim", "ssim3d", "mae", "nmse")
# direction -> (input modality, output/reference modality), in the plan's names (A = source, B = target)
DIRECTIONS = {"A2B": ("source", "target"), "B2A": ("target", "source")}
BRATS_SUBJECTS = {  # subject folder -> {modality: file name}, for --brats-test (an explicit-split manifest)
    "AURORA-MET-example": {"t1": "t1.nii.gz", "t1c": "t1c.nii.gz", "t2": "t2.nii.gz", "flair": "flair.nii.gz"},
    "BraTS-GLI-00001-000": {"t1": "BraTS-GLI-00001-000-t1n.nii.gz", "t1c": "BraTS-GLI-00001-000-t1c.nii.gz",
                            "t2": "BraTS-GLI-00001-000-t2w.nii.gz", "flair": "BraTS-GLI-00001-000-t2f.nii.gz"},
    "TCGA-DU-7294": {"t1": "TCGA-DU-7294_t1_bet.nii.gz", "t1c": "TCGA-DU-7294_t1c_bet.nii.gz",
                     "t2": "TCGA-DU-7294_t2_bet.nii.gz", "flair": "TCGA-DU-7294_fla_bet.nii.gz"},
}


def say(message: str) -> None:
    print(f"[unpaired-quality {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    print(f"unpaired_quality: error: {message}", file=sys.stderr)
    raise SystemExit(2)






# --------------------------------------------------------------------------- subprocesses




def synthmed(arguments: list[str], threads: int, log: Path) -> float:
    """Run ``python -m synthmed ARGUMENTS`` with ``threads`` threads, output appended to ``log``;
    returns the wall seconds. A failure stops the benchmark with the log's last lines."""
    command = [sys.executable, "-m", "synthmed", *arguments]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as stream:
        stream.write(f"$ {shlex.join(command)}\n")
        stream.flush()
        start = time.perf_counter()
        code = subprocess.run(command, env=thread_env(threads), stdout=stream, stderr=subprocess.STDOUT,
                              cwd=log.parent).returncode
        seconds = time.perf_counter() - start
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        fail(f"`synthmed {arguments[0]}` exited with status {code}; log {log}:\n{tail}")
    return seconds


def subprocess_torch_threads(threads: int) -> int:
    """The thread count torch reports in a child process started with our environment."""
    code = "import torch; print(torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=thread_env(threads), capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip())


# --------------------------------------------------------------------------- data


def data_tag(args: argparse.Namespace) -> str:
    """Names the prepared folder, runs, outputs and logs: ``<data>`` for the issue-4 defaults (so the
    cached runs stay valid), else ``<data>-<source>2<target>[-test-<subject>]`` (lower case)."""
    tag = "brats" if args.data == "ms" else args.data  # ms: scored with the runs trained on BraTS
    if (args.source, args.target) != (DEFAULT_SOURCE, DEFAULT_TARGET):
        tag += f"-{args.source.lower()}2{args.target.lower()}"
    if args.brats_test:
        tag += f"-test-{args.brats_test}"
    return tag


def brats_manifest(work: Path, test_subject: str, modalities: tuple[str, str]) -> Path:
    """A manifest (in the work dir, outside the repository) with an explicit split: ``test_subject``
    in test, the other BraTS scans in train."""
    if test_subject not in BRATS_SUBJECTS:
        fail(f"--brats-test {test_subject!r}: not one of {', '.join(BRATS_SUBJECTS)}")
    lines = ["subject,modality,path,split"]
    for subject, files in BRATS_SUBJECTS.items():
        for modality in modalities:
            path = REAL_DATA / "brats" / subject / files[modality.lower()]
            if not path.is_file():
                fail(f"{path} is missing")
            lines.append(f"{subject},{modality.lower()},{path},{'test' if subject == test_subject else 'train'}")
    manifest = work / f"brats-manifest-test-{test_subject}.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def ms_cases(source: str, target: str) -> list[dict[str, str]]:
    """The MS scan (../shared/data/real/ms/patient07) as the test case of ``--data ms``: T1 -> T1POST
    (the source/target names map to the files ``<NAME>_N4_*.nii.gz``; t1c is T1POST)."""
    folder = REAL_DATA / "ms" / "patient07"
    names = {"t1": "T1", "t1c": "T1POST", "t2": "T2", "flair": "FLAIR"}
    case = {"subject": "patient07"}
    for key, modality in (("source", source), ("target", target)):
        prefix = names.get(modality.lower())
        found = sorted(folder.glob(f"{prefix}_N4_*.nii.gz")) if prefix else []
        if len(found) != 1:
            fail(f"{folder}: expected one {prefix}_N4_*.nii.gz for {modality!r}, found {len(found)}")
        case[key] = str(found[0])
    return [case]


def prepare_data(kind: str, work: Path, threads: int, args: argparse.Namespace) -> tuple[Path, dict]:
    """Phantoms (when asked) and the prepared folder, cached under ``work``; and a description of the inputs."""
    kind = "brats" if kind == "ms" else kind  # ms: train on BraTS, test on the MS scan
    tag = data_tag(args)
    prep, log = work / f"prep-{tag}", work / "logs" / f"prepare-{tag}.log"
    if kind == "phantoms":
        folder, marker = work / "phantoms", work / "phantoms.json"
        if not marker.is_file() or json.loads(marker.read_text()) != PHANTOMS:
            say(f"writing {PHANTOMS['subjects']} phantoms ({SIZE}^3) to {folder}")
            synthmed(["phantom", str(folder), "--subjects", str(PHANTOMS["subjects"]), "--size", str(PHANTOMS["size"]),
                      "--seed", str(PHANTOMS["seed"]), "--overwrite", "--quiet"], threads, log)
            marker.write_text(json.dumps(PHANTOMS))
        arguments = [str(folder), "--source", args.source, "--target", args.target, "--split", PHANTOM_SPLIT]
        inputs = {"kind": kind, "folder": str(folder), "phantoms": PHANTOMS, "split_ratios": PHANTOM_SPLIT}
    else:
        folder = REAL_DATA / "brats"
        source, target = args.source.lower(), args.target.lower()
        if args.brats_test:
            manifest = brats_manifest(work, args.brats_test, (source, target))
            arguments = ["--manifest", str(manifest), "--source", source, "--target", target, "--split", BRATS_SPLIT]
            inputs = {"kind": kind, "folder": str(folder), "manifest": str(manifest), "split_ratios": BRATS_SPLIT,
                      "explicit_test_subject": args.brats_test}
        else:
            arguments = [str(folder), "--source", source, "--target", target, "--split", BRATS_SPLIT,
                         "--alias", BRATS_ALIASES]
            inputs = {"kind": kind, "folder": str(folder), "aliases": BRATS_ALIASES, "split_ratios": BRATS_SPLIT}
    synthmed(["prepare", *arguments, "--size", str(SIZE), "--seed", str(SPLIT_SEED), "--out", str(prep), "--quiet"],
             threads, log)
    inputs["split_seed"] = SPLIT_SEED
    plan = json.loads((prep / "plan.json").read_text())
    if kind == "brats":
        counts = {name: len(plan["split"][name]) for name in ("train", "val", "test")}
        if counts != {"train": 2, "val": 0, "test": 1}:
            fail(f"{prep}: expected 2 train / 0 val / 1 test subjects, the plan has {counts}; "
                 "remove that folder (the BraTS folder changed?) or check the split")
    return prep, inputs


def lesion_mask(case: dict[str, str], name: str, out_folder: Path) -> tuple[Path | None, dict[str, Any]]:
    """The test subject's ``name`` mask (a file in the folder of its source scan whose name, without
    extension and lower case, equals ``name`` or contains it), binarised (> 0) into ``out_folder``.
    Returns (path or None, a description: file, voxels, or why there is none)."""
    import nibabel as nib
    import numpy as np

    folder = Path(case["source"]).parent
    wanted = name.lower()
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith((".nii", ".nii.gz")))
    stems = {p: p.name.lower().removesuffix(".gz").removesuffix(".nii") for p in candidates}
    exact = [p for p in candidates if stems[p] == wanted]
    matches = exact or [p for p in candidates if wanted in stems[p]]
    if len(matches) != 1:
        return None, {"file": None, "voxels": 0,
                      "note": f"{len(matches)} files in {folder} match {name!r}; lesion metrics skipped"}
    image = nib.load(str(matches[0]))
    binary = (np.asarray(image.dataobj) > 0).astype(np.uint8)
    voxels = int(binary.sum())
    record = {"file": str(matches[0]), "voxels": voxels, "rule": "> 0"}
    if voxels == 0:
        record["note"] = "empty mask; lesion metrics skipped"
        return None, record
    out_folder.mkdir(parents=True, exist_ok=True)
    path = out_folder / f"{case['subject']}-{wanted}-binary.nii.gz"
    nib.save(nib.Nifti1Image(binary, image.affine, image.header), str(path))
    record["binary_mask"] = str(path)
    return path, record


def test_cases(plan: dict) -> list[dict[str, str]]:
    """Per test subject: its scan of the plan's source (A) and target (B) modality."""
    cases = []
    for subject in plan["split"]["test"]:
        files = plan["volumes"][subject]["files"]
        cases.append({"subject": subject, "source": files[plan["source"]], "target": files[plan["target"]]})
    if not cases:
        fail("the prepared data has no test subject")
    return cases


# --------------------------------------------------------------------------- training, evaluation


def train_model(model: str, prep: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or reuse a finished, or resume an unfinished) run; returns the training record."""
    name = f"{data_tag(args)}-{model}-{PRESET}-steps{args.steps}-bs{args.batch_size}-seed{args.seed}"
    run = args.work / "runs" / name
    summary_path, timing_path = run / "train_summary.json", run / "bench_timing.json"
    reused = summary_path.is_file()
    if reused:
        say(f"reusing the finished run {run}")
    else:
        resume = (run / "checkpoints" / "last.pt").is_file()
        if not resume and run.exists():  # started but killed before its first checkpoint: start afresh
            shutil.rmtree(run)
        say(f"{'resuming' if resume else 'training'} {model} ({PRESET}) for {args.steps} steps at batch "
            f"{args.batch_size} into {run}")
        arguments = ["train", str(prep), "--model", model, "--preset", PRESET, "--out", str(run),
                     "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
                     "--device", args.device, "--quiet", *(["--resume"] if resume else [])]
        wall = synthmed(arguments, args.threads, args.work / "logs" / f"train-{name}.log")
        timing_path.write_text(json.dumps({"wall_seconds": round(wall, 2), "resumed": resume,
                                           "load_average_after": load_average()}))
    summary = json.loads(summary_path.read_text())
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    info = json.loads((run / "run.json").read_text())
    trained, seconds = summary.get("trained_steps") or 0, summary.get("seconds")
    best = summary.get("best") or {}
    record = {
        "run": str(run),
        "model": model,
        "preset": PRESET,
        "steps": summary.get("steps"),
        "batch_size": info["settings"]["batch_size"],
        "seed": info["settings"]["seed"],
        "images_seen": int(summary.get("steps") or 0) * int(info["settings"]["batch_size"]),
        "parameters": summary.get("parameters"),
        "seconds": seconds,
        "trained_steps_this_session": trained,
        "seconds_per_step": round(seconds / trained, 4) if trained and seconds else None,
        "wall_seconds": timing.get("wall_seconds"),
        "resumed": bool(timing.get("resumed", False)),
        "reused": reused,
        "load_average_after": timing.get("load_average_after"),
        "device": summary.get("device"),
        "best_validation_a2b": best if best.get("value") is not None and math.isfinite(best["value"]) else None,
    }
    if record["steps"] != args.steps:
        fail(f"{run} holds {record['steps']} steps, not {args.steps}; remove it")
    say(f"{model}: {record['steps']} steps, {seconds} s in the training loop ({record['seconds_per_step']} s/step)")
    return record


def read_metrics(path: Path) -> dict[str, float]:
    """The one subject's metrics of an ``evaluate --out`` file (null, an infinite PSNR, becomes inf)."""
    per_subject = json.loads(path.read_text())["per_subject"]
    (values,) = per_subject.values()
    return {key: math.inf if values[key] is None else float(values[key]) for key in METRICS}


def evaluate(pred: Path | str, ref: Path | str, out: Path, match: bool, args: argparse.Namespace,
             mask: Path | None = None) -> dict[str, float]:
    arguments = ["evaluate", str(pred), str(ref), "--out", str(out), "--overwrite", "--quiet",
                 *(["--match-intensity"] if match else []),
                 *(["--mask", str(mask)] if mask is not None else [])]
    synthmed(arguments, args.threads, args.work / "logs" / f"evaluate-{data_tag(args)}.log")
    return read_metrics(out)


def rounded(metrics: dict[str, float] | None) -> dict[str, float] | None:
    return None if metrics is None else {k: round(v, 4) for k, v in metrics.items()}


def translate(run: Path, model: str, direction: str, case: dict[str, str], out: Path,
              args: argparse.Namespace) -> float:
    input_key, output_key = DIRECTIONS[direction]
    arguments = ["translate", str(run), case[input_key], str(out), "--direction", direction,
                 "--reference", case[output_key], "--checkpoint", args.checkpoint, "--device", args.device,
                 "--overwrite", "--quiet", *(["--seed", str(args.seed)] if model == "syndiff" else [])]
    return synthmed(arguments, args.threads, args.work / "logs" / f"translate-{data_tag(args)}.log")


# --------------------------------------------------------------------------- summaries


def mean_of(rows: list[dict]) -> dict[str, Any]:
    result: dict[str, Any] = {"n": len(rows)}
    for key in METRICS:
        values = [r[key] for r in rows if r[key] is not None and math.isfinite(r[key])]
        result[key] = round(sum(values) / len(values), 4) if values else None
    return result


def means(rows: list[dict], keys: tuple[str, ...]) -> dict[str, Any]:
    """Mean metrics grouped by ``keys`` (nested dicts), e.g. ("model", "direction")."""
    grouped: dict[Any, list[dict]] = {}
    for row in rows:
        grouped.setdefault(tuple(row[k] for k in keys), []).append(row)
    result: dict[str, Any] = {}
    for group, members in grouped.items():
        level = result
        for part in group[:-1]:
            level = level.setdefault(part, {})
        level[group[-1]] = mean_of(members)
    return result


def lesion_rows(rows: list[dict]) -> list[dict]:
    """Rows whose lesion metrics exist, with those metrics in place of the overall ones (for ``means``)."""
    return [{**{k: v for k, v in row.items() if k not in METRICS}, **row["lesion"]} for row in rows if row.get("lesion")]


def ranking(by_model: dict[str, dict], models: list[str], key: str) -> list[str]:
    """Models with a value of ``key``, best first (higher PSNR/SSIM is better)."""
    present = [m for m in models if m in by_model and by_model[m].get(key) is not None]
    return sorted(present, key=lambda m: by_model[m][key], reverse=True)


def compare(rows: list[dict], identity: list[dict], models: list[str], direction: str) -> dict[str, Any] | None:
    """One direction, one region (the metrics at the top level of ``rows``): ranking, the first model's
    differences to each other model (mean and per subject) and each model's gain over identity."""
    by_model = means(rows, ("direction", "model")).get(direction, {})
    if not all(m in by_model for m in models):
        return None
    base = means(identity, ("direction",)).get(direction, {})
    first = models[0]
    per_subject: dict[str, dict[str, dict]] = {}
    for row in rows:
        if row["direction"] == direction:
            per_subject.setdefault(row["subject"], {})[row["model"]] = row
    versus = {}
    for other in models[1:]:
        both = [s for s in per_subject.values() if first in s and other in s]
        versus[other] = {
            "psnr_db": round(by_model[first]["psnr"] - by_model[other]["psnr"], 2),
            "ssim": round(by_model[first]["ssim"] - by_model[other]["ssim"], 4),
            "mae": round(by_model[first]["mae"] - by_model[other]["mae"], 4),
            "subjects_higher_psnr": f"{sum(1 for s in both if s[first]['psnr'] > s[other]['psnr'])} of {len(both)}",
            "subjects_higher_ssim": f"{sum(1 for s in both if s[first]['ssim'] > s[other]['ssim'])} of {len(both)}",
        }
    psnr_rank, ssim_rank = ranking(by_model, models, "psnr"), ranking(by_model, models, "ssim")
    return {
        "n_subjects": len(per_subject),
        "ranking_psnr": psnr_rank,
        "ranking_ssim": ssim_rank,
        "ranking_mae": list(reversed(ranking(by_model, models, "mae"))),
        f"{first}_minus": versus,
        "gain_over_identity_psnr_db": {m: round(by_model[m]["psnr"] - base["psnr"], 2) for m in models}
        if base.get("psnr") is not None else None,
        "gain_over_identity_ssim": {m: round(by_model[m]["ssim"] - base["ssim"], 4) for m in models}
        if base.get("ssim") is not None else None,
    }


def summarise(rows: list[dict], identity: list[dict], models: list[str] | tuple[str, ...] = MODELS,
              lesion: bool = False) -> dict[str, Any]:
    """Per direction: which model has the higher mean PSNR and SSIM, by how much, and each gain over identity.

    Two models (issue 4): the original keys. Any number of models: also ``overall`` (and, with a lesion
    mask, ``lesion``) rankings and the first model's differences to the others, and ``fine_structure``:
    whether the first model (the candidate, e.g. gmm-unit) has the best mean PSNR and SSIM inside the
    lesion region (the fine-structure claim of issue 6), computed from the means."""
    models = list(models)
    model_means, identity_means = means(rows, ("direction", "model")), means(identity, ("direction",))
    summary: dict[str, Any] = {}
    for direction, by_model in model_means.items():
        if not all(m in by_model for m in models):
            continue
        entry: dict[str, Any] = {}
        if len(models) == 2:
            a, b = (by_model[m] for m in models)
            base = identity_means.get(direction, {})
            psnr_diff, ssim_diff = a["psnr"] - b["psnr"], a["ssim"] - b["ssim"]
            per_subject: dict[str, dict[str, float]] = {}
            for row in rows:
                if row["direction"] == direction:
                    per_subject.setdefault(row["subject"], {})[row["model"]] = row["psnr"]
            better = sum(1 for s in per_subject.values() if len(s) == 2 and s[models[0]] > s[models[1]])
            entry.update({
                "psnr_winner": models[0] if psnr_diff > 0 else models[1],
                "psnr_margin_db": round(abs(psnr_diff), 2),
                "ssim_winner": models[0] if ssim_diff > 0 else models[1],
                "ssim_margin": round(abs(ssim_diff), 4),
                f"{models[0]}_minus_{models[1]}_psnr_db": round(psnr_diff, 2),
                f"subjects_{models[0]}_higher_psnr": f"{better} of {len(per_subject)}",
                "gain_over_identity_psnr_db": {m: round(by_model[m]["psnr"] - base["psnr"], 2) for m in models}
                if base.get("psnr") is not None else None,
            })
        if len(models) != 2 or lesion:
            entry["overall"] = compare(rows, identity, models, direction)
        if lesion:
            region = compare(lesion_rows(rows), lesion_rows(identity), models, direction)
            entry["lesion"] = region
            overall = entry["overall"]
            if region is not None and overall is not None:
                first = models[0]
                best_psnr, best_ssim = region["ranking_psnr"][0] == first, region["ranking_ssim"][0] == first
                entry["fine_structure"] = {
                    "claim": f"{first} preserves fine structure better: the best mean PSNR and SSIM inside the lesion "
                             "region",
                    "candidate": first,
                    "best_lesion_psnr": best_psnr,
                    "best_lesion_ssim": best_ssim,
                    "best_overall_psnr": overall["ranking_psnr"][0] == first,
                    "best_overall_ssim": overall["ranking_ssim"][0] == first,
                    "lesion_psnr_db_vs": {m: d["psnr_db"] for m, d in region[f"{first}_minus"].items()},
                    "lesion_ssim_vs": {m: d["ssim"] for m, d in region[f"{first}_minus"].items()},
                    "overall_psnr_db_vs": {m: d["psnr_db"] for m, d in overall[f"{first}_minus"].items()},
                    "overall_ssim_vs": {m: d["ssim"] for m, d in overall[f"{first}_minus"].items()},
                    "supported": bool(best_psnr and best_ssim),
                    "verdict": ("seen" if best_psnr and best_ssim else "partly seen" if best_psnr or best_ssim
                                else "not seen") + f" on {region['n_subjects']} test subject(s), one seed",
                }
        summary[direction] = entry
    return summary


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("phantoms", "brats", "ms"), default="phantoms",
                        help="ms: the runs are trained on BraTS (all but --brats-test, shared with --data brats) "
                             "and scored on the one MS scan (patient07, a site the models never saw)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated unpaired models, all trained with the same budget (default "
                             f"{','.join(MODELS)}); the first is the candidate the summary compares with the others")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help=f"modality A (default {DEFAULT_SOURCE})")
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"modality B (default {DEFAULT_TARGET})")
    parser.add_argument("--directions", default="A2B,B2A", help="A2B, B2A or both (default A2B,B2A)")
    parser.add_argument("--lesion", default=None, metavar="NAME",
                        help="per-subject mask file (e.g. lesion, seg): also score inside it (> 0)")
    parser.add_argument("--brats-test", default=None, metavar="SUBJECT",
                        help="BraTS only: put this subject in the test split, the others in train (a manifest in "
                             "the work dir), e.g. TCGA-DU-7294, the one scan with tumour labels")
    parser.add_argument("--steps", type=int, default=1500, help="training steps, the same for all models")
    parser.add_argument("--batch-size", type=int, default=4, help="training batch size, the same for all models")
    parser.add_argument("--seed", type=int, default=0, help="training seed and SynDiff's sampling seed")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of every torch process")
    parser.add_argument("--checkpoint", choices=("last", "best"), default="last",
                        help="checkpoint translated (default last: the end of the equal budget)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help=f"cache for data, prepared slices, runs and outputs (default {DEFAULT_WORK})")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/unpaired-quality-<data>[-<source>2<target>]"
                             "[-<models>]-<device>.json; the optional parts only when not the defaults)")
    args = parser.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.directions = [d.strip().upper() for d in args.directions.split(",") if d.strip()]
    if not args.models or len(set(args.models)) != len(args.models):
        parser.error("--models needs one or more distinct model names")
    if not args.directions or any(d not in DIRECTIONS for d in args.directions):
        parser.error("--directions takes A2B, B2A or A2B,B2A")
    if args.brats_test and args.data not in ("brats", "ms"):
        parser.error("--brats-test is for --data brats or ms")
    for key in ("steps", "batch_size", "threads"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    args.work = args.work.expanduser().resolve()
    return args


def main() -> None:
    args = parse_args()
    if args.data == "ms" and not (REAL_DATA / "ms").is_dir():
        print(f"unpaired_quality: {REAL_DATA / 'ms'} is absent; skipping the ms benchmark (nothing written)",
              file=sys.stderr)
        return
    if args.data in ("brats", "ms") and not (REAL_DATA / "brats").is_dir():
        print(f"unpaired_quality: {REAL_DATA / 'brats'} is absent; skipping the brats benchmark (nothing written)",
              file=sys.stderr)
        return
    if args.data in ("brats", "ms") and inside(args.work, REPO):
        fail(f"--work {args.work} is inside the repository; prepared real scans must stay outside it")

    import torch

    from synthmed.runtime.versions import versions

    torch.set_num_threads(args.threads)
    name_parts = [args.data]
    if (args.source, args.target) != (DEFAULT_SOURCE, DEFAULT_TARGET):
        name_parts.append(f"{args.source.lower()}2{args.target.lower()}")
    if tuple(args.models) != MODELS:
        name_parts.append("-".join(args.models))
    out = args.out or RESULTS / f"unpaired-quality-{'-'.join(name_parts)}-{args.device}.json"
    models, directions = list(args.models), {d: DIRECTIONS[d] for d in args.directions}
    started = time.perf_counter()
    machine = {
        "platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "device": args.device,
        "threads_requested": args.threads, "subprocess_torch_threads": subprocess_torch_threads(args.threads),
        "load_average_at_start": load_average(),
    }
    args.work.mkdir(parents=True, exist_ok=True)
    prep, inputs = prepare_data(args.data, args.work, args.threads, args)
    plan = json.loads((prep / "plan.json").read_text())
    cases = test_cases(plan) if args.data != "ms" else ms_cases(plan["source"], plan["target"])
    if args.data == "ms":
        inputs.update({"kind": "ms", "trained_on": "brats (the plan's train split)",
                       "test_folder": str(REAL_DATA / "ms" / "patient07")})
    tag = data_tag(args)
    masks: dict[str, Path | None] = {}
    mask_info: dict[str, dict] = {}
    if args.lesion:
        for case in cases:
            masks[case["subject"]], mask_info[case["subject"]] = lesion_mask(case, args.lesion,
                                                                             args.work / "masks" / tag)
            say(f"lesion mask {case['subject']}: {mask_info[case['subject']]}")
    report: dict[str, Any] = {
        "benchmark": "unpaired-quality",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "machine": machine,
        "versions": versions(),
        "source_state_at_start": source_state(),
        "data": {
            **inputs,
            "prepared": str(prep),
            "source_A": plan["source"],
            "target_B": plan["target"],
            "slice_size": int(plan["size"]),
            "axis": plan["axis"],
            "subjects": {name: list(plan["split"][name]) for name in ("train", "val", "test")},
            "n_subjects": {name: len(plan["split"][name]) for name in ("train", "val", "test")},
            "n_slices": plan["n_slices"],
            "directions": {"A2B": f"{plan['source']} -> {plan['target']}", "B2A": f"{plan['target']} -> {plan['source']}"},
            "directions_run": list(directions),
            "lesion": {"name": args.lesion, "per_subject": mask_info} if args.lesion else None,
        },
        "budget": {
            "models": models, "preset": PRESET, "steps": args.steps, "batch_size": args.batch_size,
            "images_seen": args.steps * args.batch_size,
            "images_seen_note": "slices per domain: each step takes batch_size source (A) slices and batch_size "
                                "unpaired target (B) slices",
            "seed": args.seed, "threads": args.threads, "training": {},
        },
        "evaluation": {
            "checkpoint": args.checkpoint,
            "translate": "synthmed translate RUN INPUT OUT --direction A2B|B2A --reference REF (the true scan of the "
                         "output modality: only its two robust percentiles set the output's scale), same for both "
                         "models; syndiff with --seed " + str(args.seed) + " (one sample, T = 4 steps)",
            "metrics": "synthmed evaluate OUT REF: whole volume in the reference's units, inside the reference's "
                       "foreground (evaluate's default mask); PSNR data range = reference range in the mask",
            "identity": "synthmed evaluate INPUT REF --match-intensity (the input scan mapped linearly onto the "
                        "reference's scale by the same two percentiles)",
            **({"lesion_metrics": "the same evaluate calls with --mask MASK, MASK = the subject's '" + args.lesion +
                                  "' file binarised (> 0): metrics inside the lesion region only, PSNR data range = "
                                  "the reference's range inside that mask (so lesion PSNR is not comparable with "
                                  "overall PSNR, only between methods). Subjects with an empty or missing mask "
                                  "have lesion = null"} if args.lesion else {}),
        },
        "identity": [],
        "rows": [],
        "identity_means": {},
        "means": {},
        **({"lesion_identity_means": {}, "lesion_means": {}} if args.lesion else {}),
        "summary": {},
    }
    write_json(out, report)
    say(f"{args.data}: {plan['source']} <-> {plan['target']}, test subjects {', '.join(c['subject'] for c in cases)}; "
        f"writing {out}")

    def lesion_metrics(pred: Path | str, ref: str, json_path: Path, match: bool, subject: str) -> dict | None:
        if not args.lesion or masks.get(subject) is None:
            return None
        return rounded(evaluate(pred, ref, json_path.with_name(json_path.stem + "-lesion.json"), match, args,
                                masks[subject]))

    def refresh() -> None:
        report["identity_means"] = means(report["identity"], ("direction",))
        report["means"] = means(report["rows"], ("model", "direction"))
        if args.lesion:
            report["lesion_identity_means"] = means(lesion_rows(report["identity"]), ("direction",))
            report["lesion_means"] = means(lesion_rows(report["rows"]), ("model", "direction"))
        report["summary"] = summarise(report["rows"], report["identity"], models, bool(args.lesion))
        write_json(out, report)

    outputs = args.work / "outputs" / (tag if args.data != "ms" else "ms-scored-with-" + tag)
    for direction, (input_key, output_key) in directions.items():
        for case in cases:
            json_path = outputs / "identity" / direction / f"{case['subject']}.json"
            metrics = evaluate(case[input_key], case[output_key], json_path, True, args)
            row = {"model": "identity", "direction": direction, "subject": case["subject"], **rounded(metrics)}
            if args.lesion:
                row["lesion"] = lesion_metrics(case[input_key], case[output_key], json_path, True, case["subject"])
            report["identity"].append(row)
            refresh()
            say(f"identity {direction} {case['subject']}: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}")

    for model in models:
        training = train_model(model, prep, args)
        report["budget"]["training"][model] = training
        write_json(out, report)
        run = Path(training["run"])
        for direction, (_, output_key) in directions.items():
            for case in cases:
                folder = outputs / run.name / direction
                prediction = folder / f"{case['subject']}.nii.gz"
                seconds = translate(run, model, direction, case, prediction, args)
                json_path = folder / f"{case['subject']}.json"
                metrics = evaluate(prediction, case[output_key], json_path, False, args)
                row = {"model": model, "direction": direction, "subject": case["subject"], **rounded(metrics),
                       "translate_wall_seconds": round(seconds, 2)}
                if args.lesion:
                    row["lesion"] = lesion_metrics(prediction, case[output_key], json_path, False, case["subject"])
                report["rows"].append(row)
                refresh()
                say(f"{model} {direction} {case['subject']}: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}")

    machine["load_average_at_end"] = load_average()
    report["complete"] = True
    report["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    write_json(out, report)
    for direction, entry in report["summary"].items():
        if "psnr_winner" in entry:
            say(f"{direction}: {entry['psnr_winner']} higher PSNR by {entry['psnr_margin_db']} dB; "
                f"{entry['ssim_winner']} higher SSIM by {entry['ssim_margin']}")
        if entry.get("overall"):
            say(f"{direction}: PSNR ranking {entry['overall']['ranking_psnr']}, SSIM {entry['overall']['ranking_ssim']}")
        if entry.get("fine_structure"):
            say(f"{direction}: fine-structure claim ({models[0]}): {entry['fine_structure']['verdict']}")
    say(f"wrote {out}")


if __name__ == "__main__":
    main()
