"""Paired comparison of two methods scored on the same subjects.

Two prediction folders scored against the same references give, per metric, one pair of values per subject. Their
means alone do not say whether one method is better on the same subjects, or by how much beyond subject-to-subject
spread; a paired test does. We use:

- the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided) of the differences ``a - b``, because metric
  differences are often skewed and a handful of subjects cannot show normality. Zero differences (ties between the
  two methods) are dropped before ranking (``zero_method="wilcox"``), so the test and the effect size below rank the
  same differences; scipy chooses the exact null distribution for small samples without ties and the normal
  approximation otherwise (``method="auto"``);
- the median of the paired differences, in the metric's units, as the size of the shift;
- the matched-pairs rank-biserial correlation (Kerby 2014) as the effect size: ``(R+ - R-) / (R+ + R-)``, with R+ and
  R- the sums of the ranks of |difference| of the positive and of the negative differences (zeros dropped, ties
  given their mean rank). It runs from -1 (every subject lower under ``a``) to +1 (every subject higher under ``a``).

With n non-zero differences the smallest two-sided p-value the exact test can reach is ``2 / 2**n``: 0.0625 for 5
subjects. Below 6 pairs the test cannot show a difference at the 5 % level whatever the data, and the result says so
rather than leaving a large p-value to be read as "no difference".
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy import stats

from synthmed.errors import SynthmedError
from synthmed.metrics.image import PSNR_CAP_DB

__all__ = ["MIN_PAIRS_FOR_POWER", "format_paired", "paired_tests", "rank_biserial", "wilcoxon_test"]

MIN_PAIRS_FOR_POWER = 6  # the fewest pairs whose exact two-sided p-value can fall below 0.05 (2 / 2**6 = 0.031)


def rank_biserial(differences: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of ``differences`` (zeros dropped); 0.0 when every one is zero."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return 0.0
    ranks = stats.rankdata(np.abs(d))
    positive, negative = float(ranks[d > 0].sum()), float(ranks[d < 0].sum())
    return (positive - negative) / (positive + negative)


def wilcoxon_test(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Paired comparison of ``a`` and ``b`` (one value per subject, same order): the Wilcoxon signed-rank statistic
    and two-sided p-value, the median difference ``a - b`` and the rank-biserial correlation, with ``n`` pairs and
    ``nonzero`` pairs that differ."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise SynthmedError(f"paired test: {a.shape} and {b.shape} values; give one value per subject for each")
    differences = a - b
    nonzero = int(np.count_nonzero(differences))
    result: dict[str, Any] = {
        "n": int(a.size),
        "nonzero": nonzero,
        "median_difference": float(np.median(differences)) if a.size else None,
        "rank_biserial": rank_biserial(differences),
        "statistic": None,
        "p_value": None,
    }
    if nonzero == 0:
        # Identical scores: nothing to rank; scipy would warn and return NaN. No evidence of a difference.
        result["p_value"] = 1.0 if a.size else None
        return result
    with warnings.catch_warnings():
        # scipy warns that small samples use the exact distribution or that ties force the normal approximation;
        # the module docstring says which is used, and the caller reports when n is too small for any power.
        warnings.simplefilter("ignore")
        test = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided", method="auto")
    result["statistic"] = float(test.statistic)
    result["p_value"] = float(test.pvalue)
    return result


def _capped(key: str, value: float) -> float:
    """PSNR of identical images is infinite; cap it as the summaries do, so a difference stays a number."""
    value = float(value)
    return min(value, PSNR_CAP_DB) if "psnr" in key.lower() else value


def paired_tests(
    a: dict[str, dict[str, float]],
    b: dict[str, dict[str, float]],
    metrics: tuple[str, ...] | list[str],
    names: tuple[str, str] = ("a", "b"),
    lower_is_better: frozenset[str] | set[str] = frozenset(),
) -> dict[str, Any]:
    """Per-metric paired tests of two ``{subject: {metric: value}}`` tables over the subjects both have.

    Returns ``{'subjects': [...], 'only_in': {name: [...]}, 'warnings': [...], 'tests': {metric: {...}}}``, each
    test as :func:`wilcoxon_test` plus ``favours`` (the name of the better one by the rank-biserial sign and the
    metric's direction, or ``None`` when neither). Subjects only one table has are named, not silently dropped; no
    common subject at all is an error.
    """
    common = sorted(set(a) & set(b))
    only = {names[0]: sorted(set(a) - set(b)), names[1]: sorted(set(b) - set(a))}
    notes = []
    for name, subjects in only.items():
        if subjects:
            notes.append(
                f"{len(subjects)} subject(s) only in {name}, left out of the paired tests: {', '.join(subjects)}"
            )
    if not common:
        raise SynthmedError(
            f"{names[0]} and {names[1]} have no subject in common, so nothing can be paired "
            f"({names[0]}: {', '.join(sorted(a)) or 'none'}; {names[1]}: {', '.join(sorted(b)) or 'none'})"
        )
    if len(common) < MIN_PAIRS_FOR_POWER:
        notes.append(
            f"only {len(common)} subject(s) in common: with fewer than {MIN_PAIRS_FOR_POWER} pairs the two-sided "
            f"Wilcoxon test cannot reach p < 0.05 whatever the data (smallest p = 2/2^n = "
            f"{2 / 2 ** len(common):.3g}), so it has no power here; a large p-value is not evidence of no difference"
        )
    tests: dict[str, Any] = {}
    for metric in metrics:
        rows = [s for s in common if metric in a[s] and metric in b[s]]
        if not rows:
            continue
        x = np.array([_capped(metric, a[s][metric]) for s in rows])
        y = np.array([_capped(metric, b[s][metric]) for s in rows])
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise SynthmedError(f"{metric}: a non-finite score; cannot compare")
        test = wilcoxon_test(x, y)
        effect = test["rank_biserial"]
        higher = names[0] if effect > 0 else names[1] if effect < 0 else None
        lower = names[1] if effect > 0 else names[0] if effect < 0 else None
        test["favours"] = lower if metric in lower_is_better else higher
        test["better"] = "lower" if metric in lower_is_better else "higher"
        tests[metric] = test
    return {"subjects": common, "only_in": only, "warnings": notes, "tests": tests}


def format_paired(comparison: dict[str, Any], names: tuple[str, str]) -> str:
    """Plain-text table of :func:`paired_tests`, with its warnings below."""
    header = (
        f"{'metric':<10}{'n':>4}{f'median {names[0]} - {names[1]}':>26}{'W':>10}{'p (Wilcoxon)':>14}"
        f"{'rank-biserial':>15}  favours"
    )
    lines = [f"paired: {names[0]} vs {names[1]} on the same subjects", header, "-" * len(header)]
    for metric, test in comparison["tests"].items():
        statistic = "-" if test["statistic"] is None else f"{test['statistic']:g}"
        p = "-" if test["p_value"] is None else f"{test['p_value']:.4g}"
        median = test["median_difference"]
        shown = "-" if median is None or not math.isfinite(median) else f"{median:+.4g}"
        lines.append(
            f"{metric:<10}{test['n']:>4}{shown:>26}{statistic:>10}{p:>14}{test['rank_biserial']:>+15.3f}  "
            f"{test['favours'] or '-'} ({test['better']} is better)"
        )
    lines += [f"note: {note}" for note in comparison["warnings"]]
    return "\n".join(lines)
