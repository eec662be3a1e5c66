"""Helpers the benchmark scripts share: strict-JSON output written atomically, and a path check."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


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
    """Write atomically (a kill never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(finite(report), indent=2, allow_nan=False) + "\n")
    os.replace(partial, path)


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies inside ``folder`` (real data must never be written into the repository)."""
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
