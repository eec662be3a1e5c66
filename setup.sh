#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv and install synthmed into it.
# - No torch in the environment: installs torch 2.13.0 (the CPU wheel on machines that have it locally).
# - A torch already there is kept (SYNTHMED_SYSTEM_SITE=1 makes the venv see the system's packages,
#   e.g. a CUDA build of torch installed by hand).
set -euo pipefail
cd "$(dirname "$0")"
venv="${SYNTHMED_VENV:-.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    if [ "${SYNTHMED_SYSTEM_SITE:-0}" = "1" ]; then
        "$python" -m venv --system-site-packages "$venv"
    else
        "$python" -m venv "$venv"
    fi
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "setup: installing torch 2.13.0 into $venv"
    "${pip[@]}" install "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
    "$venv/bin/python" -c "import torch" || { echo "setup: torch install failed" >&2; exit 1; }
fi
stamp="$venv/.synthmed-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing synthmed and its dependencies into $venv"
    "${pip[@]}" install -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
    "$venv/bin/python" -c "import synthmed, monai, nibabel, SimpleITK" || { echo "setup: install failed" >&2; exit 1; }
    touch "$stamp"
fi
