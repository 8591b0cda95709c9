#!/usr/bin/env bash
# The device check on a GPU machine, in one command (at most 10 minutes):
#
#   bash benchmarks/device_check.sh OUT_DIR [extra device_check.py flags]
#
# Installs the project with its CUDA extra (pinned by requirements/constraints.txt) into a fresh
# virtual environment unless DEVICE_CHECK_PYTHON names a Python that already has JAX with CUDA, or
# wheels sit in .whl/ (an offline machine: pip installs from there, no index). Then runs
# benchmarks/device_check.py and leaves OUT_DIR/device_check.json and OUT_DIR/device_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/device_check.sh OUT_DIR [flags]}
shift
mkdir -p "$out"
python=${DEVICE_CHECK_PYTHON:-}
if [ -n "$python" ]; then
    # a preinstalled JAX (the GPU image's): the package from this checkout, laid out as the wheel
    # lays it out (configs/ as deepnmf_jax.configs), with no pip and no network
    overlay=$(mktemp -d)
    cp -r deepnmf_jax "$overlay/deepnmf_jax"
    cp -r configs "$overlay/deepnmf_jax/configs"
    export PYTHONPATH="$overlay${PYTHONPATH:+:$PYTHONPATH}"
else
    python3 -m venv /tmp/deepnmf-device-venv
    python=/tmp/deepnmf-device-venv/bin/python
    if [ -d .whl ]; then
        "$python" -m pip install -q --no-index --find-links .whl -e ".[cuda13]"
    else
        "$python" -m pip install -q -c requirements/constraints.txt -e ".[cuda13]"
    fi
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
"$python" -c "import jax; print('devices:', jax.devices())"
set -o pipefail
"$python" benchmarks/device_check.py --out "$out/device_check.json" "$@" 2>&1 | tee "$out/device_check.log"
