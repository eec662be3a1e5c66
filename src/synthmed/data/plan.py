"""The plan of a prepared folder (``plan.json``) as a typed, read-only object.

``synthmed prepare`` writes the record; everything else reads it through :func:`load_plan` (a prepared folder)
or :meth:`Plan.read` (the copy in a run folder), which check it against :data:`PLAN_SCHEMA` first: a damaged or
crafted file gives one line naming the field, never a ``KeyError`` deep inside a workflow.

:meth:`Plan.to_record` gives back exactly the record the plan was made from, unknown fields included (newer
versions may add some, and ``fingerprint``/``coregistration``/... are for people, not code). Checkpoints store
:func:`plan_digest` of that record, so a plan read and written again keeps its digest and old run folders keep
working.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from synthmed.data.geometry import INTERPOLATIONS, SliceGeometry
from synthmed.data.input_profile import HISTOGRAM_BINS
from synthmed.data.normalize import SCALE_MODELS, Normalization, TargetScale
from synthmed.errors import SynthmedError
from synthmed.files import finite_json, read_json_record
from synthmed.records import Choice, Int, ListOf, MapOf, Maybe, Num, Record, Str, invalid, validate

PLAN_VERSION = 3  # 2: bicubic slice resampling (plan key "interpolation"); 3: native resolution ("resolution")
SPLITS = ("train", "val", "test")
FIX = "re-run prepare with --overwrite (a run folder's plan.json is a copy of it)"

_NORMALIZATION = Record({"kind": Choice("mr", "ct"), "lo": Num(), "hi": Num()})
_GEOMETRY = Record(
    {
        "axis": Int(0, 2),
        "shape": ListOf(Int(1, 100_000), length=3),
        "row0": Int(-100_000, 100_000),
        "col0": Int(-100_000, 100_000),
        "side": Int(1, 200_000),
        "size": Int(16, 1024),
    }
)
_VOLUME = Record(
    {
        "number": Int(0),
        "files": MapOf(Str()),
        "geometry": _GEOMETRY,
        "normalization": MapOf(_NORMALIZATION),
        "n_slices": Int(0),
    }
)
PLAN_SCHEMA = Record(
    {
        "synthmed_plan": Int(1, PLAN_VERSION),
        "source": Str(100),
        "target": Maybe(Str(100)),
        "label": Maybe(Str(100)),
        "axis": Str(20),
        "size": Int(16, 1024, multiple=16),
        "normalization_kind": MapOf(Choice("mr", "ct")),
        "reference_normalization": MapOf(_NORMALIZATION),
        "split": Record({name: ListOf(Str()) for name in SPLITS}),
        "subjects": ListOf(Str()),
        "volumes": MapOf(_VOLUME),
        "n_slices": MapOf(Int(0)),
    },
    optional={
        "interpolation": Choice(*INTERPOLATIONS),
        "resolution": Record({"mode": Choice("native", "resized"), "spacing_mm": Maybe(Num(1e-6))}),
        "aliases": Maybe(MapOf(Str(100))),
        "inputs_hash": Str(),
        "seed": Int(),
        "data": Maybe(Str()),
        "skipped": MapOf(Str()),
        "fingerprint": MapOf(Record({})),
        "input_profile": Maybe(
            Record(
                {
                    "version": Int(1),
                    "subjects": Int(1),
                    "padding": ListOf(Num(0, 1), length=2),
                    "foreground_ml": ListOf(Num(0), length=2),
                    "spacing": ListOf(Num(0), length=2),
                    "histogram": ListOf(Num(0, 1), length=HISTOGRAM_BINS),
                    "histogram_distance_max": Num(0),
                }
            )
        ),
        "target_scale": Maybe(
            Record(
                {
                    "model": Choice(*SCALE_MODELS),
                    "lo": Num(),
                    "hi": Num(),
                    "offset_per_range": Num(),
                    "range_ratio": Num(),
                    "loo_error": MapOf(Maybe(Num(0))),
                    "subjects": Int(1),
                }
            )
        ),
    },
)


def check_plan(plan: dict, path: str | Path) -> dict:
    """``plan`` (a parsed plan.json) if every field the toolkit uses is present and sane; else a one-line
    :class:`SynthmedError` naming the field."""
    validate(plan, PLAN_SCHEMA, path, FIX)
    roles = [plan["source"]] + ([plan["target"]] if plan["target"] else [])
    for role in roles:
        for table in ("normalization_kind", "reference_normalization"):
            if role not in plan[table]:
                raise invalid(path, f"{table}.{role}", "is missing", FIX)
        reference = plan["reference_normalization"][role]
        if not reference["hi"] > reference["lo"]:
            raise invalid(path, f"reference_normalization.{role}", "has hi <= lo", FIX)
    for split, subjects in plan["split"].items():
        for subject in subjects:
            if subject not in plan["volumes"]:
                raise invalid(path, f"split.{split}", f"names {subject!r}, which volumes does not hold", FIX)
    for subject, record in plan["volumes"].items():
        for role in roles:
            if role not in record["normalization"]:
                raise invalid(path, f"volumes.{subject}.normalization.{role}", "is missing", FIX)
    return plan


@dataclass(frozen=True)
class Resolution:
    """``native``: slices at ``spacing_mm`` per pixel (models train on patches); ``resized``: each volume's
    foreground box squeezed into ``size`` x ``size`` pixels."""

    mode: str = "resized"
    spacing_mm: float | None = None

    @property
    def native(self) -> bool:
        return self.mode == "native"


@dataclass(frozen=True)
class PlanVolume:
    """One prepared subject: its number in the slice index, its input files by role, how its slices were cut
    and how each role's intensities were normalised."""

    number: int
    files: dict[str, str]
    geometry: SliceGeometry
    normalization: dict[str, Normalization]
    n_slices: int


@dataclass(frozen=True)
class Plan:
    """A checked ``plan.json``; made by :meth:`from_record` (or :meth:`read`, :func:`load_plan`) only."""

    version: int
    source: str
    target: str | None
    label: str | None
    axis: str
    size: int
    normalization_kind: dict[str, str]
    reference_normalization: dict[str, Normalization]
    split: dict[str, tuple[str, ...]]
    subjects: tuple[str, ...]
    volumes: dict[str, PlanVolume]
    n_slices: dict[str, int]
    interpolation: str = "bilinear"  # plans made before the key existed were resampled bilinearly
    resolution: Resolution = Resolution()
    aliases: dict[str, str] = field(default_factory=dict)
    target_scale: TargetScale | None = None  # None: plans made before it existed, CT targets, no target
    input_profile: dict | None = None  # None: plans made before it existed
    inputs_hash: str | None = None
    seed: int | None = None
    data: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    fingerprint: dict[str, dict] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)  # where it was read from (for messages)
    _record: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_record(cls, record: dict, path: str | Path) -> Plan:
        """The plan of a parsed plan.json (``path``: where it came from, for error messages), checked first."""
        check_plan(record, path)
        record = copy.deepcopy(record)
        volumes = {
            subject: PlanVolume(
                number=int(v["number"]),
                files=dict(v["files"]),
                geometry=SliceGeometry.from_dict(v["geometry"]),
                normalization={role: Normalization.from_dict(n) for role, n in v["normalization"].items()},
                n_slices=int(v["n_slices"]),
            )
            for subject, v in record["volumes"].items()
        }
        resolution = record.get("resolution") or {}
        return cls(
            version=record["synthmed_plan"],
            source=record["source"],
            target=record["target"],
            label=record["label"],
            axis=record["axis"],
            size=int(record["size"]),
            normalization_kind=dict(record["normalization_kind"]),
            reference_normalization={
                role: Normalization.from_dict(n) for role, n in record["reference_normalization"].items()
            },
            split={name: tuple(ids) for name, ids in record["split"].items()},
            subjects=tuple(record["subjects"]),
            volumes=volumes,
            n_slices=dict(record["n_slices"]),
            interpolation=record.get("interpolation", "bilinear"),
            resolution=Resolution(resolution.get("mode", "resized"), resolution.get("spacing_mm")),
            aliases=dict(record.get("aliases") or {}),
            target_scale=TargetScale.from_dict(record["target_scale"]) if record.get("target_scale") else None,
            input_profile=record.get("input_profile"),
            inputs_hash=record.get("inputs_hash"),
            seed=record.get("seed"),
            data=record.get("data"),
            skipped=dict(record.get("skipped") or {}),
            fingerprint=dict(record.get("fingerprint") or {}),
            path=Path(path),
            _record=record,
        )

    @classmethod
    def read(cls, path: str | Path, fix: str = FIX) -> Plan:
        """The checked plan in the file ``path`` (``fix``: what the one-line error of an unreadable file advises)."""
        return cls.from_record(read_json_record(path, "plan", fix), path)

    def to_record(self) -> dict:
        """The record this plan was made from (a copy), unknown fields included: writing it back is lossless."""
        return copy.deepcopy(self._record)

    def digest(self) -> str:
        return plan_digest(self)

    @property
    def roles(self) -> tuple[str, ...]:
        """The modalities prepared as images: the source, and the target when there is one."""
        return (self.source, self.target) if self.target else (self.source,)

    def subjects_in(self, split: str) -> tuple[str, ...]:
        if split not in self.split:
            raise SynthmedError(f"unknown split {split!r}; use train, val or test")
        return self.split[split]

    @property
    def train_subjects(self) -> tuple[str, ...]:
        return self.split["train"]

    @property
    def val_subjects(self) -> tuple[str, ...]:
        return self.split["val"]

    @property
    def test_subjects(self) -> tuple[str, ...]:
        return self.split["test"]

    def file_of(self, subject: str, role: str) -> Path:
        """The input file of ``subject``'s ``role`` (a modality name, e.g. ``plan.target``) that was prepared."""
        try:
            return Path(self.volumes[subject].files[role])
        except KeyError:
            raise SynthmedError(f"{self.path}: no {role} file of subject {subject!r} in the plan") from None

    def reference(self, role: str) -> Normalization:
        """The training volumes' median normalisation of ``role`` (the scale used without a reference scan)."""
        return self.reference_normalization[role]

    def swapped(self) -> Plan:
        """The plan with source and target exchanged: what a model trained both ways sees translating B to A."""
        if not self.target:
            raise SynthmedError(f"{self.path}: prepared without a target; there is no reverse direction")
        record = self.to_record()
        record["source"], record["target"] = record["target"], record["source"]
        return Plan.from_record(record, self.path)


def plan_digest(plan: Plan | dict) -> str:
    """A fingerprint of a plan's content: a checkpoint records the one it was trained on, so a checkpoint of
    another run (another data set, size or normalisation) is not applied unnoticed."""
    record = plan.to_record() if isinstance(plan, Plan) else plan
    return hashlib.sha256(json.dumps(finite_json(record), sort_keys=True).encode()).hexdigest()[:32]


def load_plan(prep: str | Path) -> Plan:
    """The checked plan of a prepared folder."""
    path = Path(prep) / "plan.json"
    if not path.is_file():
        raise SynthmedError(f"{prep}: no plan.json here; run `synthmed prepare ... --out {prep}` first")
    return Plan.read(path, "re-run prepare with --overwrite")
