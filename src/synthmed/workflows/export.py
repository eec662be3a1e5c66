"""``synthmed export``: a trained run as a deployable translator (TorchScript, ONNX or a MONAI bundle).

What is exported is the part of a method that runs at translation time, on a batch of normalised slices
(B, C, H, W) in the model's [-1, 1] space (C: the 2.5D context, 1 without it), giving (B, 1, H, W):

- deterministic translators (pix2pix, medgan, cyclegan, unit, gmm-unit): the generator (for UNIT-style models
  encoder + generator; for gmm-unit wrapped in its sliding window);
- diffusion translators (ddpm, syndiff): the denoiser and the whole sampling loop as one module. A loop draws
  random numbers, which a deployed artefact must not do behind the caller's back (results could not be
  reproduced or compared), so the loop takes its noise as inputs: ``sampler(source, noise)`` for ddpm (``noise``
  (K, B, 1, H, W): the start x_T and one tensor per stochastic step; K = 1 for DDIM with eta 0) and
  ``sampler(source, noise, latents)`` for syndiff (noise (T + 1, B, 1, H, W): x_T and one per step; latents
  (T, B, nz)). :func:`draw_noise` draws them from a ``torch.Generator`` in the order the model itself does, so
  the exported loop reproduces ``synthmed translate`` exactly.

How TorchScript is made: the networks do not compile with ``torch.jit.script`` (MONAI's diffusion U-Net,
NCSN++, our U-Net use Python constructs TorchScript lacks), so each network is *traced* on an example batch;
traces of these convolutional networks are shape-generic, and every export is checked on a second,
differently sized batch. The code around them (padding to the networks' size multiple, gmm-unit's sliding
window, the samplers' loops) is *scripted*, so sizes stay dynamic: H and W any size for the translators
(padded inside with the background -1, cut back after), multiples of ``size_multiple`` for the diffusion
loops (the caller pads, because the noise has the padded shape). syndiff's NCSN++ needs square slices.

ONNX holds the network alone (for ddpm/syndiff the denoiser: the loop stays with the caller), exported with
``torch.onnx``'s dynamo exporter with a dynamic batch and dynamic sides (multiples of ``size_multiple``), falling
back to the TorchScript-based exporter and then to fixed shapes; ``export.json`` says which was used.

Every artefact is loaded back from its file (``torch.jit.load``; onnxruntime) and run on the same inputs as the
model's own inference; the export is refused (nothing written) if any output differs by more than
:data:`TOLERANCE`. The differences are printed and recorded.

A bundle (``--format bundle``) is a MONAI bundle: ``configs/metadata.json``, ``configs/inference.json``,
``configs/plan.json`` (the run's preprocessing record), ``models/model.pt`` (state dict of the exported network),
``models/model.ts`` (TorchScript) and ``docs/README.md``. Its inference config calls synthmed components
(:class:`BundleTranslator`) rather than pure MONAI transforms: translation normalises each volume with
robust percentiles of its foreground, crops and resamples slices to the plan's geometry, predicts the output
scale from the input's and pastes the result back with the background outside the head; MONAI's transforms
reproduce none of these exactly, and an approximate pipeline would not give ``translate``'s values.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthmed import __version__
from synthmed.data.io import ensure_writable_folder, read_volume, write_volume
from synthmed.data.plan import Plan
from synthmed.diffusion.samplers import get_sampler, integer_grid
from synthmed.errors import SynthmedError
from synthmed.files import (
    MARKER_FORMAT,
    MARKER_NAME,
    json_text,
    output_lock,
    read_marker,
    refuse_overlap,
    remove_stale_temporaries,
    temporary_path,
    write_text_atomic,
)
from synthmed.models.base import SynthesisModel
from synthmed.nn.patches import padded_to_multiple
from synthmed.workflows.translate import LoadedRun, _reference_normalization, load_run, translate_volume

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx", "bundle")
TOLERANCE = 1e-4  # largest difference allowed between an exported artefact and the model, in [-1, 1] units
DETERMINISTIC = ("pix2pix", "medgan", "cyclegan", "unit", "gmm-unit")
DIFFUSION = ("ddpm", "syndiff")
LOOP_SAMPLERS = ("ddim", "ddpm")  # ddpm runs: the discrete samplers, whose loop is a fixed list of steps
RECORD = "export.json"
COMMAND = "export"


# ----------------------------------------------------------------------------- exportable modules


class PaddedTranslator(nn.Module):
    """A translator network applied as ``synthmed translate`` applies it: the slices padded on all sides with the
    background (-1) to the next multiple of ``multiple`` (the sides the network takes), the output cut back."""

    def __init__(self, network: nn.Module, multiple: int):
        super().__init__()
        self.network = network
        self.multiple = multiple

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        height, width = source.shape[-2], source.shape[-1]
        pad_h = (self.multiple - height % self.multiple) % self.multiple
        pad_w = (self.multiple - width % self.multiple) % self.multiple
        if pad_h == 0 and pad_w == 0:
            return self.network(source)
        top, left = pad_h // 2, pad_w // 2
        padded = F.pad(source, [left, pad_w - left, top, pad_h - top], value=-1.0)
        return self.network(padded)[:, :, top : top + height, left : left + width]


class ResidualOutput(nn.Module):
    """MedGAN's output: the CasNet's image, or with ``residual`` the centre source slice plus it, clipped."""

    def __init__(self, network: nn.Module, residual: bool):
        super().__init__()
        self.network = network
        self.residual = residual

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        output = self.network(source)
        if self.residual:
            middle = source.shape[1] // 2
            return (source[:, middle : middle + 1] + output).clamp(-1.0, 1.0)
        return output


class SlidingWindow(nn.Module):
    """gmm-unit's whole-slice translation (:func:`synthmed.nn.patches.sliding_window`) in TorchScript: the patch
    network over windows at a stride of half a patch (the last flush with the border), blended with the
    centre-weighted pyramid."""

    def __init__(self, network: nn.Module, patch: int):
        super().__init__()
        self.network = network
        self.patch = patch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2], images.shape[-1]
        side = min(self.patch, height)
        if side != min(self.patch, width):
            raise ValueError("the image is smaller than the patch on one side only")
        stride = max(1, self.patch // 2)
        rows = _window_starts(height, side, stride)
        cols = _window_starts(width, side, stride)
        ramp = torch.arange(side, device=images.device, dtype=torch.float32)
        ramp = torch.minimum(ramp + 1, side - ramp)
        weight = ramp[:, None] * ramp[None, :]
        total = torch.zeros(1, 1, height, width, device=images.device)
        outputs: list[torch.Tensor] = []
        for r in rows:
            for c in cols:
                result = self.network(images[:, :, r : r + side, c : c + side]).float()
                if len(outputs) == 0:
                    outputs.append(torch.zeros(images.shape[0], result.shape[1], height, width, device=images.device))
                outputs[0][:, :, r : r + side, c : c + side] += result * weight
                total[:, :, r : r + side, c : c + side] += weight
        return outputs[0] / total


def _window_starts(size: int, patch: int, stride: int) -> list[int]:
    """:func:`synthmed.nn.patches.window_starts`, in TorchScript."""
    if patch >= size:
        return [0]
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


class DiscreteLoop(nn.Module):
    """The DDIM / respaced-DDPM sampler of :mod:`synthmed.diffusion.samplers` for a conditional denoiser, with its
    noise as an input (see the module docstring). Step ``k`` evaluates the network at ``times[k]`` and moves to
    ``x = a[k] x0 + b[k] eps + c[k] x + s[k] noise``: DDIM (a = sqrt(ab_prev), b = its eps coefficient, c = 0,
    s = sigma) and the ancestral posterior (a, c its mean's coefficients, b = 0, s its standard deviation),
    with the same Python-float coefficients, in the same order, as the model."""

    def __init__(
        self,
        network: nn.Module,
        prediction: str,
        clip: bool,
        times: list[float],
        alpha_bars: list[float],
        a: list[float],
        b: list[float],
        c: list[float],
        s: list[float],
    ):
        super().__init__()
        self.network = network
        self.prediction = prediction
        self.clip = clip
        self.times, self.alpha_bars = times, alpha_bars
        self.a, self.b, self.c, self.s = a, b, c, s

    def forward(self, source: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = noise[0]
        used = 1
        x0 = x
        for k in range(len(self.times)):
            timesteps = torch.full([x.shape[0]], self.times[k], device=x.device, dtype=torch.float32)
            output = self.network(torch.cat([x, source], 1), timesteps).float()
            ab = self.alpha_bars[k]
            signal, level = math.sqrt(ab), math.sqrt(1 - ab)
            if self.prediction == "epsilon":
                x0, eps = (x - level * output) / signal, output
            elif self.prediction == "x0":
                x0, eps = output, (x - signal * output) / level
            else:  # v
                x0, eps = signal * x - level * output, level * x + signal * output
            if self.clip:
                x0 = x0.clamp(-1, 1)
                eps = (x - ab**0.5 * x0) / (1 - ab) ** 0.5
            if k == len(self.times) - 1:
                return x0
            if self.b[k] != 0.0:
                step = self.a[k] * x0 + self.b[k] * eps
            else:
                step = self.a[k] * x0 + self.c[k] * x
            if self.s[k] > 0.0:
                step = step + self.s[k] * noise[used]
                used += 1
            x = step
        return x0


class FewStepLoop(nn.Module):
    """SynDiff's T-step translation (:meth:`synthmed.models.syndiff.SynDiff._sample`) with its noise and latents as
    inputs: x = noise[0]; at each step t = T-1 .. 0, x0 = G([x, source], t, latents[k]) and x moves to the
    posterior sample with noise[k + 1]; the result is the last x0."""

    def __init__(self, network: nn.Module, coef_x0: torch.Tensor, coef_xt: torch.Tensor, variance: torch.Tensor):
        super().__init__()
        self.network = network
        self.timesteps = int(coef_x0.numel())
        # float32 as the model applies its float64 tables to float32 data
        self.register_buffer("coef_x0", coef_x0.float())
        self.register_buffer("coef_xt", coef_xt.float())
        self.register_buffer("std", variance.float().sqrt())

    def forward(self, source: torch.Tensor, noise: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = noise[0]
        x0 = x
        for k in range(self.timesteps):
            step = self.timesteps - 1 - k
            t = torch.full([x.shape[0]], step, device=x.device, dtype=torch.long)
            x0 = self.network(torch.cat([x, source.to(x.dtype)], 1), t, latents[k]).float()
            x = self.coef_x0[step] * x0 + self.coef_xt[step] * x + self.std[step] * noise[k + 1]
        return x0


# ----------------------------------------------------------------------------- what a run exports


@dataclass
class Exported:
    """The eager modules of one run and direction, and what a caller needs to know to use them."""

    method: str
    kind: str  # "translator" or "diffusion"
    network: nn.Module  # the raw network (ONNX, bundle state dict)
    network_inputs: list[str]  # its input names
    wrap: Callable[[nn.Module], nn.Module]  # the network (eager or traced) -> translator / sampler loop around it
    channels: int  # input channels: the 2.5D context (the reverse direction: 1)
    multiple: int  # slice sides the network takes are multiples of it
    square: bool = False  # the network takes square slices only (NCSN++)
    noise: dict[str, Any] = field(default_factory=dict)  # diffusion: how the loop's noise inputs are drawn
    sampling: dict[str, Any] = field(default_factory=dict)  # diffusion: the fixed sampler settings
    patch: int | None = None  # gmm-unit: the window the patch network works on

    @property
    def translator(self) -> nn.Module:
        """The eager module mapping normalised slices to translations (translator, or the sampler loop)."""
        return self.wrap(self.network)

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "kind": self.kind,
            "input_channels": self.channels,
            "size_multiple": self.multiple,
            "square_slices": self.square,
            "noise": self.noise,
            "sampling": self.sampling,
            "patch": self.patch,
        }


def exportable(model: SynthesisModel, direction: str = "A2B", steps: int | None = None, eta: float | None = None):
    """The inference modules of ``model`` for ``direction`` (eval mode, the run's EMA weights as loaded)."""
    name = model.name
    a2b = direction == "A2B"
    channels = int(getattr(model.config, "context", 1)) if a2b else 1
    multiple = model.size_multiple
    if name not in DETERMINISTIC + DIFFUSION:
        raise SynthmedError(
            f"{name} runs cannot be exported: export supports the translators {', '.join(DETERMINISTIC + DIFFUSION)}"
        )
    if name in DIFFUSION:
        return _diffusion_exportable(model, direction, channels, multiple, steps, eta)
    if steps is not None or eta is not None:
        raise SynthmedError(f"{name} translates deterministically; --steps and --eta apply to diffusion runs")
    patch = None
    if name == "pix2pix":
        network = model.generator
    elif name == "medgan":
        network = ResidualOutput(model.generator, bool(model.config.residual))
    elif name == "cyclegan":
        network = model.generator_ab if a2b else model.generator_ba
    else:  # unit, gmm-unit: the encoder's latent mean into the other domain's generator
        network = nn.Sequential(
            model.encoder_a if a2b else model.encoder_b, model.generator_b if a2b else model.generator_a
        )
        if name == "gmm-unit":
            patch = int(model.config.patch_size)
    network.eval()

    def wrap(net: nn.Module) -> nn.Module:
        return PaddedTranslator(SlidingWindow(net, patch) if patch else net, multiple)

    return Exported(name, "translator", network, ["source"], wrap, channels, multiple, patch=patch)


def _diffusion_exportable(model, direction: str, channels: int, multiple: int, steps, eta) -> Exported:
    if model.name == "syndiff":
        if steps is not None or eta is not None:
            raise SynthmedError("syndiff's sampling is fixed (its T steps); --steps and --eta apply to ddpm runs")
        network = (model.diffusive_b if direction == "A2B" else model.diffusive_a).eval()
        schedule = model.schedule

        def wrap_few(net: nn.Module) -> nn.Module:
            return FewStepLoop(net, schedule.posterior_coef_x0, schedule.posterior_coef_xt, schedule.posterior_variance)

        T, nz = model.config.timesteps, model.config.nz
        noise = {
            "inputs": ["noise", "latents"],
            "noise": f"({T + 1}, B, 1, H, W) standard normal: x_T, then one per step",
            "latents": f"({T}, B, {nz}) standard normal: the generator's latent z at each step",
            "order": "x_T; then per step: latent, noise (as SynDiff draws them from one generator)",
        }
        return Exported(
            "syndiff",
            "diffusion",
            network,
            ["x", "t", "z"],
            wrap_few,
            channels,
            multiple,
            square=True,
            noise=noise,
            sampling={"sampler": "syndiff", "steps": T, "nz": nz},
        )
    config = model.config
    sampler = config.sampler
    if sampler not in LOOP_SAMPLERS:
        raise SynthmedError(
            f"this ddpm run samples with {sampler}; export writes the discrete samplers ({', '.join(LOOP_SAMPLERS)}) "
            "as a loop: retrain with --set sampler=ddim"
        )
    if steps is None:
        steps = get_sampler(sampler).default_steps(config.timesteps, config.sampling_steps)
    eta = config.eta if eta is None else eta
    if steps < 1 or eta < 0:
        raise SynthmedError(f"--steps {steps} must be at least 1 and --eta {eta} non-negative")
    schedule = model.schedule
    grid = integer_grid(schedule, steps)
    alpha_bars = schedule.alpha_bars.tolist()
    times = [float(t) for t in grid]
    at = [schedule.alpha_bar_at(float(t)) for t in grid]
    a, b, c, s = [], [], [], []
    for k, t in enumerate(grid[:-1]):
        ab, ab_prev = alpha_bars[t], alpha_bars[grid[k + 1]]
        if sampler == "ddim":
            sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
            a.append(math.sqrt(ab_prev))
            b.append(math.sqrt(max(1 - ab_prev - sigma**2, 0.0)))
            c.append(0.0)
            s.append(sigma)
        else:
            alpha = ab / ab_prev
            beta = 1 - alpha
            a.append((ab_prev**0.5) * beta / (1 - ab))
            b.append(0.0)
            c.append((alpha**0.5) * (1 - ab_prev) / (1 - ab))
            s.append(math.sqrt(beta * (1 - ab_prev) / (1 - ab)))  # posterior_between's variance, its square root
    for values in (a, b, c, s):
        values.append(0.0)  # the last evaluation returns its x0
    network = model.network.eval()

    def wrap_discrete(net: nn.Module) -> nn.Module:
        return DiscreteLoop(net, config.prediction, bool(config.clip_denoised), times, at, a, b, c, s)

    draws = 1 + sum(1 for sigma in s if sigma > 0)
    noise = {
        "inputs": ["noise"],
        "noise": f"({draws}, B, 1, H, W) standard normal: x_T, then one per stochastic step",
        "order": "x_T, then one per step with noise (as the sampler draws them from one generator)",
        "count": draws,
    }
    sampling = {"sampler": sampler, "steps": steps, "eta": eta, "evaluations": len(grid)}
    return Exported(
        "ddpm", "diffusion", network, ["x", "t"], wrap_discrete, channels, multiple, noise=noise, sampling=sampling
    )


def draw_noise(
    exported: Exported | dict, batch: int, shape: tuple[int, int], generator: torch.Generator | None, device
) -> tuple[torch.Tensor, ...]:
    """The noise inputs of a diffusion loop for a batch of slices of ``shape`` (padded sides), drawn from
    ``generator`` in the order the model's own sampler draws them: the exported loop then gives what
    ``model.translate(..., generator=...)`` gives."""
    info = exported.describe() if isinstance(exported, Exported) else exported
    image = (batch, 1, *shape)
    sampling = info["sampling"]

    def normal(size) -> torch.Tensor:
        return torch.randn(size, generator=generator, device=device, dtype=torch.float32)

    if sampling["sampler"] == "syndiff":
        noise, latents = [normal(image)], []
        for _ in range(sampling["steps"]):
            latents.append(normal((batch, sampling["nz"])))
            noise.append(normal(image))
        return torch.stack(noise), torch.stack(latents)
    return (torch.stack([normal(image) for _ in range(info["noise"]["count"])]),)


class ExportedTranslator:
    """An exported translator (TorchScript file or eager module) with the small part of the model protocol that
    :func:`synthmed.workflows.translate.translate_slices` uses, so that whole volumes go through exactly the
    steps of ``synthmed translate`` with the exported artefact in place of the model."""

    name = "exported"

    def __init__(self, module, info: dict[str, Any], device: torch.device | str = "cpu"):
        self.module = module
        self.info = info
        self.config = SimpleNamespace(context=info["input_channels"])
        self.stochastic = info["kind"] == "diffusion"
        self.size_multiple = int(info["size_multiple"])
        self.device = torch.device(device)

    def translate(self, source: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            if not self.stochastic:
                return self.module(source)
            noise = draw_noise(self.info, source.shape[0], tuple(source.shape[-2:]), generator, source.device)
            return self.module(source, *noise)


# ----------------------------------------------------------------------------- building and checking


def _example(channels: int, side: int, batch: int, seed: int) -> torch.Tensor:
    """Deterministic normalised slices: random values in [-1, 1] (the networks' input range)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, channels, side, side), generator=generator) * 2 - 1


def _network_example(exported: Exported, model: SynthesisModel, side: int, batch: int, seed: int) -> tuple:
    """Example inputs of the raw network (translator: source; ddpm: x, t; syndiff: x, t, z)."""
    generator = torch.Generator().manual_seed(seed)
    if exported.kind == "translator":
        side = exported.patch or side
        return (torch.rand((batch, exported.channels, side, side), generator=generator) * 2 - 1,)
    x = torch.randn((batch, 1 + exported.channels, side, side), generator=generator)
    if exported.method == "ddpm":
        return x, torch.randint(0, model.config.timesteps, (batch,), generator=generator).float()
    t = torch.randint(0, model.config.timesteps, (batch,), generator=generator)
    return x, t, torch.randn((batch, model.config.nz), generator=generator)


@contextlib.contextmanager
def _quiet():
    """Tracing and ONNX export warn and print at length about things that do not apply here (tracer warnings on
    shape checks, the exporter's progress lines, dynamo's log of every fallback tried); keep the console to
    synthmed's own lines."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.ERROR)
        try:
            yield
        finally:
            logging.disable(previous)


def _max_difference(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a = a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float32)
    b = b.detach().float().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, dtype=np.float32)
    if a.shape != b.shape:
        return math.inf
    return float(np.abs(a - b).max()) if a.size else 0.0


def trace(network: nn.Module, example: tuple) -> torch.jit.ScriptModule:
    with _quiet(), torch.no_grad():
        return torch.jit.trace(network, example, check_trace=False)


def torchscript(exported: Exported, model: SynthesisModel, side: int) -> dict[str, torch.jit.ScriptModule]:
    """TorchScript of the translator (deterministic runs) or of the denoiser and the sampler loop (diffusion): the
    networks traced, the code around them scripted (see the module docstring)."""
    # twice the training size: no feature map of 1 x 1 in the trace, whose size a tracer could take for a constant
    traced = trace(exported.network, _network_example(exported, model, 2 * side, 2, seed=1))
    with _quiet():
        scripted = torch.jit.script(exported.wrap(traced))
    if exported.kind == "translator":
        return {"translator": scripted}
    return {"denoiser": traced, "sampler": scripted}


def _check_sides(exported: Exported, side: int) -> list[int]:
    """Slice sides the checks run at: the training size and one that is not a multiple of the network's (padded)
    (for the diffusion loops, which the caller pads: the next multiple up)."""
    other = side + max(1, exported.multiple // 2)
    if exported.kind == "diffusion":
        other = side + exported.multiple
    return [side, other]


def check_torchscript(
    exported: Exported, model: SynthesisModel, files: dict[str, Path], side: int, direction: str
) -> dict[str, float]:
    """Max differences between each saved TorchScript file (loaded back) and the model's own inference."""
    differences: dict[str, float] = {}
    device = model.device
    translate = model.translate if direction == "A2B" else model.translate_reverse
    with _quiet():
        loaded = {name: torch.jit.load(str(path), map_location=device).eval() for name, path in files.items()}
    with torch.no_grad():
        if "denoiser" in loaded:
            for k, check_side in enumerate(_check_sides(exported, side)):
                inputs = tuple(t.to(device) for t in _network_example(exported, model, check_side, 3 - k, seed=2 + k))
                differences[f"denoiser {check_side}px"] = _max_difference(
                    loaded["denoiser"](*inputs), exported.network(*inputs)
                )
        main = loaded.get("translator", loaded.get("sampler"))
        adapter = ExportedTranslator(main, exported.describe(), device)
        for k, check_side in enumerate(_check_sides(exported, side)):
            source = _example(exported.channels, check_side, 3 - k, seed=10 + k).to(device)
            if exported.kind == "translator":
                ours = adapter.translate(source)
                theirs = padded_to_multiple(translate, source, model.size_multiple)
            else:
                ours = padded_to_multiple(
                    lambda x: adapter.translate(x, generator=torch.Generator(device=device).manual_seed(5)),
                    source,
                    model.size_multiple,
                )
                theirs = padded_to_multiple(
                    lambda x: translate(x, generator=torch.Generator(device=device).manual_seed(5)),
                    source,
                    model.size_multiple,
                )
            name = "translator" if exported.kind == "translator" else "sampler"
            differences[f"{name} {check_side}px"] = _max_difference(ours, theirs)
    return differences


def _onnx_modules() -> tuple[Any, Any]:
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise SynthmedError(
            f"--format onnx needs the package {error.name} (install synthmed[export], or pip install onnx "
            "onnxruntime onnxscript)"
        ) from None
    import onnxscript

    return onnxruntime, onnxscript


def _attention_3d():
    """ONNX for ``scaled_dot_product_attention`` on 3-D (batch, tokens, channels) inputs, which NCSN++'s
    attention uses and the exporter's own translation accepts only in 4-D: softmax(q k^T / sqrt(d)) v."""
    from onnxscript import opset18 as op

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        factor = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
        rank = len(query.shape)
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        scores = op.Mul(op.MatMul(query, op.Transpose(key, perm=perm)), op.Constant(value_float=factor))
        return op.MatMul(op.Softmax(scores, axis=-1), value)

    return attention


def export_onnx(exported: Exported, model: SynthesisModel, path: Path, side: int, direction: str) -> dict[str, Any]:
    """The raw network as ONNX at ``path``; returns how it was made (exporter, dynamic or fixed shapes) and the
    max differences between onnxruntime and the network on the check inputs."""
    onnxruntime, _ = _onnx_modules()
    device = model.device
    network = exported.network.cpu()
    names = exported.network_inputs
    # Translators: the model's own translation (sides here are multiples: no padding); diffusion: its denoiser.
    reference = model.cpu().translate if exported.kind == "translator" and direction == "A2B" else network
    if exported.kind == "translator" and direction == "B2A":
        reference = model.cpu().translate_reverse
    # twice the training size, as for tracing: a dimension of 1 would be taken for a constant by the exporter
    example = _network_example(exported, model, 2 * side, 2, seed=1)
    batch = torch.export.Dim("batch", min=1)
    rows = exported.multiple * torch.export.Dim("rows", min=1)
    cols = rows if exported.square else exported.multiple * torch.export.Dim("cols", min=1)
    spatial = {} if exported.patch else {2: rows, 3: cols}
    dynamic = tuple({0: batch, **spatial} if i == 0 else {0: batch} for i in range(len(names)))
    axes = {
        name: ({0: "batch", 2: "rows", 3: "cols"} if i == 0 and not exported.patch else {0: "batch"})
        for i, name in enumerate(names)
    }
    custom = {torch.ops.aten.scaled_dot_product_attention.default: _attention_3d()}
    attempts = [
        ("dynamo", "dynamic", dict(dynamo=True, dynamic_shapes=dynamic, custom_translation_table=custom)),
        ("torchscript", "dynamic", dict(dynamo=False, dynamic_axes=axes)),
        ("dynamo", "fixed", dict(dynamo=True, custom_translation_table=custom)),
        ("torchscript", "fixed", dict(dynamo=False)),
    ]
    failures = []
    for exporter, shapes, options in attempts:
        try:
            with _quiet(), torch.no_grad():
                torch.onnx.export(
                    network,
                    example,
                    str(path),
                    input_names=names,
                    output_names=["output"],
                    report=False,
                    external_data=False,  # one self-contained file (networks here are far below ONNX's 2 GB limit)
                    **options,
                )
        except Exception as error:  # noqa: BLE001 - each exporter fails in its own way; the next is tried
            failures.append(f"{exporter}/{shapes}: {str(error).strip().splitlines()[0][:200] if str(error) else error}")
            path.unlink(missing_ok=True)
            continue
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        checks = [example]
        if shapes == "dynamic":  # another batch size and (the network alone takes multiples only) other sides
            checks.append(_network_example(exported, model, 2 * side + exported.multiple, 3, seed=3))
        differences = {}
        with torch.no_grad():
            for inputs in checks:
                feed = {name: value.numpy() for name, value in zip(names, inputs)}
                ours = session.run(None, feed)[0]
                differences[f"onnx {inputs[0].shape[-1]}px batch {inputs[0].shape[0]}"] = _max_difference(
                    ours, reference(*inputs)
                )
        model.to(device)
        return {
            "exporter": exporter,
            "shapes": shapes,
            "inputs": {
                name: [d if shapes == "fixed" or i not in axes[name] else axes[name][i] for i, d in enumerate(x.shape)]
                for name, x in zip(names, example)
            },
            "differences": differences,
            "fallbacks": failures,
        }
    model.to(device)
    raise SynthmedError(f"{exported.method}: ONNX export failed with every exporter ({'; '.join(failures)})")


# ----------------------------------------------------------------------------- the output folder


def _owned_files(out: Path) -> set[str]:
    """The files (relative paths) an earlier export wrote into ``out``, from its marker."""
    marker = read_marker(out)
    return set(marker["written"]) if marker and marker["command"] == COMMAND else set()


def _check_out(out: Path, run: Path, overwrite: bool) -> None:
    """Refuse an OUT that would destroy data: the run folder itself or inside it, an existing non-empty OUT without
    ``overwrite``, and with ``overwrite`` any file in OUT that export did not write."""
    refuse_overlap(out, [run], what="export output")
    if out.exists() and not out.is_dir():
        raise SynthmedError(f"{out} is a file; export writes a folder: choose another OUT")
    if not out.is_dir() or not any(p for p in out.iterdir() if p.name != MARKER_NAME):
        return
    if not overwrite:
        raise SynthmedError(f"{out} exists and is not empty; pass --overwrite to replace an earlier export there")
    owned = _owned_files(out)
    if not owned:
        raise SynthmedError(
            f"{out} was not made by synthmed export (it has no {MARKER_NAME} marker); --overwrite replaces only "
            "an earlier export: choose another OUT"
        )
    for path in sorted(out.rglob("*")):
        relative = str(path.relative_to(out))
        if path.name == MARKER_NAME or path.is_dir() and not path.is_symlink():
            continue
        if path.is_symlink() or (relative not in owned and not path.name.startswith(".")):
            raise SynthmedError(
                f"{path} was not written by synthmed export; --overwrite replaces only export's own files: "
                "move it away or choose another OUT"
            )


def _install(staging: Path, out: Path) -> list[str]:
    """Move the checked files from ``staging`` into ``out``, removing first the files of an earlier export that
    this one does not write again; returns the relative paths now in ``out``."""
    new = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    ensure_writable_folder(out)
    old = _owned_files(out)
    _write_export_marker(out, sorted(old | set(new)))  # before the moves: whatever lands in OUT is listed
    for relative in sorted(old - set(new)):
        (out / relative).unlink(missing_ok=True)
    for relative in new:
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / relative, target)
    for folder in sorted({(out / r).parent for r in old - set(new)}, key=lambda p: -len(p.parts)):
        if folder != out and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    _write_export_marker(out, new)  # now exactly what is there
    return new


def _write_export_marker(out: Path, written: list[str]) -> None:
    """The folder's marker listing ``written`` (not merged with earlier lists, as ``write_marker`` does: files an
    earlier export wrote and this one removed are no longer export's to replace)."""
    record = {"format": MARKER_FORMAT, "command": COMMAND, "written": written}
    write_text_atomic(out / MARKER_NAME, json_text(record) + "\n")


# ----------------------------------------------------------------------------- the command


def export(
    run: str | Path,
    out: str | Path,
    *,
    format: str = "torchscript",
    direction: str = "A2B",
    checkpoint: str = "best",
    steps: int | None = None,
    eta: float | None = None,
    check_volume: str | Path | None = None,
    overwrite: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Export ``run`` into the folder ``out`` in ``format``; every artefact is checked against the model (see the
    module docstring) before anything is written. Returns the record also written as ``export.json``."""
    if format not in FORMATS:
        raise SynthmedError(f"--format {format}: use one of {', '.join(FORMATS)}")
    run, out = Path(run), Path(out)
    if not run.is_dir():
        raise SynthmedError(f"{run}: no such run folder")
    loaded = load_run(run, device=device, checkpoint=checkpoint, direction=direction)
    model = loaded.model
    if model.task != "translate":
        raise SynthmedError(f"{run} holds a {loaded.info.model} generator; export supports translation runs only")
    exported = exportable(model, direction, steps, eta)
    if format == "onnx":
        _onnx_modules()  # a missing package is reported before any work
    side = int(getattr(model.config, "image_size", 64))
    with output_lock(out):
        _check_out(out, run, overwrite)
        if out.parent.is_dir():
            remove_stale_temporaries(out.parent)
        staging = temporary_path(out, "partial")
        staging.mkdir(parents=True)
        try:
            record = _write_artefacts(loaded, exported, staging, format, side, check_volume, run)
            _install(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return record


def _write_artefacts(
    loaded: LoadedRun,
    exported: Exported,
    staging: Path,
    format: str,
    side: int,
    check_volume: str | Path | None,
    run: Path,
) -> dict[str, Any]:
    model = loaded.model
    record: dict[str, Any] = {
        "format": format,
        "run": str(run.resolve()),
        "model": model.name,
        "preset": loaded.info.preset,
        "direction": loaded.direction,
        "source": loaded.plan.source,
        "target": loaded.plan.target,
        "checkpoint": loaded.checkpoint.name,
        "synthmed_version": __version__,
        "torch_version": torch.__version__,
        "tolerance": TOLERANCE,
        **exported.describe(),
    }
    differences: dict[str, float] = {}
    scripted = torchscript(exported, model, side)
    folder = staging / "models" if format == "bundle" else staging
    folder.mkdir(parents=True, exist_ok=True)
    if format == "bundle":
        main = scripted.get("translator", scripted.get("sampler"))
        paths = {"translator" if exported.kind == "translator" else "sampler": folder / "model.ts"}
        with _quiet():
            torch.jit.save(main, str(paths[next(iter(paths))]))
        torch.save(exported.network.state_dict(), folder / "model.pt")
    else:
        paths = {name: folder / f"{name}.ts" for name in scripted}
        with _quiet():
            for name, module in scripted.items():
                torch.jit.save(module, str(paths[name]))
    if format in ("torchscript", "bundle"):
        differences.update(check_torchscript(exported, model, paths, side, loaded.direction))
        record["torchscript"] = {
            "files": {name: str(path.relative_to(staging)) for name, path in paths.items()},
            "how": "networks traced (torch.jit.trace), the padding / window / sampler loop around them scripted",
            "shapes": "dynamic batch and sides"
            + (" (square slices)" if exported.square else "")
            + (f" (sampler inputs: sides multiples of {exported.multiple})" if exported.kind == "diffusion" else ""),
        }
    if format == "onnx":
        for path in paths.values():
            path.unlink()  # the TorchScript files were the ONNX check's reference only
        name = "translator" if exported.kind == "translator" else "denoiser"
        info = export_onnx(exported, model, staging / f"{name}.onnx", side, loaded.direction)
        differences.update(info.pop("differences"))
        record["onnx"] = {"file": f"{name}.onnx", "network_inputs": exported.network_inputs, **info}
        if exported.patch:
            record["onnx"]["note"] = (
                f"the patch network alone ({exported.patch} px windows); the sliding window runs outside the graph"
            )
        if exported.kind == "translator" and not exported.patch:
            record["onnx"]["note"] = f"no padding in the graph: pad slices with -1 to multiples of {exported.multiple}"
    if check_volume is not None:
        differences.update(_check_volume(loaded, exported, paths, Path(check_volume)))
    record["differences"] = differences
    worst = max(differences.values(), default=0.0)
    record["max_difference"] = worst
    for name, value in differences.items():
        log.debug("export check %s: max difference %.3g", name, value)
    if not worst <= TOLERANCE:
        failed = ", ".join(f"{k} {v:.3g}" for k, v in differences.items() if not v <= TOLERANCE)
        raise SynthmedError(
            f"the exported {model.name} differs from the model by more than {TOLERANCE:g} ({failed}); nothing written"
        )
    # the plan as this direction sees it (B2A: source and target exchanged): what preprocessing needs
    plan_path = staging / ("configs/plan.json" if format == "bundle" else "plan.json")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(plan_path, json_text(loaded.plan.to_record()))
    if format == "bundle":
        _write_bundle(staging, loaded, exported)
    record_path = staging / ("configs" if format == "bundle" else "") / RECORD
    files = {str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()}
    record["files"] = sorted(files | {str(record_path.relative_to(staging))})
    write_text_atomic(record_path, json_text(record))
    return record


def _check_volume(loaded: LoadedRun, exported: Exported, paths: dict[str, Path], volume_path: Path) -> dict:
    """A whole volume through ``translate``'s steps with the model and with the exported TorchScript; the
    difference is in [-1, 1] units (divided by half the output's intensity range)."""
    if not paths:
        return {}
    volume = read_volume(volume_path)
    with _quiet():
        main = torch.jit.load(str(next(iter(paths.values()))), map_location=loaded.model.device).eval()
    theirs = translate_volume(loaded, volume, None).image
    adapter = ExportedTranslator(main, exported.describe(), loaded.model.device)
    ours = translate_volume(LoadedRun(adapter, loaded.plan, loaded.info, loaded.checkpoint), volume, None).image
    scale = max(0.5 * float(theirs.max() - theirs.min()), 1e-12)
    return {"volume (target units / half range)": _max_difference(ours, theirs) / scale}


# ----------------------------------------------------------------------------- MONAI bundle


def _write_bundle(staging: Path, loaded: LoadedRun, exported: Exported) -> None:
    info = loaded.info
    configs, docs = staging / "configs", staging / "docs"
    configs.mkdir(exist_ok=True)
    docs.mkdir(exist_ok=True)
    write_text_atomic(configs / "model.json", json_text({"model": info.model, "config": info.config}))
    write_text_atomic(configs / "metadata.json", json_text(bundle_metadata(loaded, exported)))
    write_text_atomic(configs / "inference.json", json_text(INFERENCE_CONFIG))
    write_text_atomic(configs / "logging.conf", LOGGING_CONF)
    write_text_atomic(docs / "README.md", bundle_readme(loaded, exported))


def bundle_metadata(loaded: LoadedRun, exported: Exported) -> dict[str, Any]:
    """``configs/metadata.json`` following the MONAI bundle specification."""
    import monai

    plan, info, model = loaded.plan, loaded.info, loaded.model
    source, target = plan.source, plan.target
    stochastic = exported.kind == "diffusion"
    packages = {"synthmed": __version__, "nibabel": _version("nibabel"), "scipy": _version("scipy")}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by synthmed export {__version__}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": packages,
        "name": f"synthmed {info.model} {source} to {target}",
        "task": f"{source} to {target} image translation ({loaded.direction})",
        "description": (
            f"{info.model} ({type(model).paper}) trained with synthmed (preset {info.preset}, "
            f"checkpoint {loaded.checkpoint.name}) to translate {source} slices into {target}, applied slice by "
            f"slice along the plan's axis to whole volumes"
            + ("; a diffusion model whose noise is drawn from a seeded generator (seed 0)" if stochastic else "")
        ),
        "authors": "synthmed user (the run's author); synthmed toolkit",
        "copyright": "the run's author",
        "data_source": f"the data set prepared for the run ({len(plan.volumes)} subjects)",
        "data_type": "nibabel-readable volumes (NIfTI)",
        "image_classes": f"one channel, a {source} volume in its own units",
        "pred_classes": f"one channel, a {target} volume in the target's units, in the input's geometry",
        "intended_use": (
            "Research only, not for diagnostic use. Translates scans like those the run was trained on "
            "(same modality, contrast and preprocessing); outputs of other scans may be meaningless."
        ),
        "references": [type(model).paper],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": source,
                    "num_channels": exported.channels,
                    "spatial_shape": [f"{exported.multiple}*n", f"{exported.multiple}*n"],
                    "dtype": "float32",
                    "value_range": [-1, 1],
                    "is_patch_data": False,
                    "channel_def": {
                        str(i): f"{source} slice {i - exported.channels // 2:+d}" for i in range(exported.channels)
                    },
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": target,
                    "num_channels": 1,
                    "spatial_shape": [f"{exported.multiple}*n", f"{exported.multiple}*n"],
                    "dtype": "float32",
                    "value_range": [-1, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": f"{target}"},
                }
            },
        },
        "synthmed": {**exported.describe(), "direction": loaded.direction, "model": info.model},
    }


def _version(package: str) -> str:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # noqa: BLE001 - a missing version is no reason to fail an export
        return "unknown"


INFERENCE_CONFIG: dict[str, Any] = {
    "imports": ["$import synthmed.workflows.export"],
    "bundle_root": ".",
    "device": "cpu",
    "input_file": "",
    "output_file": "",
    "reference_file": None,
    "overwrite": False,
    "use_torchscript": True,
    "batch_size": 32,
    "seed": 0,
    "network_def": {"_target_": "synthmed.workflows.export.bundle_network", "bundle_root": "@bundle_root"},
    "network": "$None if @use_torchscript else @network_def",
    "translator": {
        "_target_": "synthmed.workflows.export.BundleTranslator",
        "bundle_root": "@bundle_root",
        "network": "@network",
        "device": "@device",
        "batch_size": "@batch_size",
        "seed": "@seed",
    },
    "run": ["$@translator(@input_file, @output_file, @reference_file, @overwrite)"],
}


# What ``monai.bundle run`` reads by default from configs/logging.conf: its messages on the console.
LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=console

[formatters]
keys=plain

[logger_root]
level=INFO
handlers=console

[handler_console]
class=StreamHandler
level=INFO
formatter=plain
args=(sys.stdout,)

[formatter_plain]
format=%(asctime)s - %(levelname)s - %(message)s
"""


def _bundle_record(bundle_root: Path) -> dict[str, Any]:
    path = bundle_root / "configs" / RECORD
    if not path.is_file():
        raise SynthmedError(f"{bundle_root}: no configs/{RECORD}; not a bundle written by synthmed export")
    return json.loads(path.read_text(encoding="utf-8"))


def bundle_network(bundle_root: str | Path) -> nn.Module:
    """The bundle's network rebuilt from its configuration with ``models/model.pt`` loaded (the eager alternative
    to ``models/model.ts``), wrapped as the TorchScript file is (translator or sampler loop)."""
    from synthmed.models.registry import config_from_dict, instantiate

    root = Path(bundle_root)
    record = _bundle_record(root)
    spec = json.loads((root / "configs" / "model.json").read_text(encoding="utf-8"))
    model = instantiate(spec["model"], config_from_dict(spec["model"], spec["config"]))
    model.eval()
    sampling = record.get("sampling") or {}
    exported = exportable(
        model,
        record["direction"],
        sampling.get("steps") if record["model"] == "ddpm" else None,
        sampling.get("eta") if record["model"] == "ddpm" else None,
    )
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    exported.network.load_state_dict(state)
    return exported.translator.eval()


class BundleTranslator:
    """The bundle's translation of one volume file: ``synthmed translate``'s steps (normalisation from
    ``configs/plan.json``, slicing, padding, scale of the output, background, geometry) with the bundle's network
    (``models/model.ts``, or an eager ``network``) in place of the model."""

    def __init__(
        self,
        bundle_root: str | Path,
        network: nn.Module | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        seed: int = 0,
    ):
        from synthmed.workflows.translate import Sampling

        root = Path(bundle_root)
        self.record = _bundle_record(root)
        self.plan = Plan.read(root / "configs" / "plan.json")  # as the exported direction sees it
        if network is None:
            with _quiet():
                network = torch.jit.load(str(root / "models" / "model.ts"), map_location=device)
        self.network = network.to(device).eval()
        self.adapter = ExportedTranslator(self.network, self.record, device)
        self.batch_size = batch_size
        self.sampling = Sampling(seed=seed)

    def __call__(
        self, input_file: str | Path, output_file: str | Path, reference_file: str | Path | None = None, overwrite=False
    ) -> Path:
        if not input_file or not output_file:
            raise SynthmedError("give --input_file IN.nii.gz and --output_file OUT.nii.gz")
        refuse_overlap(output_file, [input_file, reference_file], what="output")
        loaded = LoadedRun(self.adapter, self.plan, None, Path("models/model.ts"))
        volume = read_volume(input_file)
        normalization = _reference_normalization(loaded, Path(reference_file) if reference_file else None)
        result = translate_volume(loaded, volume, normalization, batch_size=self.batch_size, sampling=self.sampling)
        return write_volume(output_file, result.image, like=volume, overwrite=bool(overwrite))


def bundle_readme(loaded: LoadedRun, exported: Exported) -> str:
    plan, info = loaded.plan, loaded.info
    stochastic = exported.kind == "diffusion"
    model_ts = (
        "the sampler loop `sampler(source, noise"
        + (", latents" if exported.method == "syndiff" else "")
        + ")`: noise inputs as described in `configs/export.json` (`noise`)"
        if stochastic
        else "the translator `translator(source)`: normalised slices (B, C, H, W) -> (B, 1, H, W), any H, W"
    )
    return f"""# synthmed {info.model}: {plan.source} -> {plan.target}

Exported by `synthmed export --format bundle` (synthmed {__version__}) from a {info.model} run
(preset {info.preset}, checkpoint {loaded.checkpoint.name}, direction {loaded.direction}).
Research use only; not for diagnosis.

## Run it

```bash
python -m monai.bundle run --config_file BUNDLE/configs/inference.json --bundle_root BUNDLE \\
    --input_file {plan.source}.nii.gz --output_file {plan.target}_synth.nii.gz
```

Options (override on the command line): `--reference_file` (a {plan.target} scan whose intensity scale the
output takes; otherwise the scale is predicted from the input's), `--device cuda`, `--batch_size`, `--overwrite
True`, `--use_torchscript False` (build the network from `configs/model.json` and load `models/model.pt`
instead of `models/model.ts`){", `--seed` (the noise of the diffusion sampler)" if stochastic else ""}.
synthmed must be installed (`pip install synthmed`): the inference config calls its components.

The output is written in the input's geometry (same shape, affine and header) and in the target's units.

## Preprocessing (done by the inference config)

As `synthmed translate` does, from `configs/plan.json` (the run's preparation record):

1. foreground mask of the volume; slices along the plan's axis (axis {plan.axis});
2. per-volume normalisation of the source into [-1, 1] ({plan.normalization_kind.get(plan.source, "mr")}: MR is the
   0.5th percentile of the volume and the 99.5th of the foreground mapped to -1 and 1; CT a fixed HU window);
3. the slices cropped around the foreground and resampled to the plan's pixel size, padded with -1 to a multiple
   of {exported.multiple} pixels;
4. the network ({exported.channels} input channel(s): the slice{" and its neighbours" if exported.channels > 1 else ""});
5. the output mapped back into the target's units and pasted into the input's grid; outside the (dilated)
   foreground the target's background.

## Files

- `models/model.ts`: TorchScript, {model_ts};
- `models/model.pt`: state dict of the network (`configs/model.json` builds it: `bundle_network`);
- `configs/export.json`: how it was exported and checked (max differences to the model, tolerance {TOLERANCE:g});
- `configs/plan.json`, `configs/model.json`: the run's preparation record and model configuration.
"""
