"""Benchmark results on disk: ``benchmark.json`` (checked when read back), ``benchmark.csv`` (one row per method
and repeat) and the strict JSON the engineering scripts in ``benchmarks/`` write.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from synthmed.benchmarking.scoring import MAX_NORMALISED_METRICS, METRICS, RESOURCE_FIGURES
from synthmed.errors import SynthmedError
from synthmed.files import json_text, read_json_record, write_text_atomic
from synthmed.records import Int, ListOf, MapOf, Record, Str, validate

_TASK_SCHEMA = Record(
    {
        "data": Record(
            {
                "source": Str(100),
                "target": Str(100),
                "prepared": Str(),
                "split": Record({name: ListOf(Str()) for name in ("train", "val", "test")}),
            }
        ),
        "settings": Record({"steps": Int(1), "batch_size": Int(1)}),
        "protocol": Str(10_000),
        "identity": Record({}),
        "methods": MapOf(Record({"repeats": ListOf(Record({"seed": Int()}), min_length=1), "summary": Record({})})),
    }
)
_INDEX_SCHEMA = Record({"tasks": MapOf(Record({"folder": Str(200)}))})


def load_benchmark_record(path: str | Path) -> dict[str, Any]:
    """A ``benchmark.json``, checked: a suite index (``tasks``) or one task's results, every field the report
    reads present and of the right type (a one-line error naming the field otherwise)."""
    path = Path(path)
    fix = "run the benchmark again into a new --out"
    record = read_json_record(path, "benchmark record", fix)
    if isinstance(record, dict) and "tasks" in record:
        record = validate(record, _INDEX_SCHEMA, path, fix)
        for name, task in record["tasks"].items():
            if Path(task["folder"]).is_absolute() or ".." in Path(task["folder"]).parts:
                raise SynthmedError(
                    f"{path}: field tasks.{name}.folder {task['folder']!r} must name a folder inside "
                    f"the benchmark folder; {fix}"
                )
        return record
    return validate(record, _TASK_SCHEMA, path, fix)


def _csv_scores(scores: dict[str, Any]) -> dict[str, Any]:
    overall = scores["overall"]["mean"]
    lesion = scores.get("lesion", {}).get("mean", {})
    normalised = scores["max_normalised"]["mean"]
    return {
        **{metric: overall.get(metric) for metric in METRICS},
        **{f"lesion_{metric}": lesion.get(metric) for metric in METRICS},
        **{f"max_normalised_{metric}": normalised.get(metric) for metric in MAX_NORMALISED_METRICS},
        "fid": scores.get("fid"),
    }


def write_task_record(out: Path, report: dict[str, Any], started: float) -> None:
    """``benchmark.json`` and ``benchmark.csv`` of one task, rewritten atomically after every measurement."""
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_text_atomic(out / "benchmark.json", json_text(report, default=plain))
    rows = [{"method": "identity", "seed": "", **_csv_scores(report["identity"])}]
    for model, entry in report["methods"].items():
        for repeat in entry["repeats"]:
            rows.append(
                {
                    "method": model,
                    "seed": repeat["seed"],
                    **_csv_scores(repeat["scores"]),
                    **{key: repeat.get(key) for key in (*RESOURCE_FIGURES, "samples")},
                }
            )
    fields = list(dict.fromkeys(k for row in rows for k in row))
    text_rows = [",".join(fields)] + [
        ",".join("" if row.get(f) is None else str(row.get(f)) for f in fields) for row in rows
    ]
    write_text_atomic(out / "benchmark.csv", "\n".join(text_rows) + "\n")


def plain(value: Any) -> Any:
    """The JSON form of numpy scalars and paths (``json_text``'s ``default``)."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def write_index(out: Path, index: dict[str, Any]) -> None:
    """A suite's ``benchmark.json``: the list of its task folders and their headline figures."""
    write_text_atomic(out / "benchmark.json", json_text(index, default=plain))


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON has no inf/nan)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json(path: Path, report: dict) -> None:
    """Strict JSON (non-finite numbers as null), written atomically: a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(finite(report), indent=2, allow_nan=False, default=plain) + "\n")
