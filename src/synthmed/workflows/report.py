"""``synthmed report BENCHMARK_DIR --out report.html``: one self-contained HTML page (images embedded as PNG data)
from a ``synthmed benchmark`` folder.

Sections: the protocol and data; the metrics table (identity and every method; mean +/- sd over the test
subjects, or over repeats when there are several; the best value of each column marked, with the direction that
counts as better stated in the header); per-subject box plots of PSNR and SSIM; a slice viewer grid per test
subject (source | each method | target, and under each method its absolute error map in target units); training
curves from each run's ``log.csv``; the exact configs and versions of every run.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.data.io import default_file_mode, read_volume, write_text_atomic
from synthmed.errors import SynthmedError

# (key in a method's summary, header, better: "high" or "low", format)
COLUMNS = [
    ("overall_psnr", "PSNR (dB)", "high", "{:.2f}"),
    ("overall_ssim", "SSIM", "high", "{:.3f}"),
    ("overall_mae", "MAE", "low", "{:.2f}"),
    ("lesion_psnr", "lesion PSNR (dB)", "high", "{:.2f}"),
    ("lesion_ssim", "lesion SSIM", "high", "{:.3f}"),
    ("lesion_mae", "lesion MAE", "low", "{:.2f}"),
    ("train_seconds", "training (s)", "low", "{:.1f}"),
    ("train_slices_per_second", "training slices/s", "high", "{:.1f}"),
    ("translate_seconds_per_volume", "translate s/volume", "low", "{:.2f}"),
    ("train_peak_rss_mb", "peak RSS training (MB)", "low", "{:.0f}"),
    ("translate_peak_rss_mb", "peak RSS translate (MB)", "low", "{:.0f}"),
    ("parameters", "parameters", "low", "{:,.0f}"),
]

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


def report(source: str | Path, out: str | Path, *, slices_per_subject: int = 1, max_subjects: int = 3) -> Path:
    """Write the HTML report of the benchmark folder ``source`` to ``out``; returns ``out``."""
    source, out = Path(source), Path(out)
    path = source / "benchmark.json"
    if not path.is_file():
        raise SynthmedError(f"{source}: no benchmark.json here; run `synthmed benchmark --out {source}` first")
    bench = json.loads(path.read_text())
    if not bench.get("methods"):
        raise SynthmedError(f"{path}: no method has finished yet; nothing to report")
    parts = [f"<h1>synthmed benchmark: {html.escape(bench['data']['source'])} &rarr; "
             f"{html.escape(bench['data']['target'])}</h1>",
             _protocol(bench),
             "<h2>Metrics</h2>", _metrics_table(bench),
             "<h2>Per-subject scores</h2>", _img(_box_plots(bench)),
             "<h2>Slices</h2>", *_slice_grids(source, bench, slices_per_subject, max_subjects),
             "<h2>Training curves</h2>", *_training_curves(source, bench),
             "<h2>Uncertainty maps</h2><p class='note'>None: this protocol draws one sample per slice "
             "(translate --samples K writes per-voxel standard deviations for stochastic methods).</p>",
             "<h2>Configs and versions</h2>", *_configs(source, bench)]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>synthmed report</title><style>{STYLE}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, page)
    out.chmod(default_file_mode())
    return out


def _protocol(bench: dict) -> str:
    data, settings = bench["data"], bench["settings"]
    split = {k: len(v) for k, v in data["split"].items()}
    return (f"<p>Suite <b>{html.escape(str(bench.get('suite')))}</b>: {settings['steps']} training steps at batch "
            f"{settings['batch_size']} for every method (preset {html.escape(settings['preset'])}), "
            f"{settings['repeats']} repeat(s) from seed {settings['seed']}; subjects train/val/test "
            f"{split.get('train')}/{split.get('val')}/{split.get('test')} ({html.escape(str(data['folder']))}).</p>"
            f"<p class='note'>Metrics shown: {html.escape(bench['protocol'])}. "
            "This is the toolkit's own convention (target units, masked), not the per-image max-normalised one "
            "some papers report.</p>")


def _values(bench: dict, key: str) -> dict[str, tuple[float | None, float | None]]:
    """(mean, sd) per row: identity (metrics only), then each method; sd over subjects for one repeat."""
    rows: dict[str, tuple[float | None, float | None]] = {}
    region, _, metric = key.partition("_")
    identity = bench["identity"].get(region)
    if identity and metric in ("psnr", "ssim", "mae"):
        rows["identity"] = (identity["mean"].get(metric), (identity.get("sd") or {}).get(metric))
    else:
        rows["identity"] = (None, None)
    for name, entry in bench["methods"].items():
        repeats = entry["repeats"]
        if len(repeats) == 1 and metric in ("psnr", "ssim", "mae") and region in repeats[0]["scores"]:
            scores = repeats[0]["scores"][region]
            rows[name] = (scores["mean"].get(metric), (scores.get("sd") or {}).get(metric))
        else:
            stat = entry["summary"].get(key) or {}
            rows[name] = (stat.get("mean"), stat.get("sd"))
    return rows


def _metrics_table(bench: dict) -> str:
    header = "".join(f"<th>{html.escape(title)} {'&uarr;' if better == 'high' else '&darr;'}</th>"
                     for _, title, better, _ in COLUMNS)
    columns = {key: _values(bench, key) for key, *_ in COLUMNS}
    best: dict[str, set[str]] = {}
    for key, _, better, _ in COLUMNS:
        present = {row: v[0] for row, v in columns[key].items() if v[0] is not None and math.isfinite(v[0])}
        if present:
            target = max(present.values()) if better == "high" else min(present.values())
            best[key] = {row for row, value in present.items() if value == target}
    body = []
    for row in ["identity", *bench["methods"]]:
        cells = []
        for key, _, _, fmt in COLUMNS:
            mean, sd = columns[key][row]
            text = "" if mean is None else fmt.format(mean) + ("" if sd is None else " &plusmn; " + fmt.format(sd))
            cls = " class='best'" if row in best.get(key, set()) else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append(f"<tr class='method'><td>{html.escape(row)}</td>{''.join(cells)}</tr>")
    return (f"<table id='metrics'><thead><tr><th>method</th>{header}</tr></thead><tbody>{''.join(body)}</tbody>"
            "</table><p class='note'>Bold: the best value of the column (arrows: higher or lower is better). "
            "&plusmn;: standard deviation over test subjects (one repeat) or over repeats.</p>")


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


def _box_plots(bench: dict) -> bytes:
    plt = _pyplot()
    names = ["identity", *bench["methods"]]
    figure, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(names), 3.5))
    for axis, metric in zip(axes, ("psnr", "ssim")):
        data = [[v[metric] for v in bench["identity"]["overall"]["per_subject"].values()]]
        for name in bench["methods"]:
            data.append([v[metric] for r in bench["methods"][name]["repeats"]
                         for v in r["scores"]["overall"]["per_subject"].values()])
        axis.boxplot(data)
        axis.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
        axis.set_title(metric.upper() + (" (dB)" if metric == "psnr" else ""))
    return _figure_png(figure)


def _slice_grids(source: Path, bench: dict, per_subject: int, max_subjects: int) -> list[str]:
    plt = _pyplot()
    prep = json.loads((Path(bench["data"]["prepared"]) / "plan.json").read_text())
    parts = []
    methods = list(bench["methods"])
    for subject in bench["data"]["split"]["test"][:max_subjects]:
        files = prep["volumes"][subject]["files"]
        src = read_volume(files[prep["source"]]).data
        ref = read_volume(files[prep["target"]]).data
        outputs = {}
        for name in methods:
            seed = bench["methods"][name]["repeats"][0]["seed"]
            folder = source / "outputs" / f"{name}-seed{seed}" / subject
            found = [p for p in sorted(folder.glob("*")) if "_std" not in p.name and not p.name.startswith(".")]
            if found:
                outputs[name] = read_volume(found[0]).data
        depth = src.shape[2]
        for k in range(per_subject):
            z = int(round(depth * (k + 1) / (per_subject + 1)))
            lo, hi = np.percentile(ref[..., z], [0.5, 99.5])
            columns = 2 + len(outputs)
            figure, axes = plt.subplots(2, columns, figsize=(1.8 * columns, 3.8))
            panels = [("source", src[..., z], None)] + [(n, o[..., z], None) for n, o in outputs.items()] + [
                ("target", ref[..., z], None)]
            for axis, (title, image, _) in zip(axes[0], panels):
                axis.imshow(np.rot90(image), cmap="gray", vmin=lo if title != "source" else None,
                            vmax=hi if title != "source" else None)
                axis.set_title(title, fontsize=8)
            error_max = max((float(np.abs(o[..., z] - ref[..., z]).max()) for o in outputs.values()), default=1.0)
            for axis, (name, volume) in zip(axes[1][1:], outputs.items()):
                axis.imshow(np.rot90(np.abs(volume[..., z] - ref[..., z])), cmap="magma", vmin=0, vmax=error_max or 1)
                axis.set_title(f"|{name} - target|", fontsize=7)
            for axis in axes.ravel():
                axis.axis("off")
            parts.append(f"<h3>{html.escape(subject)}, slice {z}</h3>" + _img(_figure_png(figure), f"{subject} slice {z}"))
    return parts


def _training_curves(source: Path, bench: dict) -> list[str]:
    plt = _pyplot()
    parts = []
    for name, entry in bench["methods"].items():
        for repeat in entry["repeats"]:
            log_path = source / "runs" / f"{name}-seed{repeat['seed']}" / "log.csv"
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


def _configs(source: Path, bench: dict) -> list[str]:
    parts = [f"<details><summary>benchmark settings</summary><pre>{html.escape(json.dumps(bench['settings'], indent=2))}"
             "</pre></details>"]
    for name, entry in bench["methods"].items():
        for repeat in entry["repeats"]:
            run_json = source / "runs" / f"{name}-seed{repeat['seed']}" / "run.json"
            if run_json.is_file():
                info: dict[str, Any] = json.loads(run_json.read_text())
                shown = {k: info.get(k) for k in ("model", "preset", "config", "settings", "versions")}
                parts.append(f"<details><summary>{html.escape(name)} (seed {repeat['seed']})</summary><pre>"
                             f"{html.escape(json.dumps(shown, indent=2))}</pre></details>")
    return parts
