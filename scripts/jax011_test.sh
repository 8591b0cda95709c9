#!/usr/bin/env bash
# The package on JAX 0.11 (the GPU image's release; pyproject allows >=0.11,<0.13): the fast unit
# tests (the NMF layer and the models against the reference fixtures, one tiny training) in a second
# virtual environment, then the device check's smoke run from that Python with no install of the
# package (DEVICE_CHECK_PYTHON, as on the GPU image). Run by .ci/run.
#
#   bash scripts/jax011_test.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
venv=${JAX011_VENV:-/tmp/deepnmf-jax011}
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade "pip>=24"
"$venv/bin/python" -m pip install -q "jax==0.11.*" "jaxlib==0.11.*" -e ".[test]"
"$venv/bin/python" -c "import jax; print('JAX', jax.__version__)"
"$venv/bin/python" -m pytest -q -n 2 -p no:cacheprovider tests/test_nmf.py tests/test_layers.py \
    tests/test_models.py tests/test_nnx.py tests/test_train.py::test_smoke_every_model
bash scripts/device_check_smoke.sh "$venv/bin/python"
echo "JAX 0.11 test: ok"
