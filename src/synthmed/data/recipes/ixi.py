"""SynDiff's IXI slices as one subject."""

from __future__ import annotations

from pathlib import Path

from synthmed.errors import SynthmedError


def ixi_manifest(root: str | Path, *, absolute: bool = False) -> list[dict]:
    """Manifest rows for SynDiff's IXI slices: ``T1.mat`` / ``T2.mat`` (key ``data_fs``) as one subject 'ixi'."""
    root = Path(root)
    rows = []
    for modality in ("T1", "T2"):
        file = root / f"{modality}.mat"
        if not file.is_file():
            raise SynthmedError(f"{file}: not found; {root} should hold SynDiff's T1.mat and T2.mat")
        rows.append(
            {
                "subject": "ixi",
                "modality": modality,
                "path": str(file.absolute()) if absolute else file.name,
                "key": "data_fs",
            }
        )
    return rows
