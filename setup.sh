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
# Headless Chromium for tests/test_report_browser.py (skipped without it): Debian's chromium package, best effort,
# only as root with apt-get; a failure is reported and never fails the set-up. SYNTHMED_NO_BROWSER=1 opts out.
if [ "${SYNTHMED_NO_BROWSER:-0}" != "1" ] && ! command -v chromium >/dev/null 2>&1 \
        && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian's chromium for the browser test of the report (SYNTHMED_NO_BROWSER=1 skips this)"
        log="$(mktemp)"
        if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -q --no-install-recommends chromium; } >"$log" 2>&1; then
            echo "setup: chromium not installed (apt-get failed: $(tail -n 1 "$log")); browser test will skip" >&2
        fi
        rm -f "$log"
    else
        echo "setup: no chromium and no root apt-get to install it; the browser test of the report will be skipped"
    fi
fi
