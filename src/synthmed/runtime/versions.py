"""The versions a run or a benchmark record names, so a figure can be reproduced."""

from __future__ import annotations

import platform

import torch

import synthmed


def versions() -> dict[str, str]:
    import monai
    import numpy

    return {
        "synthmed": synthmed.__version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
