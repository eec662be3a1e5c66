"""Multi-octave simplex noise in torch: the structured noise AnoDDPM diffuses with instead of white Gaussian noise.

White noise destroys fine detail first, so a model that denoises from a partial step restores small structures
but keeps large ones, a large lesion included. Simplex noise has most of its energy at low spatial frequencies:
noised to the same step, large structures are disturbed too, and the healthy-trained model paints healthy
anatomy over a large lesion (Wyatt et al., CVPRW 2022, found it markedly better for large lesions).

The noise is Gustavson's 3D simplex noise (gradients at the corners of a skewed tetrahedral lattice, each
corner's contribution falling off as ``(0.6 - r^2)^4``), summed over octaves: octave ``o`` at frequency
``frequency * 2^o`` with amplitude ``persistence^o``. A 2D field is a plane of the 3D noise at a random depth, so
every slice of a batch (and every call) gets a field of its own. Each field is then normalised to zero mean and
unit variance, so it can stand in for the unit Gaussian of the forward process ``q(x_t | x_0)``.

Paper settings: 6 octaves, persistence 0.8, starting frequency 2^-6 per pixel (a period of 64 pixels).
"""

from __future__ import annotations

import math

import torch

# the 12 gradients: midpoints of the edges of a cube
_GRADIENTS = torch.tensor(
    [
        [1, 1, 0],
        [-1, 1, 0],
        [1, -1, 0],
        [-1, -1, 0],
        [1, 0, 1],
        [-1, 0, 1],
        [1, 0, -1],
        [-1, 0, -1],
        [0, 1, 1],
        [0, -1, 1],
        [0, 1, -1],
        [0, -1, -1],
    ],
    dtype=torch.float32,
)
_SKEW = 1.0 / 3.0
_UNSKEW = 1.0 / 6.0
_RADIUS_SQUARED = 0.6
_SCALE = 32.0  # brings a single octave to about [-1, 1]

PAPER_OCTAVES = 6
PAPER_PERSISTENCE = 0.8
PAPER_FREQUENCY = 2.0**-6


def simplex_3d(points: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Simplex noise at ``points`` (..., 3), with the lattice hashed by ``permutation`` (512 entries: a permutation
    of 0..255 written twice). Returns (...) float32, roughly in [-1, 1], continuous."""
    points = points.to(torch.float32)
    skewed = torch.floor(points + points.sum(-1, keepdim=True) * _SKEW)
    first = points - (skewed - skewed.sum(-1, keepdim=True) * _UNSKEW)  # offset from the cell's origin corner
    x, y, z = first.unbind(-1)
    # the simplex of the cell that holds the point: step along the largest offset, then the second largest
    x_ge_y, y_ge_z, x_ge_z = (x >= y), (y >= z), (x >= z)
    step_one = torch.stack([x_ge_y & x_ge_z, ~x_ge_y & y_ge_z, ~y_ge_z & ~x_ge_z], -1)
    step_two = torch.stack([x_ge_y | x_ge_z, ~x_ge_y | y_ge_z, ~y_ge_z | ~x_ge_z], -1)
    lattice = skewed.long() & 255
    gradients = _GRADIENTS.to(points.device)
    total = torch.zeros(points.shape[:-1], dtype=torch.float32, device=points.device)
    for number, corner in enumerate((None, step_one, step_two, True)):
        if corner is None:
            offset, index = first, lattice
        elif corner is True:
            offset, index = first - 1.0 + 3 * _UNSKEW, lattice + 1
        else:
            offset, index = first - corner.float() + number * _UNSKEW, lattice + corner.long()
        hashed = permutation[index[..., 0] + permutation[index[..., 1] + permutation[index[..., 2]]]] % 12
        falloff = (_RADIUS_SQUARED - (offset * offset).sum(-1)).clamp_min(0.0)
        falloff = falloff * falloff
        total += falloff * falloff * (gradients[hashed] * offset).sum(-1)
    return _SCALE * total


def _permutation(generator: torch.Generator, device: torch.device) -> torch.Tensor:
    table = torch.randperm(256, generator=generator)
    return torch.cat([table, table]).to(device)


def simplex_noise(
    shape: tuple[int, ...],
    *,
    octaves: int = PAPER_OCTAVES,
    persistence: float = PAPER_PERSISTENCE,
    frequency: float = PAPER_FREQUENCY,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    normalise: bool = True,
) -> torch.Tensor:
    """Multi-octave simplex noise of ``shape``: (..., H, W) gives an independent 2D field per leading index (a
    random plane of the 3D noise); a 5D shape (B, C, D, H, W) gives 3D fields. Each field is normalised to zero
    mean and unit variance unless ``normalise`` is off. ``generator`` (CPU) makes the draw reproducible."""
    if octaves < 1 or not 0 < persistence <= 1 or not frequency > 0:
        raise ValueError(
            f"simplex noise: octaves {octaves} >= 1, persistence {persistence} in (0, 1], frequency {frequency} > 0"
        )
    if len(shape) < 2:
        raise ValueError(f"simplex noise needs at least (H, W), got shape {tuple(shape)}")
    device = torch.device(device)
    generator = (
        generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    )
    volumetric = len(shape) == 5
    spatial = tuple(shape[-3:]) if volumetric else tuple(shape[-2:])
    fields = math.prod(shape[: len(shape) - len(spatial)])
    axes = [torch.arange(n, dtype=torch.float32, device=device) for n in spatial]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (*spatial, 2 or 3)
    if not volumetric:
        grid = torch.cat([grid, torch.zeros(*spatial, 1, device=device)], dim=-1)
    permutation = _permutation(generator, device)
    # a random shift per field and octave: independent fields from one lattice, all fields in one call per octave
    shifts = (torch.rand(octaves, fields, 3, generator=generator) * 256.0).to(device)
    shifts = shifts.reshape(octaves, fields, *([1] * len(spatial)), 3)
    out = torch.zeros((fields, *spatial), dtype=torch.float32, device=device)
    for octave in range(octaves):
        scale = frequency * 2.0**octave
        out += persistence**octave * simplex_3d(grid * scale + shifts[octave], permutation)
    if normalise:
        flat = out.reshape(fields, -1)
        out = ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-12)).reshape(out.shape)
    return out.reshape(shape)


def simplex_like(x: torch.Tensor, generator: torch.Generator | None = None, **options) -> torch.Tensor:
    """Normalised simplex noise with the shape, dtype and device of ``x`` (B, C, H, W) or (B, C, D, H, W)."""
    return simplex_noise(tuple(x.shape), generator=generator, device=x.device, **options).to(x.dtype)
