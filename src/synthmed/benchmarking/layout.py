"""Where everything of one benchmark task lives, named in one place.

The driver writes these paths and the report reads them back; before, each side built the names itself and found
the uncertainty maps by a substring. A task folder holds::

    benchmark.json, benchmark.csv    the results (a suite of several tasks: an index of task folders)
    phantoms/, degraded/, prep/      the data and the prepared slices
    test/inputs|references/<subject>/<modality><suffix>   links to the held-out scans
    masks/<subject>.nii.gz           binary lesion masks of the test subjects that have one
    runs/<method>-seed<s>/           one training run folder per method and repeat
    outputs/<method>-seed<s>/<subject>/<volume>[ + its uncertainty map]
    logs/                            one log per child process

A reversed task (the B -> A direction of unpaired methods) scores runs trained by its forward task, so its
``runs`` folder may be another task's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from synthmed.data.formats.common import suffix_of_name
from synthmed.errors import SynthmedError
from synthmed.workflows.translate import std_path


@dataclass(frozen=True)
class TaskFolder:
    root: Path
    runs_root: Path | None = None  # another task's runs (a reversed task); None: this folder's runs/

    @property
    def record(self) -> Path:
        return self.root / "benchmark.json"

    @property
    def table(self) -> Path:
        return self.root / "benchmark.csv"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def phantoms(self) -> Path:
        return self.root / "phantoms"

    @property
    def degraded(self) -> Path:
        return self.root / "degraded"

    @property
    def prep(self) -> Path:
        return self.root / "prep"

    @property
    def masks(self) -> Path:
        return self.root / "masks"

    def test_files(self, name: str) -> Path:
        """``inputs`` or ``references``: one sub-folder per test subject."""
        return self.root / "test" / name

    def run(self, method: str, seed: int) -> Path:
        return (self.runs_root or self.root / "runs") / f"{method}-seed{seed}"

    def outputs(self, method: str, seed: int) -> Path:
        return self.root / "outputs" / f"{method}-seed{seed}"

    def output_volume(self, method: str, seed: int, subject: str) -> Path:
        """The one translated volume of ``subject``; an error naming the folder when there is not exactly one."""
        folder = self.outputs(method, seed) / subject
        volumes = translated_volumes(folder)
        if len(volumes) != 1:
            raise SynthmedError(f"{folder}: expected one translated volume, found {len(volumes)}")
        return volumes[0]

    def uncertainty_map(self, method: str, seed: int, subject: str) -> Path | None:
        """The per-voxel standard deviation written beside the volume (``translate --samples K``), if any."""
        path = std_path(self.output_volume(method, seed, subject))
        return path if path.is_file() else None


def translated_volumes(folder: Path) -> list[Path]:
    """The volumes ``translate`` wrote into ``folder``, without their uncertainty maps (named by ``std_path`` of
    the volume they belong to) and without hidden or partial files."""
    if not folder.is_dir():
        return []
    files = [
        p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".") and suffix_of_name(p.name)
    ]
    maps = {std_path(p) for p in files}
    return [p for p in files if p not in maps]
