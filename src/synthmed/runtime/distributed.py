"""Data-parallel training across processes started by ``torchrun``.

``torchrun --nproc_per_node N -m synthmed train ...`` starts N copies of the command with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in the environment; :func:`setup` joins them
into one process group (NCCL on CUDA, gloo on CPU). Each rank trains on its own share of every global
batch and the ranks stay identical because every optimiser step uses the gradients averaged over all ranks.

Why not ``DistributedDataParallel`` wrappers: a synthesis model here owns several networks and optimisers
and runs several backward passes per step (GAN discriminator and generator phases, SynDiff's per-direction
passes, R1 penalties). DDP's reducer assumes one forward and one backward per wrapped module and
iteration, and fails on parameters left unused in a phase. Averaging the gradients of exactly the
parameters an optimiser is about to step (:func:`average_gradients`, called by
:meth:`synthmed.models.base.SynthesisModel.step_optimizer`) gives the same update as DDP for any number of
networks, phases and optimisers, at the cost of not overlapping communication with the backward pass.

Outside ``torchrun`` (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) every function here is a no-op.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def requested() -> bool:
    """Whether this process was started as one of several (``torchrun`` with more than one process)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def context() -> Context:
    if not active():
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def setup(device: str = "auto") -> Context:
    """Join the process group torchrun described (once); returns this process's rank and the world size."""
    if not requested() or active():
        return context()
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run without torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    # Long timeout: rank 0 validates and writes samples while the others wait at the next collective.
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=60))
    return context()


def shutdown() -> None:
    """Leave the process group cleanly (all ranks reach this point together)."""
    if active():
        dist.barrier()
        dist.destroy_process_group()
    elif dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_state(module: torch.nn.Module, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters (unless ``buffers_only``) and buffers to every rank."""
    if not active():
        return
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over the ranks, in one flat all-reduce per dtype.

    A parameter without a gradient on some rank counts as zero there; one without a gradient on every rank
    keeps ``grad = None`` (so the optimiser skips it, as it would in one process)."""
    if not active():
        return
    parameters = [p for p in parameters if p.requires_grad]
    if not parameters:
        return
    world = dist.get_world_size()
    device = parameters[0].device
    has_grad = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32, device=device)
    dist.all_reduce(has_grad)
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p, count in zip(parameters, has_grad.tolist()):
        if count > 0:
            by_dtype.setdefault(p.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for p in group:
            size = p.numel()
            value = flat[offset : offset + size].view_as(p)
            if p.grad is None:
                p.grad = value.clone()
            else:
                p.grad.copy_(value)
            offset += size


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each scalar over the ranks (every rank must call this with the same keys)."""
    if not active() or not values:
        return values
    keys = list(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return {k: v / dist.get_world_size() for k, v in zip(keys, tensor.tolist())}


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (e.g. a stop signal seen by one of them)."""
    if not active():
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def gather_objects(value) -> list:
    """Every rank's ``value``, in rank order, on every rank."""
    if not active():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def parameters_checksum(module: torch.nn.Module) -> float:
    """A cheap fingerprint of the weights, to check that the ranks still hold the same model."""
    with torch.no_grad():
        return float(sum(p.double().sum() + p.double().abs().sum() for p in module.parameters()))
