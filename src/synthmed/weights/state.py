"""Reading another tool's checkpoint safely, and moving its tensors onto our names with every key accounted for.

A checkpoint from the internet is untrusted: it is read with ``torch.load(weights_only=True)`` (tensors and plain
containers only, no code), and every key must be one the converter expects, with the shape our network has. A
silently ignored or zero-filled weight would give a network that runs and translates wrongly; so the first key that
does not fit stops the import, named in one line.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from synthmed.errors import SynthmedError

Transform = Callable[[torch.Tensor], torch.Tensor]


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, recorded so that an imported run names exactly what it was made from."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict (name -> tensor) in a PyTorch file, loaded without running any code in it.

    The ``module.`` prefix that ``DataParallel`` and ``DistributedDataParallel`` put on every key is removed. A file
    that is not a PyTorch file, holds something else than a flat mapping of names to tensors, or is a synthmed
    checkpoint already, gives a :class:`SynthmedError`."""
    path = Path(path)
    if not path.is_file():
        raise SynthmedError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files; our message says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any failure to parse an untrusted file means the same to the user
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        raise SynthmedError(
            f"{path}: not a PyTorch checkpoint that loads safely (truncated, another format, or it holds code; "
            f"only tensors are read: {lines[0].replace('WeightsUnpickler error: ', '')[:120]})"
        ) from None
    if isinstance(state, Mapping) and state.get("format") == "synthmed-checkpoint":
        raise SynthmedError(f"{path} is a synthmed checkpoint already; use the run folder it belongs to")
    if not isinstance(state, Mapping) or not state:
        raise SynthmedError(f"{path}: holds a {type(state).__name__}, not a state dict (names -> tensors)")
    bad = next((key for key, value in state.items() if not isinstance(key, str) or not torch.is_tensor(value)), None)
    if bad is not None:
        raise SynthmedError(
            f"{path}: entry {bad!r} is a {type(state[bad]).__name__}, not a tensor: not a plain state dict of one "
            "network (give the generator's own file, e.g. latest_net_G.pth)"
        )
    state = dict(state)
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


@dataclass
class KeyMap:
    """How a foreign state dict becomes ours: ``rules`` (their key -> our key, and a transform of the tensor),
    ``optional`` (their keys that old versions of their code did not write: our network's value is kept),
    ``ignored`` (their keys that carry nothing our network uses, e.g. running statistics an instance norm never
    reads) and ``zero`` (our keys with no counterpart: a bias their layer does not have, which zero reproduces)."""

    rules: dict[str, tuple[str, Transform | None]] = field(default_factory=dict)
    optional: set[str] = field(default_factory=set)
    ignored: set[str] = field(default_factory=set)
    zero: set[str] = field(default_factory=set)

    def add(self, theirs: str, ours: str, transform: Transform | None = None) -> None:
        self.rules[theirs] = (ours, transform)


def convert_state(
    state: Mapping[str, torch.Tensor], keys: KeyMap, ours: Mapping[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """Our state dict (keys and shapes of ``ours``) from ``state`` by ``keys``; the first key of ``state`` (in its
    order) that is unknown or has another shape, or the first expected key it lacks, gives a one-line
    :class:`SynthmedError` (``what`` names the network, e.g. 'a unet_256 generator')."""
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in keys.ignored:
            continue
        if key not in keys.rules:
            raise SynthmedError(f"unknown key {key!r} for {what}: the file holds another network or layout")
        target, transform = keys.rules[key]
        expected = ours[target]
        if tuple(value.shape) != tuple(expected.shape):
            raise SynthmedError(
                f"key {key!r} has shape {list(value.shape)}, but {what} has {list(expected.shape)} there"
            )
        value = value.detach().to(expected.dtype)
        converted[target] = (transform(value) if transform else value).contiguous()
    for key, (target, _) in keys.rules.items():
        if target in converted:
            continue
        if key not in keys.optional:
            raise SynthmedError(f"lacks key {key!r} of {what}: the file is incomplete or holds another network")
        converted[target] = ours[target].detach().clone()
    for target in keys.zero:
        converted[target] = torch.zeros_like(ours[target])
    left = sorted(set(ours) - set(converted))
    if left:  # a gap in a converter's rules, never the file's fault
        raise RuntimeError(f"converter for {what} leaves {left[0]!r} unset")
    return converted
