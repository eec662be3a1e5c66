"""Physics-based synthetic heads: the toolkit's embedded default data set.

Every subject is a randomly deformed, deterministic-per-seed head built from
analytic shapes and rendered in six modalities from one table of tissue
parameters (:data:`TISSUES`), so the modalities are consistent with each other
the way co-registered scans of one person are.

Anatomy (labels, ``uint8``)::

    0 air   1 scalp fat   2 skull   3 CSF   4 grey matter   5 white matter   6 lesion

* head: an ellipsoid (random semi-axes around 73 x 94 x 86 mm, small rotation,
  random centre, smooth random displacement field);
* concentric layers by depth below the scalp: scalp fat (4-7 mm), skull
  (5-8 mm, thickness varying smoothly), subarachnoid CSF (1.5-3.5 mm, varying);
* cortex: a grey-matter ribbon (3.5-5 mm, smoothly modulated thickness) folded
  by sulci (CSF sheets 10-18 mm deep and ~15 mm apart along the zero set of a
  band-limited random field, lined by grey matter, with white-matter cores in the
  gyri) and an interhemispheric fissure;
* white-matter core with deep grey matter (thalami, lentiform nuclei) and two
  banana-shaped lateral ventricles of random size;
* 0-5 white-matter lesions (ellipsoids of 4-7.5 mm semi-axis, random orientation, placed
  inside white matter and apart from each other; about a quarter of subjects
  have none). A random subset of them (at least one when there are any) enhances
  after contrast (``T1c``).

The anatomy is a continuous function of the seed, evaluated at the voxel centres:
the same seed gives the same head at every ``size`` (only voxel size and noise
differ). Partial volume is analytic: each tissue boundary is a depth function in
mm and a voxel's share of a tissue is a one-voxel-wide linear ramp across it (the
box-filtered fraction of a plane), and signals are mixed from the fractions.

Contrasts at 1.5 T (``S`` is the magnetisation a voxel contributes, summed over
its tissue fractions):

* ``T1``  spin echo, TR 500 ms, TE 15 ms:  ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)``
* ``T2``  spin echo, TR 4000 ms, TE 100 ms
* ``PD``  spin echo, TR 4000 ms, TE 15 ms
* ``FLAIR`` inversion recovery, TI 2500 ms, TR 9000 ms, TE 120 ms:
  ``S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)`` (CSF nulled)
* ``T1c`` the ``T1`` sequence after gadolinium: ``1/T1 -> 1/T1 + r1 C`` with
  r1 = 4 /mM/s, C 0.4-1.0 mM in enhancing lesions, small C in grey matter and
  scalp (vessels)
* ``CT`` Hounsfield units mixed linearly from the tissue fractions; skull denser
  in its inner and outer tables than in the diploe; correlated Gaussian noise of
  3-6 HU; no bias field, no gain.

Per subject, tissue parameters vary by a few percent. Per MR modality: a smooth
multiplicative bias field (low-order cosine basis, about +-10-15 % over the head), Rician
noise (magnitude of complex Gaussian noise, sigma 2-4 % of the white-matter
signal) and a random scanner gain (x uniform(200, 2000)), so intensity scales
differ between subjects as in real scans.

Geometry: a 256 mm field of view whatever ``size`` (voxel size 256/size mm,
isotropic), array axes in RAS+ order (axis 0 left -> right, 1 posterior ->
anterior, 2 inferior -> superior), world origin at the centre of the volume.
A mid-axial slice is ``volume[:, :, size // 2]``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from synthmed.errors import SynthmedError
from synthmed.files import output_lock, remove_stale_temporaries, temporary_path

__all__ = [
    "MODALITIES",
    "LABELS",
    "TISSUES",
    "SEQUENCES",
    "TissueParams",
    "make_phantom",
    "write_phantoms",
    "subject_seed",
]

MODALITIES = ("T1", "T2", "PD", "FLAIR", "T1c", "CT")
LABELS = ("air", "scalp fat", "skull", "CSF", "grey matter", "white matter", "lesion")
FOV_MM = 256.0

_MR = ("T1", "T2", "PD", "FLAIR", "T1c")
_FILES = tuple(f"{name}.nii.gz" for name in (*MODALITIES, "labels", "lesion"))

log = logging.getLogger(__name__)
_SUBJECT = re.compile(r"sub-\d{3,}")


@dataclass(frozen=True)
class TissueParams:
    """Nominal tissue parameters at 1.5 T (each subject varies them by a few percent).

    ``pd``: proton density relative to water (CSF = 1); ``t1``, ``t2``: relaxation
    times in ms; ``hu``: CT number in Hounsfield units (the skull's is its mean; the
    tables are denser than the diploe); ``label``: the value in ``labels``.
    """

    label: int
    pd: float
    t1: float
    t2: float
    hu: float


#: tissue -> parameters; the keys are in label order (``LABELS``).
TISSUES: dict[str, TissueParams] = {
    "air": TissueParams(label=0, pd=0.0, t1=1.0, t2=1.0, hu=-1000.0),
    "fat": TissueParams(label=1, pd=0.9, t1=250.0, t2=70.0, hu=-100.0),
    "skull": TissueParams(label=2, pd=0.05, t1=300.0, t2=1.0, hu=1100.0),
    "csf": TissueParams(label=3, pd=1.0, t1=4000.0, t2=2000.0, hu=15.0),
    "gm": TissueParams(label=4, pd=0.8, t1=1100.0, t2=95.0, hu=40.0),
    "wm": TissueParams(label=5, pd=0.7, t1=650.0, t2=75.0, hu=30.0),
    "lesion": TissueParams(label=6, pd=0.85, t1=1300.0, t2=200.0, hu=25.0),
}

#: modality -> (kind, TR ms, TE ms, TI ms or None); ``SE`` spin echo, ``IR`` inversion recovery.
SEQUENCES: dict[str, tuple[str, float, float, float | None]] = {
    "T1": ("SE", 500.0, 15.0, None),
    "T2": ("SE", 4000.0, 100.0, None),
    "PD": ("SE", 4000.0, 15.0, None),
    "FLAIR": ("IR", 9000.0, 120.0, 2500.0),
    "T1c": ("SE", 500.0, 15.0, None),
}

R1_GD = 4.0e-3  # gadolinium relaxivity at 1.5 T, /mM/ms
_CONTRAST_MM = {"fat": 0.10, "gm": 0.05, "wm": 0.02}  # mild uptake (vessels) outside lesions after contrast

_FOLD_K0 = 28.0  # folding field wavenumber (cosine index over the FOV): zero crossings ~ 15 mm apart


def _signal(kind: str, tr: float, te: float, ti: float | None, pd, t1, t2):
    if kind == "SE":
        return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)
    return pd * np.abs(1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


# --------------------------------------------------------------------------------------------------
# smooth random fields: sums of products of cosines over the field of view (resolution independent)


class _Field:
    """``f(x, y, z) = sum_ijk c_ijk cos(pi i (x + L/2) / L) cos(pi j ...) cos(pi k ...)``, x in mm, L the FOV.

    ``orders`` (0 or 1 per axis) selects the field's partial derivatives.
    """

    def __init__(self, coef: np.ndarray, orders: tuple[int, int, int] = (0, 0, 0)):
        self.coef = coef
        self.orders = orders
        self.k = np.arange(coef.shape[0], dtype=np.float64)

    def derivative(self, axis: int) -> _Field:
        return _Field(self.coef, tuple(o + (i == axis) for i, o in enumerate(self.orders)))

    def _basis(self, t, order: int) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64).ravel()
        w = np.pi * self.k[:, None] / FOV_MM
        phase = w * (t[None, :] + FOV_MM / 2)
        return np.cos(phase) if order == 0 else -w * np.sin(phase)

    def grid(self, ax: np.ndarray) -> np.ndarray:
        """The field on the cubic grid ``ax x ax x ax`` (separable: three small tensor contractions).

        Plain ``einsum`` loops rather than BLAS: multi-threaded BLAS gains little on these shapes and
        is many times slower when the CPU is shared with other processes.
        """
        bx, by, bz = (self._basis(ax, o).astype(np.float32) for o in self.orders)  # (K, n) each
        t = np.einsum("ijk,kz->ijz", self.coef.astype(np.float32), bz)
        t = np.einsum("ijz,jy->iyz", t, by)
        return np.einsum("iyz,ix->xyz", t, bx)

    def points(self, x, y, z) -> np.ndarray:
        bx, by, bz = (self._basis(t, o) for t, o in zip((x, y, z), self.orders))  # (K, P) each
        t = np.einsum("ijk,kp->ijp", self.coef, bz)
        t = np.einsum("ijp,jp->ip", t, by)
        return np.einsum("ip,ip->p", t, bx)


def _random_field(
    rng: np.random.Generator, kmax: int, std: float, *, kmin: float = 1.0, band: tuple[float, float] | None = None
) -> _Field:
    """Random coefficients with a 1/|k| spectrum in ``kmin <= |k| <= kmax`` (or a Gaussian ``band`` (k0, width))."""
    k = np.arange(kmax + 1, dtype=np.float64)
    kk = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    if band is None:
        weight = np.where((kk >= kmin) & (kk <= kmax), 1.0 / np.maximum(kk, 1.0), 0.0)
    else:
        weight = np.exp(-(((kk - band[0]) / band[1]) ** 2))
    coef = rng.standard_normal(kk.shape) * weight
    mean_square = np.where(k == 0, 1.0, 0.5)  # mean of cos^2 over the FOV
    variance = float(np.sum(coef**2 * mean_square[:, None, None] * mean_square[None, :, None] * mean_square))
    return _Field(coef * (std / np.sqrt(variance)))


# --------------------------------------------------------------------------------------------------
# geometry, evaluated either on the voxel grid or at scattered points (for lesion placement)


class _OnGrid:
    def __init__(self, ax: np.ndarray, centre: tuple[float, float, float]):
        self.ax = ax
        self.X, self.Y, self.Z = ax[:, None, None], ax[None, :, None], ax[None, None, :]
        # the deep structures lie well within 65 mm of the head centre: compute them in that box only
        self.core = tuple(slice(int(np.searchsorted(ax, c - 65.0)), int(np.searchsorted(ax, c + 65.0))) for c in centre)

    def field(self, f: _Field) -> np.ndarray:
        return f.grid(self.ax)


class _AtPoints:
    core = Ellipsis

    def __init__(self, pts: np.ndarray):
        self.X, self.Y, self.Z = (np.ascontiguousarray(pts[:, i]) for i in range(3))

    def field(self, f: _Field) -> np.ndarray:
        return f.points(self.X, self.Y, self.Z)


def _ellipsoid_depth(dx, dy, dz, ax: float, ay: float, az: float):
    """Depth (mm) below the surface of the ellipsoid, along the ray from its centre; negative outside."""
    rho = np.sqrt(dx * dx + dy * dy + dz * dz)
    r = np.sqrt((dx * (1.0 / ax)) ** 2 + (dy * (1.0 / ay)) ** 2 + (dz * (1.0 / az)) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        surface = np.where(r > 0, rho / r, min(ax, ay, az))
    return surface - rho


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


class _Head:
    """One subject's anatomy: every random choice, drawn in a fixed order from the anatomy generator."""

    def __init__(self, rng: np.random.Generator):
        self.axes = (_u(rng, 68, 78), _u(rng, 88, 100), _u(rng, 80, 92))  # LR, AP, SI semi-axes, mm
        self.centre = tuple(float(c) for c in rng.uniform(-4, 4, 3))
        self.rotation = _rotation(rng, 6.0)
        self.deform = [_random_field(rng, 3, _u(rng, 1.5, 3.5)) for _ in range(3)]
        self.scalp = _u(rng, 4.0, 7.0)
        self.skull = _u(rng, 5.0, 8.0)
        self.csf = _u(rng, 1.5, 3.5)
        self.gm = _u(rng, 3.5, 5.0)
        self.f_skull = _random_field(rng, 4, 0.15)
        self.f_csf = _random_field(rng, 5, 0.4)
        self.f_gm = _random_field(rng, 6, 0.2)
        self.f_fold = _random_field(rng, int(_FOLD_K0) + 8, 1.0, band=(_FOLD_K0, 4.0))
        self.f_fold_grad = [self.f_fold.derivative(i) for i in range(3)]
        self.f_sulcus_depth = _random_field(rng, 6, 0.3)
        self.sulcus_depth = _u(rng, 10.0, 18.0)
        self.sulcus_half_width = 0.25 * self.csf + _u(rng, 0.1, 0.3)  # wider sulci with more CSF (atrophy)
        self.fissure_depth = _u(rng, 25.0, 35.0)
        self.fissure_half_width = 0.2 * self.csf + _u(rng, 0.2, 0.4)
        # lateral ventricles: off-midline body, diverging posteriorly, horns bending down
        self.vent_lr = _u(rng, 4.0, 10.0)
        self.vent = dict(
            off=self.vent_lr + _u(rng, 1.5, 3.5),
            cy=_u(rng, -5, 5),
            cz=_u(rng, 3, 12),
            ax=self.vent_lr,
            ay=_u(rng, 16, 26),
            az=_u(rng, 5, 10),
            diverge=_u(rng, 0.15, 0.35),
            bend=_u(rng, 3, 8),
            asym=tuple(float(s) for s in np.exp(0.1 * rng.standard_normal(2))),
        )
        # deep grey matter: thalamus and lentiform nucleus on each side
        self.deep = [
            (_u(rng, 9, 12), _u(rng, -12, -6), _u(rng, -6, 0), _u(rng, 7, 9), _u(rng, 10, 14), _u(rng, 7, 10)),
            (_u(rng, 20, 25), _u(rng, 0, 8), _u(rng, -4, 2), _u(rng, 5, 7), _u(rng, 11, 15), _u(rng, 7, 10)),
        ]
        # per-subject tissue parameters
        self.tissue = {}
        for name, t in TISSUES.items():
            jitter = np.exp(0.03 * rng.standard_normal(3))
            self.tissue[name] = (t.pd * float(jitter[0]), t.t1 * float(jitter[1]), t.t2 * float(jitter[2]))
        self.hu = {name: t.hu for name, t in TISSUES.items()}
        self.hu["gm"] += _u(rng, -3, 3)
        self.hu["wm"] += _u(rng, -3, 3)
        self.hu["skull"] *= _u(rng, 0.9, 1.1)
        self.f_bone = _random_field(rng, 5, 0.08)
        self.texture = _random_field(rng, 14, 0.02, band=(10.0, 4.0))
        self.lesions = self._place_lesions(rng)

    # --- depth maps (mm, positive inside) ------------------------------------------------------------

    def depths(self, ev, folds: bool = True) -> dict[str, np.ndarray]:
        """Depth maps; without ``folds`` (lesion placement), a sulcus is assumed everywhere."""
        rot, c = self.rotation, self.centre
        p = (
            ev.X + ev.field(self.deform[0]) - c[0],
            ev.Y + ev.field(self.deform[1]) - c[1],
            ev.Z + ev.field(self.deform[2]) - c[2],
        )
        u0, u1, u2 = (float(rot[0, i]) * p[0] + float(rot[1, i]) * p[1] + float(rot[2, i]) * p[2] for i in range(3))
        head = _ellipsoid_depth(u0, u1, u2, *self.axes)
        t_skull = self.skull * np.maximum(1.0 + ev.field(self.f_skull), 0.3)
        t_csf = self.csf * np.maximum(1.0 + ev.field(self.f_csf), 0.25)
        t_gm = self.gm * np.maximum(1.0 + ev.field(self.f_gm), 0.3)
        # sulci: sheets along the zero set of the folding field; distance to it ~ |w| / |grad w|
        if folds:
            w = ev.field(self.f_fold)
            gx, gy, gz = (ev.field(f) for f in self.f_fold_grad)
            sulcus = np.abs(w) / (np.sqrt(gx * gx + gy * gy + gz * gz) + 1e-3)
        else:
            sulcus = np.zeros_like(head)
        sulcus_depth = self.sulcus_depth * np.maximum(1.0 + ev.field(self.f_sulcus_depth), 0.0)
        bone = head - self.scalp
        icv = bone - t_skull
        c0, c1, c2 = u0[ev.core], u1[ev.core], u2[ev.core]
        deep = None
        for cx, cy, cz, ax, ay, az in self.deep:
            for side in (-1.0, 1.0):
                d = _ellipsoid_depth(c0 - side * cx, c1 - cy, c2 - cz, ax, ay, az)
                deep = d if deep is None else np.maximum(deep, d)
        v = self.vent
        vent = None
        for side, scale in zip((-1.0, 1.0), v["asym"]):
            dy = c1 - v["cy"]
            dx = c0 - side * (v["off"] + v["diverge"] * np.maximum(-dy, 0))
            dz = c2 - v["cz"] + v["bend"] * (dy * (1.0 / v["ay"])) ** 2
            d = _ellipsoid_depth(dx, dy, dz, v["ax"] * scale, v["ay"] * scale, v["az"] * scale)
            vent = d if vent is None else np.maximum(vent, d)
        return dict(
            head=head,
            bone=bone,
            icv=icv,
            t_skull=t_skull,
            cortex=icv - t_csf,
            t_gm=t_gm,
            sulcus=sulcus,
            sulcus_depth=sulcus_depth,
            fissure=np.abs(u0),
            deep=deep,
            vent=vent,
        )

    def wm_clearance(self, d: dict[str, np.ndarray]) -> np.ndarray:
        """Roughly how far (mm) a point lies inside the white matter (before deep structures); < 0 outside."""
        cortex, t_gm = d["cortex"], d["t_gm"]
        clear_sulcus = np.maximum(d["sulcus"] - self.sulcus_half_width - t_gm, cortex - d["sulcus_depth"] - t_gm)
        clear_fissure = np.maximum(d["fissure"] - self.fissure_half_width - t_gm, cortex - self.fissure_depth - t_gm)
        return np.minimum(np.minimum(cortex - t_gm, clear_sulcus), clear_fissure)

    # --- lesions -------------------------------------------------------------------------------------

    def _place_lesions(self, rng: np.random.Generator) -> list[dict]:
        count = 0 if rng.random() < 0.25 else int(rng.integers(1, 6))
        wanted = []
        for _ in range(count):
            size = _u(rng, 4.0, 7.5)
            semi = np.array([size, size * _u(rng, 0.55, 1.0), size * _u(rng, 0.55, 1.0)])
            jitter = np.exp(rng.standard_normal(3) * (0.05, 0.1, 0.15))  # PD, T1, T2 of this lesion
            wanted.append(
                dict(
                    semi=semi,
                    rot=_random_rotation(rng),
                    jitter=jitter,
                    enhance=bool(rng.random() < 0.6),
                    conc=_u(rng, 0.4, 1.0),
                )
            )
        if wanted and not any(lesion["enhance"] for lesion in wanted):
            wanted[int(rng.integers(len(wanted)))]["enhance"] = True
        # surface samples of a unit sphere (6 axes and 8 diagonals), pushed 1 mm out of each lesion
        dirs = np.array(
            [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]
            + [[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)],
            dtype=np.float64,
        )
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        placed: list[dict] = []
        reach = np.array(self.axes) - 25.0
        for _attempt in range(6):
            if len(placed) == len(wanted):
                break
            centres = np.array(self.centre) + rng.uniform(-1, 1, (256, 3)) * reach
            d = self.depths(_AtPoints(centres), folds=False)
            centres = centres[(self.wm_clearance(d) > 2.0) & (d["vent"] < -1.0) & (d["deep"] < -1.0)]
            for lesion in wanted[len(placed) :]:
                surface = (dirs * (lesion["semi"] + 1.0)) @ lesion["rot"].T  # (14, 3) offsets
                d = self.depths(_AtPoints((centres[:, None, :] + surface[None]).reshape(-1, 3)), folds=False)
                inside = ((self.wm_clearance(d) > 0.0) & (d["vent"] < 0.0) & (d["deep"] < 0.0)).reshape(-1, 14)
                choice = None
                for g in np.flatnonzero(inside.all(axis=1)):
                    if all(
                        np.linalg.norm(centres[g] - o["centre"]) > lesion["semi"].max() + o["semi"].max() + 6.0
                        for o in placed
                    ):
                        choice = g
                        break
                if choice is None:
                    break
                placed.append(dict(lesion, centre=centres[choice]))
        return placed


def _ramp(depth: np.ndarray, voxel: float) -> np.ndarray:
    """Share of a voxel inside a boundary at ``depth`` mm (a one-voxel-wide linear ramp)."""
    return np.clip(depth * (1.0 / voxel) + 0.5, 0.0, 1.0)


def _slab(distance: np.ndarray, half_width, voxel: float) -> np.ndarray:
    """Share of a voxel at ``distance`` mm from the mid-plane of a sheet ``2 half_width`` thick (1D box filter)."""
    h = 0.5 * voxel
    overlap = np.minimum(distance + h, half_width) - np.maximum(distance - h, -half_width)
    return np.clip(overlap * (1.0 / voxel), 0.0, 1.0)


def _check(size, seed) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise SynthmedError(f"phantom size must be an integer >= 8 (voxels per side), got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SynthmedError(f"phantom seed must be a non-negative integer, got {seed!r}")


def subject_seed(seed: int, index: int) -> int:
    """The ``make_phantom`` seed of subject ``index`` (1-based, ``sub-001`` is 1) of a set written with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0])


def make_phantom(size: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """One synthetic head of ``size``^3 voxels (256 mm field of view, RAS+, origin at the centre).

    Returns ``float32`` volumes for each of :data:`MODALITIES`, ``labels`` (``uint8``, see
    :data:`LABELS`), ``lesion`` (``uint8`` 0/1, the voxels labelled lesion) and ``affine``
    (4 x 4 voxel-to-world, mm). Deterministic for a seed; the anatomy does not depend on ``size``.
    """
    _check(size, seed)
    n = int(size)
    anatomy_rng, scanner_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))
    head = _Head(anatomy_rng)
    voxel = FOV_MM / n
    ax = ((np.arange(n, dtype=np.float64) - (n - 1) / 2) * voxel).astype(np.float32)
    grid = _OnGrid(ax, head.centre)
    d = head.depths(grid)

    # tissue fractions: air, fat, skull, CSF, GM, WM, lesion
    frac = np.empty((7, n, n, n), dtype=np.float32)
    inside = _ramp(d["head"], voxel)
    bone = _ramp(d["bone"], voxel)
    icv = _ramp(d["icv"], voxel)
    cortex, t_gm = d["cortex"], d["t_gm"]
    # clefts: CSF sheets (sulci, interhemispheric fissure) lined by grey matter, shallower than their depth
    cleft = np.maximum(
        _slab(d["sulcus"], head.sulcus_half_width, voxel) * _ramp(d["sulcus_depth"] - cortex, voxel),
        _slab(d["fissure"], head.fissure_half_width, voxel) * _ramp(head.fissure_depth - cortex, voxel),
    )
    cleft_wm = np.maximum(
        _slab(d["sulcus"], head.sulcus_half_width + t_gm, voxel) * _ramp(d["sulcus_depth"] + t_gm - cortex, voxel),
        _slab(d["fissure"], head.fissure_half_width + t_gm, voxel) * _ramp(head.fissure_depth + t_gm - cortex, voxel),
    )
    brain = np.minimum(_ramp(cortex, voxel) * (1.0 - cleft), icv)
    wm = np.minimum(_ramp(cortex - t_gm, voxel) * (1.0 - cleft_wm), brain)
    del cleft, cleft_wm
    frac[0] = 1.0 - inside
    frac[1] = inside - bone
    frac[2] = bone - icv
    frac[3] = icv - brain
    frac[4] = brain - wm
    frac[5] = wm
    g, w = frac[(4, *grid.core)], frac[(5, *grid.core)]  # views of the central box
    deep = _ramp(d["deep"], voxel) * w  # deep grey matter replaces white matter
    g += deep
    w -= deep
    vent = _ramp(d["vent"], voxel)  # ventricles replace both
    frac[(3, *grid.core)] += vent * (g + w)
    g *= 1.0 - vent
    w *= 1.0 - vent
    frac[6] = 0.0
    lesion_parts = []
    for lesion in head.lesions:
        reach = float(lesion["semi"].max()) + voxel
        box = tuple(
            slice(
                max(int(np.floor((c - reach) / voxel + (n - 1) / 2)), 0),
                min(int(np.ceil((c + reach) / voxel + (n - 1) / 2)) + 1, n),
            )
            for c in lesion["centre"]
        )
        dx, dy, dz = (ax[b] - np.float32(c) for b, c in zip(box, lesion["centre"]))
        off = (dx[:, None, None], dy[None, :, None], dz[None, None, :])
        rot = lesion["rot"]
        local = [float(rot[0, i]) * off[0] + float(rot[1, i]) * off[1] + float(rot[2, i]) * off[2] for i in range(3)]
        share = _ramp(_ellipsoid_depth(*local, *(float(a) for a in lesion["semi"])), voxel) * frac[(5, *box)]
        frac[(5, *box)] -= share
        frac[(6, *box)] += share
        lesion_parts.append((box, share, lesion))
    labels = np.zeros((n, n, n), dtype=np.uint8)  # argmax over tissues (np.argmax(axis=0) is slow)
    best = frac[0].copy()
    for k in range(1, 7):
        more = frac[k] > best
        labels[more] = k
        np.maximum(best, frac[k], out=best)
    skull_position = np.clip((d["bone"]) / d["t_skull"], 0.0, 1.0)
    del d, inside, bone, icv, brain, wm, g, w, deep, vent, best, more

    # MR: signal of each tissue, mixed by fraction, then texture, bias field, Rician noise and gain
    tissues = ("air", "fat", "skull", "csf", "gm", "wm")
    out: dict[str, np.ndarray] = {}
    texture = 1.0 + head.texture.grid(ax)
    for modality in _MR:
        kind, tr, te, ti = SEQUENCES[modality]
        values = []
        for name in tissues:
            pd, t1, t2 = head.tissue[name]
            if modality == "T1c" and name in _CONTRAST_MM:
                t1 = 1.0 / (1.0 / t1 + R1_GD * _CONTRAST_MM[name])
            values.append(_signal(kind, tr, te, ti, pd, t1, t2) if name != "air" else 0.0)
        image = np.zeros((n, n, n), dtype=np.float32)
        for k, value in enumerate(values):
            if value:
                image += np.float32(value) * frac[k]
        pd, t1, t2 = head.tissue["lesion"]
        for box, share, lesion in lesion_parts:
            lpd, lt1, lt2 = pd * lesion["jitter"][0], t1 * lesion["jitter"][1], t2 * lesion["jitter"][2]
            if modality == "T1c" and lesion["enhance"]:
                lt1 = 1.0 / (1.0 / lt1 + R1_GD * lesion["conc"])
            image[box] += np.float32(_signal(kind, tr, te, ti, lpd, lt1, lt2)) * share
        image *= texture
        bias = _random_field(scanner_rng, 2, _u(scanner_rng, 0.06, 0.1))  # about +-10-15 % over the head
        image *= np.exp(bias.grid(ax))
        wm_signal = values[tissues.index("wm")]
        sigma = np.float32(wm_signal * _u(scanner_rng, 0.02, 0.04))
        gain = np.float32(_u(scanner_rng, 200.0, 2000.0))
        real = image + sigma * noise_rng.standard_normal(image.shape, dtype=np.float32)
        imag = sigma * noise_rng.standard_normal(image.shape, dtype=np.float32)
        out[modality] = (np.sqrt(real * real + imag * imag) * gain).astype(np.float32)

    # CT: Hounsfield units mixed by fraction; denser skull tables; correlated noise
    ct = np.zeros((n, n, n), dtype=np.float32)
    for k, name in enumerate(tissues):
        if name != "skull":
            ct += np.float32(head.hu[name]) * frac[k]
    tables = (2.0 * skull_position - 1.0) ** 2
    skull_hu = head.hu["skull"] * (0.7 + 0.9 * tables) * (1.0 + head.f_bone.grid(ax))
    ct += frac[2] * skull_hu
    for box, share, lesion in lesion_parts:
        ct[box] += np.float32(head.hu["lesion"]) * share
    sigma_ct = _u(scanner_rng, 3.0, 6.0)
    noise = ndimage.gaussian_filter(noise_rng.standard_normal((n, n, n), dtype=np.float32), 0.7, mode="wrap")
    noise *= np.float32(sigma_ct / max(float(noise.std()), 1e-6))
    out["CT"] = np.clip(ct + noise, -1024.0, 3071.0).astype(np.float32)

    out["labels"] = labels
    out["lesion"] = (labels == 6).astype(np.uint8)
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = -voxel * (n - 1) / 2
    out["affine"] = affine
    return out


PHANTOM_DESCRIPTION = b"synthmed phantom"


def _save(array: np.ndarray, affine: np.ndarray, path: Path, description: str) -> None:
    """One phantom file, written under a temporary name and renamed (a full disk leaves nothing behind)."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["descrip"] = description.encode()[:79]
    part = temporary_path(path, "tmp")
    try:
        nib.save(img, part)
        os.replace(part, path)
    except OSError as error:
        part.unlink(missing_ok=True)
        raise SynthmedError(
            f"{path}: writing failed ({error.strerror or error}); check free space and permissions"
        ) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def is_phantom_file(path: Path) -> bool:
    """Whether ``path`` is a phantom file this module wrote (its NIfTI description says so): what
    ``--overwrite`` may replace or delete."""
    import nibabel as nib

    if path.is_symlink() or not path.is_file():
        return False
    try:
        description = bytes(nib.load(path).header["descrip"].tobytes())
    except Exception:  # noqa: BLE001 - anything unreadable is not one of ours
        return False
    return description.startswith(PHANTOM_DESCRIPTION)


def write_phantoms(out_dir, subjects: int, size: int = 64, seed: int = 0, overwrite: bool = False) -> list[Path]:
    """Write ``subjects`` phantoms to ``out_dir/sub-001/{T1,T2,PD,FLAIR,T1c,CT,labels,lesion}.nii.gz``.

    Images are ``float32``, ``labels`` and ``lesion`` ``uint8``. Subject ``i`` (1-based) is
    ``make_phantom(size, subject_seed(seed, i))``, the same whatever ``subjects`` is. A non-empty
    ``out_dir`` is refused unless ``overwrite``; then phantom files are replaced and phantom subject
    folders beyond ``subjects`` (``sub-NNN`` folders holding only phantom files) are removed. A file this
    module did not write (:func:`is_phantom_file`) is never replaced or removed: where one stands in the way,
    nothing is written and the error names it. Returns the subject folders.
    """
    out = Path(out_dir)
    if isinstance(subjects, bool) or not isinstance(subjects, (int, np.integer)) or subjects < 1:
        raise SynthmedError(f"--subjects must be a positive integer, got {subjects!r}")
    if out.exists() and not out.is_dir():
        raise SynthmedError(f"{out} is a file, not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SynthmedError(f"{out} is not empty; pass --overwrite to replace its phantoms or choose another folder")
    _check(size, seed)
    with output_lock(out):
        return _write_phantoms(out, subjects, size, seed)


def _write_phantoms(out: Path, subjects: int, size: int, seed: int) -> list[Path]:
    wanted = [f"sub-{i:03d}" for i in range(1, subjects + 1)]
    for name in wanted:  # everything that would be replaced must be ours, before anything is written
        folder = out / name
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise SynthmedError(
                f"{folder} is not a phantom subject folder; --overwrite replaces only files synthmed "
                "phantom wrote: move it away or choose another folder"
            )
        for file in _FILES:
            path = folder / file
            if (path.exists() or path.is_symlink()) and not is_phantom_file(path):
                raise SynthmedError(
                    f"{path} was not written by synthmed phantom; --overwrite replaces only phantom "
                    "files: move it away or choose another folder"
                )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SynthmedError(f"{out}: cannot create the folder ({exc.strerror or exc}); choose another one") from None
    for stale in sorted(out.iterdir()):
        if stale.is_dir() and not stale.is_symlink() and _SUBJECT.fullmatch(stale.name) and stale.name not in wanted:
            if all(is_phantom_file(p) for p in stale.iterdir()):
                shutil.rmtree(stale)
            else:
                log.info("%s holds files synthmed phantom did not write; left as it is", stale)
    folders = []
    for i, name in enumerate(wanted, start=1):
        folder = out / name
        folder.mkdir(exist_ok=True)
        remove_stale_temporaries(folder)
        ph = make_phantom(size, subject_seed(seed, i))
        for modality in (*MODALITIES, "labels", "lesion"):
            _save(
                ph[modality],
                ph["affine"],
                folder / f"{modality}.nii.gz",
                f"synthmed phantom {modality} seed {seed} sub {i}",
            )
        folders.append(folder)
    return folders
