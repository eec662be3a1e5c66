"""A run folder (what ``synthmed train`` writes): its layout and its records, in one place.

::

    run.json               model, preset, task, config, settings, versions (:class:`RunRecord`)
    plan.json              a copy of the prepared data's plan, so translation needs nothing else
    checkpoints/best.pt    the best validation PSNR (generators, runs without validation: the last)
    checkpoints/last.pt    the latest state, for --resume
    log.csv                losses and validation metrics
    samples/               image grids during training
    train_summary.json     steps, seconds, best step, ...
    tensorboard/           with --tensorboard

Only :meth:`RunFolder.write_record` writes ``run.json``/``plan.json`` and only :meth:`RunFolder.load` reads them
back, checked against their schemas (a damaged or crafted file gives one line naming the field).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthmed.data.plan import Plan
from synthmed.errors import SynthmedError
from synthmed.files import json_text, read_json_record, write_text_atomic
from synthmed.models.registry import model_class
from synthmed.records import Bool, Choice, Int, ListOf, Maybe, Record, Str, validate

RUN_SCHEMA = Record(
    {
        "model": Str(100),
        "preset": Str(100),
        "task": Choice("translate", "generate"),
        "config": Record({}),
        "source": Str(100),
        "target": Maybe(Str(100)),
        "label": Maybe(Str(100)),
    },
    optional={
        "paired": Bool(),
        "settings": Record({}),
        "prepared": Str(),
        "processes": Int(1),
        "plan_digest": Str(100),
        "training_slice_count": Int(0),
        "patch": Maybe(Int(16, 1024)),
        "directions": ListOf(Choice("A2B", "B2A")),
    },
)
# Everything train writes into a run folder: --overwrite elsewhere (benchmark, demo) deletes these names only.
RUN_FILES = ("run.json", "plan.json", "checkpoints", "samples", "log.csv", "train_summary.json", "tensorboard")
CHECKPOINTS = ("best", "last")
DAMAGED = "the run folder is damaged; train it again"


@dataclass(frozen=True)
class RunRecord:
    """A checked ``run.json``; :meth:`to_record` gives back exactly the record it was made from."""

    model: str
    preset: str
    task: str  # "translate" or "generate"
    config: dict[str, Any]
    source: str
    target: str | None
    label: str | None
    paired: bool | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    prepared: str | None = None  # the prepared folder it was trained on
    processes: int = 1
    plan_digest: str | None = None
    training_slice_count: int | None = None
    patch: int | None = None  # trained on patch x patch windows of the slices
    # The directions this run has weights for, where fewer than its model can translate (a run imported from one
    # generator of a two-way model); None: all of the model's.
    directions: tuple[str, ...] | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    _record: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_record(cls, record: dict, path: str | Path) -> RunRecord:
        validate(record, RUN_SCHEMA, path, DAMAGED)
        record = copy.deepcopy(record)
        versions = record.get("versions")
        return cls(
            model=record["model"],
            preset=record["preset"],
            task=record["task"],
            config=dict(record["config"]),
            source=record["source"],
            target=record["target"],
            label=record["label"],
            paired=record.get("paired"),
            settings=dict(record.get("settings") or {}),
            prepared=record.get("prepared"),
            processes=int(record.get("processes", 1)),
            plan_digest=record.get("plan_digest"),
            training_slice_count=record.get("training_slice_count"),
            patch=record.get("patch"),
            directions=tuple(record["directions"]) if "directions" in record else None,
            versions=dict(versions) if isinstance(versions, dict) else {},
            _record=record,
        )

    def to_record(self) -> dict:
        return copy.deepcopy(self._record)


def is_run_entry(entry: Path) -> bool:
    """Whether ``entry`` is something ``train`` writes into a run folder."""
    return entry.name in RUN_FILES


def legacy_run(folder: Path) -> bool:
    """A run folder written before folders carried markers: run.json and checkpoints/."""
    return (folder / "run.json").is_file() and (folder / "checkpoints").is_dir()


class RunFolder:
    """The run folder at ``root`` (it need not exist yet: ``train`` creates it)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def plan_json(self) -> Path:
        return self.root / "plan.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/<name>.pt`` (``name``: best, last, or a file name ending in .pt)."""
        return self.checkpoints / (name if name.endswith(".pt") else f"{name}.pt")

    def find_checkpoint(self, choice: str = "best") -> Path:
        """The checkpoint to apply: ``best`` falls back to ``last`` (a run stopped before its first validation,
        or one without validation subjects); any other name must exist."""
        names = ["best", "last"] if choice == "best" else [choice]
        found = next((self.checkpoint(n) for n in names if self.checkpoint(n).is_file()), None)
        if found is None:
            wanted = " or ".join(self.checkpoint(n).name for n in names)
            raise SynthmedError(f"{self.root}: no checkpoint ({wanted}) in {self.checkpoints}; has training started?")
        return found

    @property
    def log_csv(self) -> Path:
        return self.root / "log.csv"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def train_summary(self) -> Path:
        return self.root / "train_summary.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def has_records(self) -> bool:
        return self.run_json.is_file() and self.plan_json.is_file()

    def write_record(self, info: dict[str, Any], plan: Plan) -> RunRecord:
        """Write ``run.json`` (``info``, checked as :meth:`load` will check it) and the copy of ``plan``, each
        atomically; returns the record as it reads back."""
        record = RunRecord.from_record(json.loads(json_text(info)), self.run_json)
        write_text_atomic(self.run_json, json_text(info))
        write_text_atomic(self.plan_json, json_text(plan.to_record()))
        return record

    def load(self) -> tuple[RunRecord, Plan]:
        """(run.json, plan.json), both checked; the model must be one this version knows."""
        if not self.has_records():
            raise SynthmedError(
                f"{self.root}: not a synthmed run folder (no run.json/plan.json); train one with `synthmed train`"
            )
        record = RunRecord.from_record(read_json_record(self.run_json, "run record", DAMAGED), self.run_json)
        model_class(record.model)
        return record, Plan.read(self.plan_json, DAMAGED)

    def load_summary(self) -> dict[str, Any]:
        """``train_summary.json`` (written when training ends)."""
        if not self.train_summary.is_file():
            raise SynthmedError(f"{self.root}: no train_summary.json (training has not finished); train it again")
        summary = read_json_record(self.train_summary, "training summary", DAMAGED)
        return validate(summary, Record({}), self.train_summary, DAMAGED)
