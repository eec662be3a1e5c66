"""Inference fast paths: the arithmetic of a layer's plain forward in fewer passes over memory.

At 256 px a diffusion network's direct convolutions already run near the CPU's peak, so what is left to gain is the
memory-bound work between them (a group norm, a per-channel scale and shift, an activation, a residual sum and its
1/sqrt(2) each read and write the whole feature map) and, on one thread, the convolutions' number of multiplications.
These helpers do the same sums in fewer passes and fewer multiplications:

- :func:`group_norm_affine`: GroupNorm followed by a per-sample, per-channel scale and shift (AdaGN) as one
  ``F.group_norm`` call per sample (its affine step is per channel, so each sample passes its own);
- :func:`inference_weights`: a convolution's weight and bias, multiplied by a constant (a following 1/sqrt(2)
  folded in) and cast to the autocast dtype, cached until the parameters change (autocast would otherwise cast
  every weight again at every call);
- :func:`conv2d`: with one thread on a CPU, float32 3x3 convolutions of large maps use Winograd's algorithm (see
  ``WINOGRAD_MIN_SIZE``), which needs fewer multiplications than the direct one;
- :func:`float32_linear`: the small embedding projections run in float32, without autocast's weight casts;
- :func:`float32_filter`: FIR resampling runs in float32, where the depthwise convolution is fast (in bfloat16 it
  takes a slow generic path on CPUs and gains nothing in accuracy).

They are used only in eval mode without autograd (``torch.no_grad``/``inference_mode``); training takes the plain
path, and tests check that both give the same outputs.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn

_enabled = True


def fast_path(module: nn.Module) -> bool:
    """Whether the inference fast paths apply to ``module``: it is in eval mode, no autograd graph is being
    recorded, nothing is tracing or compiling it and :func:`plain` is not on.

    Training stays on the plain path even under ``no_grad`` (e.g. when a GAN draws its fakes): the fast path
    differs from it by round-off, and adversarial training amplifies round-off into a different run. Tracing
    (TorchScript, ONNX) and ``torch.compile`` take the plain path too: a trace would keep the folded weights as
    constants and the batch-size-1 branches, and the compiler fuses the plain graph itself."""
    return (
        _enabled
        and not module.training
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and not torch.compiler.is_compiling()
    )


@contextlib.contextmanager
def plain():
    """Run the plain forwards even without autograd (benchmarks time the difference; tests compare the two)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def group_norm_affine(
    x: torch.Tensor, groups: int, scale: torch.Tensor, shift: torch.Tensor, eps: float
) -> torch.Tensor:
    """``scale * GroupNorm(x) + shift`` with ``scale``, ``shift`` of shape (B, C): one sample at a time, as the
    norm's own affine step takes one (C,) weight; with NCHW memory the batch is folded into the channels instead
    (groups never span samples)."""
    low = _autocast_dtype(x.device)
    if low is not None:
        # The result feeds a convolution that autocast would run in ``low`` precision anyway: normalising straight
        # into it (the statistics are still accumulated in float32) saves a float32 copy and half the traffic.
        with torch.autocast(x.device.type, enabled=False):
            return group_norm_affine(x.to(low), groups, scale.to(low), shift.to(low), eps)
    n, c = x.shape[:2]
    if n == 1:
        return F.group_norm(x, groups, scale[0], shift[0], eps)
    if x.is_contiguous():
        folded = F.group_norm(x.reshape(1, n * c, *x.shape[2:]), n * groups, scale.flatten(), shift.flatten(), eps)
        return folded.reshape(x.shape)
    return torch.cat([F.group_norm(x[i : i + 1], groups, scale[i], shift[i], eps) for i in range(n)])


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def inference_weights(conv: nn.Conv2d, multiplier: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``conv``'s (weight, bias) times ``multiplier``, in the dtype autocast would give them, cached on the module.

    The cache is keyed on the parameters' storage and version counters, so an optimiser step, ``load_state_dict``
    or ``.to()`` rebuilds it; it is not a parameter or buffer, so checkpoints never see it.
    """
    weight, bias = conv.weight, conv.bias
    dtype = _autocast_dtype(weight.device) or weight.dtype
    key = (
        multiplier,
        dtype,
        weight.data_ptr(),
        weight._version,
        None if bias is None else (bias.data_ptr(), bias._version),
    )
    cache = conv.__dict__.setdefault("_inference_weights", {})
    if key not in cache:
        cache.clear()  # one live entry per module: the old parameters' entry can never match again
        with torch.no_grad():
            folded_weight = (weight * multiplier if multiplier != 1.0 else weight).to(dtype)
            folded_bias = None if bias is None else (bias * multiplier if multiplier != 1.0 else bias).to(dtype)
        cache[key] = (folded_weight, folded_bias)
    return cache[key]


def conv2d(conv: nn.Conv2d, x: torch.Tensor, multiplier: float = 1.0, extra_bias: torch.Tensor | None = None):
    """``conv(x) * multiplier (+ extra_bias)`` with cached, pre-multiplied weights.

    ``extra_bias`` (B, C_out), e.g. a projected time embedding: with one sample it is folded into the bias (no
    pass over the output); with several it is added in place.
    """
    weight, bias = inference_weights(conv, multiplier)
    per_sample = None
    if extra_bias is not None:
        extra_bias = extra_bias.to(weight.dtype)
        if extra_bias.shape[0] == 1:
            bias = extra_bias[0] if bias is None else bias + extra_bias[0]
        else:
            per_sample = extra_bias
    if _winograd_applies(conv, x, weight):
        out = torch._nnpack_spatial_convolution(x, weight.contiguous(), bias, list(conv.padding))
    else:
        out = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if per_sample is not None:
        out = out.add_(per_sample.to(out.dtype)[:, :, None, None])
    return out


def float32_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` in float32 with autocast off: for the small per-sample projections (a latent or time
    embedding to a layer's scale, shift or bias), whose weights autocast would otherwise cast at every call, which
    costs more than the product itself."""
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.float(), linear.weight, linear.bias)


def float32_filter(filter_fn, x: torch.Tensor) -> torch.Tensor:
    """``filter_fn(x)`` with autocast off on float32 input (see the module docstring: FIR filters)."""
    with torch.autocast(x.device.type, enabled=False):
        return filter_fn(x.float())


# Winograd convolution through NNPACK (part of PyTorch's CPU builds). On one thread it does a 3x3 convolution with
# about half the multiplications of a direct one: measured 1.7-1.9x faster than oneDNN for 64-256 channels on maps
# of 32-256 px at batch 1, on an AVX-512 CPU; slower on smaller maps, at larger batches and with two threads (NNPACK
# does not split one convolution across threads as oneDNN does). Its results differ from a direct convolution by
# ~1e-5 of the output's range (oneDNN's: ~3e-7): float32 round-off, far below bfloat16's.
WINOGRAD_MIN_SIZE = 32


@functools.lru_cache(maxsize=1)
def _nnpack_ready() -> bool:
    # _nnpack_available() also initialises NNPACK; without that first call its convolution fails.
    try:
        return bool(torch._nnpack_available())
    except (AttributeError, RuntimeError):
        return False


def winograd_active(device: torch.device) -> bool:
    """Whether float32 3x3 convolutions on ``device`` take the Winograd path (a CPU, one thread, NNPACK built in)."""
    return device.type == "cpu" and torch.get_num_threads() == 1 and _nnpack_ready()


def _winograd_applies(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.shape[0] == 1
        and x.is_contiguous()
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and isinstance(conv.padding, tuple)
        and min(x.shape[-2:]) >= WINOGRAD_MIN_SIZE
        and winograd_active(x.device)
    )
