"""Cartesian undersampling masks for a 2D k-space grid: which samples a retrospective experiment keeps.

All masks are boolean tensors of the k-space's shape ``(H, W)`` with the k-space centre at ``(H // 2, W // 2)``
(the convention of :mod:`synthmed.mri.fourier`). Three patterns:

- ``"random"`` and ``"equispaced"`` are *line* masks of a 2D acquisition: the readout (frequency encoding) runs
  along ``readout_axis`` and is always acquired whole, so the choice is which phase-encoding lines along the other
  axis to acquire. A block of ``center`` (fraction) lines around the centre is always acquired: it carries most
  of the image energy and is the calibration region from which coil sensitivities are estimated.
  ``"random"`` draws the remaining lines uniformly without replacement (the incoherent aliasing compressed sensing
  needs); ``"equispaced"`` takes regularly spaced lines (the coherent pattern of parallel imaging, GRAPPA/SENSE).
- ``"poisson"`` is a *point* mask of a 3D acquisition seen in its two phase-encoding directions (the readout is
  the third, fully sampled, dimension not shown): variable-density Poisson-disc sampling, no two samples closer
  than a radius that grows with the distance from the centre, so sampling is dense at low frequencies, sparse
  at high ones, and without the clusters and holes of independent random points. A centred rectangle of
  ``center`` times each side is fully sampled; around it, where the radius is at most one grid step, every
  point is accepted too, so the fully sampled centre is often larger than ``center`` asks (more so at low
  accelerations): that is where the variable density saturates at one sample per grid point.

``acceleration`` is the total number of k-space samples over the number acquired (the fully sampled centre
counts as acquired), which is what :func:`achieved_acceleration` measures. The line masks hit the requested
value up to rounding of one line; the Poisson mask up to a few percent on grids of 32 points a side or more
(its radius scale is found by bisection, and one more point can change the count by more on a tiny grid).

Equispaced masks are spaced slightly wider than every R-th line: with the centre block acquired in addition,
strict R-spacing would acquire more than 1/R of the lines (about 3.2x instead of 4x with an 8% centre). The
spacing ``R (N - n_c) / (N - R n_c)`` (N lines, n_c in the centre) spends exactly the remaining budget, as in the
fastMRI challenge's equispaced masks. The grid is anchored on the centre line, so the mask is deterministic and
``seed`` is not used.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from synthmed.errors import SynthmedError

KINDS = ("random", "equispaced", "poisson")
# The Poisson-disc radius at the k-space edge (normalised radius 1) is this many times the radius at the centre.
# With 2D point density going as 1/r^2, 1 + 2 * |k| makes the corners about ten times sparser than the centre:
# a common compromise between keeping low-frequency contrast and spreading samples for incoherence.
POISSON_FALLOFF = 2.0
POISSON_TOLERANCE = 0.02  # the bisection stops within 2% of the requested acceleration (the promise is ~5%)


def undersampling_mask(
    shape: tuple[int, int],
    kind: str,
    acceleration: float,
    center: float = 0.08,
    seed: int = 0,
    readout_axis: int = 0,
) -> torch.Tensor:
    """A boolean ``(H, W)`` undersampling mask (``True`` = acquired) of the given ``kind`` (``"random"``,
    ``"equispaced"`` or ``"poisson"``) and total ``acceleration`` (>= 1), with a fully sampled centre of
    ``center`` (fraction in (0, 1)) of the phase-encoding lines or, for ``"poisson"``, of each side.

    ``readout_axis`` (0 or 1; line masks only) is the fully sampled direction: with the default 0, whole columns
    are acquired or skipped. The same ``seed`` gives the same mask on every machine (NumPy's PCG64 generator).
    """
    height, width = _check(shape, kind, acceleration, center, readout_axis)
    if kind == "poisson":
        mask = _poisson(height, width, acceleration, center, seed)
    else:
        lines = width if readout_axis == 0 else height
        chosen = _lines(lines, kind, acceleration, center, seed)
        mask = np.broadcast_to(chosen[None, :] if readout_axis == 0 else chosen[:, None], (height, width))
    return torch.from_numpy(np.ascontiguousarray(mask))


def achieved_acceleration(mask: torch.Tensor | np.ndarray) -> float:
    """Total samples over acquired samples of a boolean mask (``inf`` for an empty mask)."""
    mask = torch.as_tensor(mask)
    acquired = int(mask.count_nonzero())
    return math.inf if acquired == 0 else mask.numel() / acquired


def center_slice(size: int, fraction: float) -> slice:
    """The indices of the fully sampled centre along an axis of ``size`` samples: ``round(fraction * size)``
    samples (at least one) that include the centre index ``size // 2``."""
    count = max(1, min(size, round(fraction * size)))
    start = size // 2 - count // 2
    return slice(start, start + count)


def _check(shape, kind: str, acceleration: float, center: float, readout_axis: int) -> tuple[int, int]:
    if kind not in KINDS:
        raise SynthmedError(f"unknown undersampling mask kind {kind!r}; choose one of {', '.join(KINDS)}")
    try:
        height, width = (int(n) for n in shape)
    except (TypeError, ValueError):
        raise SynthmedError(f"mask shape {shape!r} is not two integers (H, W)") from None
    if height < 1 or width < 1:
        raise SynthmedError(f"mask shape {height}x{width} is empty; give two positive sizes")
    if not (isinstance(acceleration, numbers.Real) and math.isfinite(acceleration) and acceleration >= 1):
        raise SynthmedError(f"acceleration {acceleration!r} must be a finite number >= 1 (1 = fully sampled)")
    if not (isinstance(center, numbers.Real) and 0 < center < 1):
        raise SynthmedError(f"centre fraction {center!r} must lie strictly between 0 and 1 (e.g. 0.08)")
    if readout_axis not in (0, 1):
        raise SynthmedError(f"readout_axis {readout_axis!r} must be 0 or 1")
    if kind == "poisson":
        total, budget = height * width, round(height * width / acceleration)
        rows, cols = center_slice(height, center), center_slice(width, center)
        in_center = (rows.stop - rows.start) * (cols.stop - cols.start)
        unit = "k-space points"
    else:
        total = width if readout_axis == 0 else height
        budget = round(total / acceleration)
        window = center_slice(total, center)
        in_center = window.stop - window.start
        unit = "phase-encoding lines"
    if in_center > budget:
        raise SynthmedError(
            f"a fully sampled centre of {center:g} ({in_center} of {total} {unit}) exceeds the {budget} that "
            f"acceleration {acceleration:g} allows; lower the centre fraction or the acceleration"
        )
    return height, width


def _lines(count: int, kind: str, acceleration: float, center: float, seed: int) -> np.ndarray:
    chosen = np.zeros(count, dtype=bool)
    window = center_slice(count, center)
    chosen[window] = True
    in_center = window.stop - window.start
    budget = round(count / acceleration)
    if kind == "random":
        outside = np.flatnonzero(~chosen)
        rng = np.random.Generator(np.random.PCG64(seed))
        chosen[rng.choice(outside, size=budget - in_center, replace=False)] = True
        return chosen
    if budget == in_center:
        return chosen
    if budget >= count:
        chosen[:] = True
        return chosen
    # Lines on a grid through the centre line with the spacing that spends what the centre leaves of the budget;
    # rounding can gain or lose a line, so the spacing is nudged until the count is the budget (or as close).
    spacing = acceleration * (count - in_center) / max(count - acceleration * in_center, 1e-9)
    best = None
    for trial in np.linspace(max(1.0, spacing * 0.8), spacing * 1.25, 91):
        grid = np.zeros(count, dtype=bool)
        grid[window] = True
        offsets = np.arange(-math.floor(count / trial) - 1, math.floor(count / trial) + 2) * trial
        positions = np.rint(count // 2 + offsets).astype(int)
        grid[positions[(positions >= 0) & (positions < count)]] = True
        miss = abs(int(grid.sum()) - budget)
        if best is None or miss < best[0] or (miss == best[0] and abs(trial - spacing) < best[1]):
            best = (miss, abs(trial - spacing), grid)
    return best[2]


def _poisson(height: int, width: int, acceleration: float, center: float, seed: int) -> np.ndarray:
    """Variable-density Poisson-disc points by dart throwing on the grid, the radius scale found by bisection."""
    budget = height * width / acceleration
    rows, cols = center_slice(height, center), center_slice(width, center)
    fixed = np.zeros((height, width), dtype=bool)
    fixed[rows, cols] = True
    if fixed.sum() >= round(budget):
        return fixed
    # Distance from the centre normalised per axis, so the pattern stretches with a rectangular grid; the radius
    # is in grid units of the shorter side's scale.
    ky = (np.arange(height) - height // 2) / max(height / 2, 1)
    kz = (np.arange(width) - width // 2) / max(width / 2, 1)
    distance = np.sqrt(ky[:, None] ** 2 + kz[None, :] ** 2)
    profile = 1.0 + POISSON_FALLOFF * distance
    rng = np.random.Generator(np.random.PCG64(seed))
    order = rng.permutation(height * width)  # one throwing order for every trial scale: the mask is a
    # deterministic function of (seed, scale), and the count falls (almost) monotonically with the scale

    def throw(scale: float) -> np.ndarray:
        return _dart_throw(fixed, scale * profile, order)

    # Bracket: the scale of an ideal hexagonal packing at the mean density, then widen until it brackets.
    low, high = 0.0, math.sqrt(acceleration) * 1.5
    while int(throw(high).sum()) > budget and high < max(height, width):
        low, high = high, high * 2
    best_mask, best_error = None, math.inf
    for _ in range(30):
        scale = 0.5 * (low + high)
        mask = throw(scale)
        count = int(mask.sum())
        error = abs(height * width / count - acceleration) / acceleration
        if error < best_error:
            best_mask, best_error = mask, error
        if error <= POISSON_TOLERANCE:
            break
        if count > budget:
            low = scale
        else:
            high = scale
    return best_mask


def _dart_throw(fixed: np.ndarray, radius: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Visit the grid points in ``order`` and accept each one with no accepted point closer than its own
    radius: maximal Poisson-disc sampling on a discrete grid (each point is a dart; a grid has finitely many)."""
    height, width = fixed.shape
    reach = int(math.ceil(float(radius.max())))
    padded = np.zeros((height + 2 * reach, width + 2 * reach), dtype=bool)
    padded[reach : reach + height, reach : reach + width] = fixed
    offsets = np.arange(-reach, reach + 1)
    squared = offsets[:, None] ** 2 + offsets[None, :] ** 2
    flat_radius = radius.ravel()
    fixed_flat = fixed.ravel()
    for index in order:
        if fixed_flat[index]:
            continue
        r = flat_radius[index]
        if r <= 1.0:  # grid neighbours are at least 1 apart: nothing can be closer
            padded[index // width + reach, index % width + reach] = True
            continue
        i, j = divmod(int(index), width)
        k = int(math.ceil(r)) - 1  # the farthest offset strictly closer than r
        window = padded[i + reach - k : i + reach + k + 1, j + reach - k : j + reach + k + 1]
        near = squared[reach - k : reach + k + 1, reach - k : reach + k + 1] < r * r
        if not (window & near).any():
            padded[i + reach, j + reach] = True
    return padded[reach : reach + height, reach : reach + width].copy()
