"""Safe checkpoints: written atomically, tensors and plain data only, loaded with
``torch.load(..., weights_only=True)`` so a file from someone else cannot run code."""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthmed.errors import SynthmedError
from synthmed.files import write_atomic

CHECKPOINT_FORMAT = "synthmed-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format marker) to ``path`` via a temporary file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    return write_atomic(path, lambda stream: torch.save(record, stream), binary=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a synthmed checkpoint; any other file (truncated, foreign, a code-carrying
    pickle) gives a :class:`SynthmedError` and executes nothing."""
    path = Path(path)
    if not path.is_file():
        raise SynthmedError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files; our message says it all
            warnings.simplefilter("ignore")
            record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # any failure to parse an untrusted file means the same thing to the user
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        first_line = next((line for line in lines if "Unsupported" in line), lines[0])
        first_line = first_line.replace("WeightsUnpickler error: ", "")
        raise SynthmedError(
            f"{path}: not a loadable synthmed checkpoint (truncated, or not made by synthmed; refused to unpickle "
            f"anything but tensors: {first_line[:120]})"
        ) from None
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
        raise SynthmedError(f"{path}: a PyTorch file, but not a synthmed checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    if int(record.get("version", 0)) > CHECKPOINT_VERSION:
        raise SynthmedError(
            f"{path}: checkpoint version {record['version']} is newer than this synthmed; upgrade synthmed"
        )
    return record


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain data."""
    np_state = np.random.get_state()
    state = {
        "python": _to_plain(random.getstate()),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(value):
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _to_tuple(value):
    if isinstance(value, list):
        return tuple(_to_tuple(v) for v in value)
    return value
