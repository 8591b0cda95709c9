#!/usr/bin/env bash
# The device check at its CPU smoke size, run from PYTHON's preinstalled JAX as on the GPU image
# (DEVICE_CHECK_PYTHON: no pip, no network), then its report checked. Run by .ci/run on each JAX
# it tests.
#
#   bash scripts/device_check_smoke.sh PYTHON
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:?usage: bash scripts/device_check_smoke.sh PYTHON}
out=$(mktemp -d)
DEVICE_CHECK_PYTHON="$python" bash benchmarks/device_check.sh "$out" --smoke --budget-s 300
"$python" benchmarks/check_device_report.py "$out/device_check.json"
