"""Layers only point down: a module imports its own package and the layers below it, never one above.

The ranks are the picture in DESIGN.md read from the code: the bottom utilities every layer may use; the data,
network-block and diffusion layers (which know no model); metrics (FID needs the Inception network) and the
converters of official checkpoints into our networks; the methods;
the training engine; the workflows; benchmarking (which drives the workflows); the command line. An import found anywhere in a module (also inside a function)
counts, because a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import synthmed

PACKAGE = Path(synthmed.__file__).parent
RANKS = {
    "synthmed": 0,
    "errors": 0,
    "files": 0,
    "records": 0,
    "runtime": 0,
    "data": 1,
    "nn": 1,
    "diffusion": 1,
    "mri": 1,
    "metrics": 2,
    "weights": 2,
    "models": 3,
    "engine": 4,
    "workflows": 5,
    "benchmarking": 6,
    "cli": 7,
    "__main__": 7,
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("synthmed"):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "synthmed"]
    return found


def test_every_module_imports_only_its_own_layer_or_lower():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        module = ".".join(("synthmed",) + (parts[:-1] if parts[-1] == "__init__" else parts))
        layer = _layer(module)
        assert layer in RANKS, f"{module}: a new top-level package; give it a rank in this test and in DESIGN.md"
        for target in _imports(path):
            target_layer = _layer(target)
            if target_layer != layer and RANKS[target_layer] > RANKS[layer]:
                upward.append(
                    f"{module} imports {target} ({layer} rank {RANKS[layer]} -> {target_layer} rank "
                    f"{RANKS[target_layer]})"
                )
    assert not upward, "\n".join(upward)


def test_relative_imports_are_not_used():
    """The check above reads absolute imports only; a relative one would slip past it."""
    relative = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(
            isinstance(node, ast.ImportFrom) and node.level > 0
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        )
    ]
    assert not relative, relative
