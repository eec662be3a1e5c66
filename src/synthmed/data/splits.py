"""Subject-level train/val/test splits (never by slice; one patient never in two sets)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from synthmed.errors import SynthmedError

SPLIT_NAMES = ("train", "val", "test")


def parse_ratios(spec: str | Sequence[float]) -> tuple[float, float, float]:
    """'0.7,0.1,0.2' -> (0.7, 0.1, 0.2), normalised to sum to 1."""
    try:
        values = [float(v) for v in (spec.split(",") if isinstance(spec, str) else spec)]
    except ValueError:
        raise SynthmedError(f"--split {spec!r}: give three fractions like 0.7,0.1,0.2") from None
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0 or values[0] <= 0:
        raise SynthmedError(f"--split {spec!r}: give three non-negative fractions (train > 0) like 0.7,0.1,0.2")
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


def split_subjects(
    subject_ids: Sequence[str],
    ratios: tuple[float, float, float],
    seed: int,
    group_of: Callable[[str], str] = lambda s: s,
    fixed: dict[str, str] | None = None,
) -> dict[str, list[str]]:
    """Random split of subjects by group (patient), reproducible for a seed.

    ``fixed`` maps subject -> split for subjects whose split was given (a manifest
    column); they stay where they are. Val and test get at least one group each when
    there are enough groups for the ratios to ask for them.
    """
    fixed = dict(fixed or {})
    for subject, name in fixed.items():
        if name not in SPLIT_NAMES:
            raise SynthmedError(f"subject {subject}: split {name!r} is not one of {', '.join(SPLIT_NAMES)}")
    groups: dict[str, list[str]] = {}
    for subject in sorted(subject_ids):
        groups.setdefault(group_of(subject), []).append(subject)

    result: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    free_groups = []
    for key, members in sorted(groups.items()):
        assigned = {fixed[m] for m in members if m in fixed}
        if len(assigned) > 1:
            raise SynthmedError(
                f"subjects {members} are one patient ({key}) but are given different splits {sorted(assigned)}"
            )
        if assigned:
            result[assigned.pop()].extend(members)
        else:
            free_groups.append(key)

    random.Random(seed).shuffle(free_groups)
    n = len(free_groups)
    n_test = int(round(ratios[2] * n))
    n_val = int(round(ratios[1] * n))
    if n >= 3:
        n_test = max(n_test, 1 if ratios[2] > 0 else 0)
        n_val = max(n_val, 1 if ratios[1] > 0 else 0)
    n_test = min(n_test, max(n - 1, 0))
    n_val = min(n_val, max(n - 1 - n_test, 0))
    for index, key in enumerate(free_groups):
        name = "test" if index < n_test else "val" if index < n_test + n_val else "train"
        result[name].extend(groups[key])
    return {name: sorted(members) for name, members in result.items()}
