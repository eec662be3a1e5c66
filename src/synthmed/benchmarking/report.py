"""``synthmed report BENCHMARK_DIR --out report.html``: one self-contained HTML page (images embedded as PNG data)
from a ``synthmed benchmark`` folder (one task, or the real suite's folder of tasks: one section per task).

Sections: the protocol and data; the metrics table (identity and every method; mean +/- sd over the test
subjects, or over repeats when there are several; the best value of each column marked, with the direction that
counts as better stated in the header), in the toolkit's convention or, with ``--convention max-normalised``, in
the reference repositories' (SynDiff's test code), the page saying which; FID where the benchmark had Inception
weights; per-subject box plots of PSNR and SSIM; a slice viewer grid per test subject (source | each method |
target, and under each method its absolute error map in target units); uncertainty maps (the per-voxel standard
deviation over samples) of the methods translated with ``--samples K``; training curves from each run's
``log.csv``; the exact configs and versions of every run.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from synthmed.benchmarking.layout import TaskFolder, translated_volumes
from synthmed.benchmarking.results import load_benchmark_record
from synthmed.data.io import read_volume
from synthmed.data.plan import load_plan
from synthmed.engine.run_folder import RunFolder
from synthmed.errors import SynthmedError
from synthmed.files import output_lock, record_written, refuse_replacing_foreign, write_text_atomic
from synthmed.workflows.translate import std_path

# (region, metric, header, better: "high" or "low", format). Region: a score region of benchmark.json
# ("overall", "lesion", "max_normalised"), "fid", or "run" (a figure of the training/translation run).
SCORE_COLUMNS = {
    "toolkit": [
        ("overall", "psnr", "PSNR (dB)", "high", "{:.2f}"),
        ("overall", "ssim", "SSIM", "high", "{:.3f}"),
        ("overall", "ssim3d", "SSIM 3D", "high", "{:.3f}"),
        ("overall", "mae", "MAE", "low", "{:.2f}"),
        ("overall", "psnr_fit", "PSNR (dB), scale-free", "high", "{:.2f}"),
        ("overall", "psnr_dz", "through-plane PSNR (dB)", "high", "{:.2f}"),
        ("lesion", "psnr", "lesion PSNR (dB)", "high", "{:.2f}"),
        ("lesion", "ssim", "lesion SSIM", "high", "{:.3f}"),
        ("lesion", "mae", "lesion MAE", "low", "{:.2f}"),
    ],
    "max-normalised": [
        ("max_normalised", "psnr", "PSNR (dB), max-normalised", "high", "{:.2f}"),
        ("max_normalised", "ssim", "SSIM, max-normalised", "high", "{:.3f}"),
    ],
}
FID_COLUMN = ("fid", "fid", "FID", "low", "{:.2f}")
RUN_COLUMNS = [
    ("run", "train_seconds", "training (s)", "low", "{:.1f}"),
    ("run", "steps", "steps", "", "{:.0f}"),  # not ranked: a time budget gives faster methods more
    ("run", "train_slices_per_second", "training slices/s", "high", "{:.1f}"),
    ("run", "translate_seconds_per_volume", "translate s/volume", "low", "{:.2f}"),
    ("run", "train_peak_rss_mb", "peak RSS training (MB)", "low", "{:.0f}"),
    ("run", "translate_peak_rss_mb", "peak RSS translate (MB)", "low", "{:.0f}"),
    ("run", "parameters", "parameters", "low", "{:,.0f}"),
]
CONVENTIONS = {
    "toolkit": "the toolkit's convention: {protocol}",
    "max-normalised": (
        "the reference repositories' convention (SynDiff's test code): {max_normalised}. Use it to "
        "compare with published tables; it ignores intensity scale and includes the background"
    ),
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.best { font-weight: bold; background: #e6f4e6; }
img { max-width: 100%; border: 1px solid #ddd; margin: 4px 0; }
details { margin: 4px 0; } pre { background: #f6f6f6; padding: 8px; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; }
"""


def report(
    source: str | Path,
    out: str | Path,
    *,
    slices_per_subject: int = 1,
    max_subjects: int = 3,
    convention: str = "toolkit",
    overwrite: bool = False,
) -> Path:
    """Write the HTML report of the benchmark folder ``source`` to ``out``; returns ``out``. An existing ``out`` is
    replaced only with ``overwrite``, and only if synthmed wrote it."""
    source, out = Path(source), Path(out)
    if convention not in SCORE_COLUMNS:
        raise SynthmedError(f"--convention {convention}: use one of {', '.join(SCORE_COLUMNS)}")
    if out.is_dir():
        raise SynthmedError(f"--out {out} is a folder; give a file name like report.html")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise SynthmedError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
        refuse_replacing_foreign([out], "report")
    with output_lock(out):
        page = _report_page(source, convention, slices_per_subject, max_subjects)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, page)
        record_written([out], "report")
    return out


def _report_page(source: Path, convention: str, slices_per_subject: int, max_subjects: int) -> str:
    path = source / "benchmark.json"
    if not path.is_file():
        raise SynthmedError(f"{source}: no benchmark.json here; run `synthmed benchmark --out {source}` first")
    bench = load_benchmark_record(path)
    if "tasks" in bench:  # the real suite: one benchmark folder per task
        tasks = [
            (_task_folder(source, t["folder"], record), record, name)
            for name, t in bench["tasks"].items()
            if (source / t["folder"] / "benchmark.json").is_file()
            for record in [load_benchmark_record(source / t["folder"] / "benchmark.json")]
        ]
        title = f"synthmed benchmark, suite {html.escape(str(bench.get('suite')))}: {len(tasks)} task(s)"
    else:
        tasks, title = [(TaskFolder(source), bench, "")], None
    if not any(task["methods"] for _, task, _ in tasks):
        raise SynthmedError(f"{path}: no method has finished yet; nothing to report")
    parts = [f"<h1>{title}</h1>"] if title else []
    for folder, task, name in tasks:
        if task["methods"]:
            try:
                parts += _task_sections(folder, task, name, convention, slices_per_subject, max_subjects)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
                # The schema checks what every report reads; deeper entries (per-subject scores, ...) are
                # checked here, where they are used.
                what = (
                    f"entry {error.args[0]!r} is missing"
                    if isinstance(error, KeyError)
                    else f"an entry does not fit ({type(error).__name__}: {str(error)[:80]})"
                )
                raise SynthmedError(
                    f"{folder.record}: {what}; the file is damaged or from another "
                    "version: run the benchmark again into a new --out"
                ) from None
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>synthmed report</title><style>{STYLE}</style>"
        f"</head><body>{''.join(parts)}</body></html>"
    )


def _task_folder(suite: Path, name: str, record: dict) -> TaskFolder:
    """A task of a suite; a reversed task's runs are its forward task's (``trained_in``, a sibling folder)."""
    trained_in = record.get("trained_in")
    if trained_in is None:
        return TaskFolder(suite / name)
    if not isinstance(trained_in, str) or Path(trained_in).name != trained_in or trained_in in ("", ".", ".."):
        raise SynthmedError(
            f"{suite / name / 'benchmark.json'}: field trained_in {trained_in!r} must name a task "
            "folder of the suite; run the benchmark again into a new --out"
        )
    return TaskFolder(suite / name, runs_root=suite / trained_in / "runs")


def _task_sections(
    folder: TaskFolder, bench: dict, name: str, convention: str, slices_per_subject: int, max_subjects: int
) -> list[str]:
    heading = "h2" if name else "h1"
    sub = "h3" if name else "h2"
    table_id = f"metrics-{name}" if name else "metrics"
    return [
        f"<{heading}>synthmed benchmark: {html.escape(bench['data']['source'])} &rarr; "
        f"{html.escape(bench['data']['target'])}</{heading}>",
        _protocol(bench, convention),
        f"<{sub}>Metrics</{sub}>",
        _metrics_table(bench, convention, table_id),
        _ranking(bench),
        f"<{sub}>Per-subject scores</{sub}>",
        _img(_box_plots(bench, convention), "per-subject box plots"),
        f"<{sub}>Slices</{sub}>",
        *_slice_grids(folder, bench, slices_per_subject, max_subjects),
        f"<{sub}>Uncertainty maps</{sub}>",
        *_uncertainty_maps(folder, bench, max_subjects),
        f"<{sub}>Training curves</{sub}>",
        *_training_curves(folder, bench),
        f"<{sub}>Configs and versions</{sub}>",
        *_configs(folder, bench),
    ]


def _protocol(bench: dict, convention: str) -> str:
    data, settings = bench["data"], bench["settings"]
    split = {k: len(v) for k, v in data["split"].items()}
    budget = f"{settings['steps']} training steps"
    if settings.get("budget_minutes"):
        budget = f"{settings['budget_minutes']:g} training minutes" + (
            f" (at most {settings['steps']} steps)" if settings["steps"] < 1_000_000 else ""
        )
    samples = settings.get("samples", 1)
    conventions = bench.get("conventions", {})
    if convention == "max-normalised" and "max_normalised" not in conventions:
        raise SynthmedError("this benchmark predates the max-normalised scores; rerun it or use --convention toolkit")
    shown = CONVENTIONS[convention].format(
        protocol=html.escape(bench["protocol"]), max_normalised=html.escape(conventions.get("max_normalised", ""))
    )
    fid = bench.get("fid") or {}
    fid_text = (
        f"FID: Inception-v3 ({html.escape(str(fid.get('variant')))}) from {html.escape(str(fid.get('weights')))}; "
        f"{html.escape(str(fid.get('images')))}."
        if fid.get("available")
        else f"FID: not computed ({html.escape(str(fid.get('unavailable', 'not part of this benchmark')))})."
    )
    if "methods" in settings:
        presets = ", ".join(f"{label}: {m['model']} {m['preset']}" for label, m in settings["methods"].items())
    else:  # written before methods carried presets: one preset for all
        presets = f"preset {settings['preset']}"
    return (
        f"<p>Suite <b>{html.escape(str(bench.get('suite')))}</b>: {budget} at batch "
        f"{settings['batch_size']} for every method ({html.escape(presets)}), "
        f"{settings['repeats']} repeat(s) from seed {settings['seed']}"
        + (f", {samples} samples per slice for stochastic methods" if samples > 1 else "")
        + f"; subjects train/val/test {split.get('train')}/{split.get('val')}/{split.get('test')} "
        f"({html.escape(str(data['folder']))}).</p>"
        f"<p class='note'><b>Metrics shown: {html.escape(convention)}</b>, {shown}. {fid_text}</p>"
    )


def _columns(bench: dict, convention: str) -> list[tuple[str, str, str, str, str]]:
    fid = [FID_COLUMN] if (bench.get("fid") or {}).get("available") else []
    runs = RUN_COLUMNS
    if bench["settings"].get("budget_minutes"):  # equal training time: its seconds are not a ranking
        runs = [(r, m, title, "" if m == "train_seconds" else better, fmt) for r, m, title, better, fmt in runs]
    return SCORE_COLUMNS[convention] + fid + runs


def _values(bench: dict, region: str, metric: str) -> dict[str, tuple[float | None, float | None]]:
    """(mean, sd) per row: identity (scores only), then each method; sd over subjects for one repeat, over
    repeats for several."""

    def from_scores(scores: dict) -> tuple[float | None, float | None]:
        if region == "fid":
            return scores.get("fid"), None
        part = scores.get(region)
        if not part:
            return None, None
        spread = (part.get("sd") or {}).get(metric) if part.get("n", 0) > 1 else None  # no sd of one subject
        return part["mean"].get(metric), spread

    rows = {"identity": from_scores(bench["identity"]) if region != "run" else (None, None)}
    for name, entry in bench["methods"].items():
        repeats = entry["repeats"]
        if len(repeats) == 1:
            rows[name] = (repeats[0].get(metric), None) if region == "run" else from_scores(repeats[0]["scores"])
        else:
            key = metric if region in ("run", "fid") else f"{region}_{metric}"
            stat = entry["summary"].get(key) or {}
            rows[name] = (stat.get("mean"), stat.get("sd"))
    return rows


def _ranking(bench: dict) -> str:
    """The ranking by PSNR and, where the suite states one, whether a paper's claimed ordering held here."""
    ranking = bench.get("ranking")
    if not ranking:
        return ""
    gains = ranking.get("gain_over_identity_psnr_db", {})
    order = " &gt; ".join(
        f"{html.escape(m)} ({gains[m]:+.2f} dB over identity)" if m in gains else html.escape(m)
        for m in ranking["psnr"]
    )
    text = f"<p class='note'>Ranking by PSNR: {order}.</p>"
    claim = ranking.get("claim")
    if claim:
        held = {True: "holds", False: "does not hold", None: "not tested (not every method was run)"}
        text += (
            f"<p class='note'>Claim: {html.escape(' > '.join(claim['order']))} "
            f"({html.escape(str(claim.get('source', '')))}): by PSNR it {held[claim['holds_psnr']]}, by SSIM it "
            f"{held[claim['holds_ssim']]} on this benchmark.</p>"
        )
    return text


def _metrics_table(bench: dict, convention: str, table_id: str = "metrics") -> str:
    columns = _columns(bench, convention)
    arrows = {"high": " &uarr;", "low": " &darr;", "": ""}
    header = "".join(f"<th>{html.escape(title)}{arrows[better]}</th>" for _, _, title, better, _ in columns)
    values = {(region, metric): _values(bench, region, metric) for region, metric, *_ in columns}
    best: dict[tuple[str, str], set[str]] = {}
    for region, metric, _, better, _ in columns:
        present = {row: v[0] for row, v in values[region, metric].items() if v[0] is not None and math.isfinite(v[0])}
        if present and better:
            target = max(present.values()) if better == "high" else min(present.values())
            best[region, metric] = {row for row, value in present.items() if value == target}
    body = []
    for row in ["identity", *bench["methods"]]:
        cells = []
        for region, metric, _, _, fmt in columns:
            mean, sd = values[region, metric][row]
            text = "" if mean is None else fmt.format(mean) + ("" if sd is None else " &plusmn; " + fmt.format(sd))
            cls = " class='best'" if row in best.get((region, metric), set()) else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append(f"<tr class='method'><td>{html.escape(row)}</td>{''.join(cells)}</tr>")
    return (
        f"<table id='{html.escape(table_id)}' class='metrics'><thead><tr><th>method</th>{header}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table><p class='note'>Bold: the best value of the column (arrows: "
        "higher or lower is better). &plusmn;: standard deviation over test subjects (one repeat) or over "
        "repeats.</p>"
    )


def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()


def _img(png: bytes, alt: str = "") -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _box_plots(bench: dict, convention: str) -> bytes:
    plt = _pyplot()
    region = "max_normalised" if convention == "max-normalised" else "overall"
    names = ["identity", *bench["methods"]]
    figure, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(names), 3.5))
    for axis, metric in zip(axes, ("psnr", "ssim")):
        data = [[v[metric] for v in bench["identity"][region]["per_subject"].values()]]
        for name in bench["methods"]:
            data.append(
                [
                    v[metric]
                    for r in bench["methods"][name]["repeats"]
                    for v in r["scores"][region]["per_subject"].values()
                ]
            )
        axis.boxplot(data)
        axis.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
        axis.set_title(metric.upper() + (" (dB)" if metric == "psnr" else "") + f", {convention}", fontsize=9)
    return _figure_png(figure)


def _slice_grids(folder: TaskFolder, bench: dict, per_subject: int, max_subjects: int) -> list[str]:
    plt = _pyplot()
    prep = load_plan(bench["data"]["prepared"])
    parts = []
    methods = list(bench["methods"])
    for subject in bench["data"]["split"]["test"][:max_subjects]:
        files = prep.volumes[subject].files
        # the task's own direction (a reversed task translates the plan's target into its source)
        src = read_volume(files[bench["data"]["source"]]).data
        ref = read_volume(files[bench["data"]["target"]]).data
        outputs = {}
        for name in methods:
            seed = bench["methods"][name]["repeats"][0]["seed"]
            found = translated_volumes(folder.outputs(name, seed) / subject)
            if len(found) == 1:
                outputs[name] = read_volume(found[0]).data
        depth = src.shape[2]
        for k in range(per_subject):
            z = int(round(depth * (k + 1) / (per_subject + 1)))
            lo, hi = np.percentile(ref[..., z], [0.5, 99.5])
            columns = 2 + len(outputs)
            figure, axes = plt.subplots(2, columns, figsize=(1.8 * columns, 3.8))
            panels = (
                [("source", src[..., z], None)]
                + [(n, o[..., z], None) for n, o in outputs.items()]
                + [("target", ref[..., z], None)]
            )
            for axis, (title, image, _) in zip(axes[0], panels):
                axis.imshow(
                    np.rot90(image),
                    cmap="gray",
                    vmin=lo if title != "source" else None,
                    vmax=hi if title != "source" else None,
                )
                axis.set_title(title, fontsize=8)
            error_max = max((float(np.abs(o[..., z] - ref[..., z]).max()) for o in outputs.values()), default=1.0)
            for axis, (name, volume) in zip(axes[1][1:], outputs.items()):
                axis.imshow(np.rot90(np.abs(volume[..., z] - ref[..., z])), cmap="magma", vmin=0, vmax=error_max or 1)
                axis.set_title(f"|{name} - target|", fontsize=7)
            for axis in axes.ravel():
                axis.axis("off")
            parts.append(
                f"<h3>{html.escape(subject)}, slice {z}</h3>" + _img(_figure_png(figure), f"{subject} slice {z}")
            )
    return parts


def _uncertainty_maps(folder: TaskFolder, bench: dict, max_subjects: int) -> list[str]:
    """Per test subject, for each method translated with several samples: the middle slice of the per-voxel
    standard deviation next to the absolute error, and their correlation inside the head (a useful map is
    large where the error is)."""
    from synthmed.data.foreground import foreground_mask

    plt = _pyplot()
    prep = load_plan(bench["data"]["prepared"])
    stochastic = [
        (name, entry["repeats"][0])
        for name, entry in bench["methods"].items()
        if entry["repeats"][0].get("samples", 1) > 1
    ]
    if not stochastic:
        return [
            "<p class='note'>None: no method drew several samples (benchmark --samples K makes the stochastic "
            "methods write per-voxel standard deviations).</p>"
        ]
    parts = []
    for subject in bench["data"]["split"]["test"][:max_subjects]:
        reference = read_volume(prep.file_of(subject, bench["data"]["target"])).data
        head = foreground_mask(reference)
        z = reference.shape[2] // 2
        maps = []
        for name, repeat in stochastic:
            volumes = translated_volumes(folder.outputs(name, repeat["seed"]) / subject)
            if len(volumes) != 1 or not std_path(volumes[0]).is_file():
                continue
            mean_path = volumes[0]
            error = np.abs(read_volume(mean_path).data - reference)
            std = read_volume(std_path(mean_path)).data
            r = float(np.corrcoef(std[head], error[head])[0, 1]) if std[head].std() > 0 else float("nan")
            maps.append((name, repeat["samples"], std[..., z], error[..., z], r))
        if not maps:
            continue
        figure, axes = plt.subplots(2, len(maps), figsize=(2.4 * len(maps), 4.6), squeeze=False)
        for column, (name, samples, std, error, r) in enumerate(maps):
            top = max(float(std.max()), float(error.max()), 1e-12)
            axes[0][column].imshow(np.rot90(std), cmap="viridis", vmin=0, vmax=top)
            axes[0][column].set_title(f"{name}: std of {samples}\nr(std, |error|) = {r:.2f}", fontsize=7)
            axes[1][column].imshow(np.rot90(error), cmap="magma", vmin=0, vmax=top)
            axes[1][column].set_title(f"{name}: |mean - target|", fontsize=7)
        for axis in axes.ravel():
            axis.axis("off")
        parts.append(
            f"<h4>{html.escape(subject)}, slice {z}</h4>" + _img(_figure_png(figure), f"{subject} uncertainty")
        )
    return parts or ["<p class='note'>No uncertainty map found in the outputs.</p>"]


def _training_curves(folder: TaskFolder, bench: dict) -> list[str]:
    plt = _pyplot()
    parts = []
    for name, entry in bench["methods"].items():
        for repeat in entry["repeats"]:
            log_path = RunFolder(folder.run(name, repeat["seed"])).log_csv
            if not log_path.is_file():
                continue
            rows = list(csv.DictReader(log_path.open()))
            keys = [k for k in rows[0] if k not in ("step", "epoch", "elapsed_s") and not k.startswith("val_")]
            steps = [int(r["step"]) for r in rows]
            figure, axis = plt.subplots(figsize=(6, 2.6))
            for key in keys:
                values = [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows]
                axis.plot(steps, values, label=key)
            axis.set_xlabel("step")
            axis.set_yscale("symlog", linthresh=1e-2)
            axis.legend(fontsize=6, ncol=3)
            axis.set_title(f"{name} (seed {repeat['seed']})", fontsize=9)
            parts.append(_img(_figure_png(figure), f"{name} training curve"))
    return parts or ["<p class='note'>No log.csv found.</p>"]


def _configs(folder: TaskFolder, bench: dict) -> list[str]:
    parts = [
        f"<details><summary>benchmark settings</summary><pre>{html.escape(json.dumps(bench['settings'], indent=2))}"
        "</pre></details>"
    ]
    for name, entry in bench["methods"].items():
        for repeat in entry["repeats"]:
            run = RunFolder(folder.run(name, repeat["seed"]))
            if run.run_json.is_file():
                info, _ = run.load()
                shown = {k: info.to_record().get(k) for k in ("model", "preset", "config", "settings", "versions")}
                parts.append(
                    f"<details><summary>{html.escape(name)} (seed {repeat['seed']})</summary><pre>"
                    f"{html.escape(json.dumps(shown, indent=2))}</pre></details>"
                )
    return parts
