#!/usr/bin/env bash
# The package as a pip user gets it: builds the wheel, installs it into a fresh virtual environment
# outside the clone, and from another folder trains the bundled sample for one epoch, evaluates it,
# exports it and plans a sweep. Run by .ci/run; prints the wheel's size and contents.
#
#   bash scripts/wheel_test.sh [PYTHON]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${1:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip wheel -q --no-deps -w "$tmp/dist" "$repo"
wheel=$(ls "$tmp"/dist/deepnmf_jax-*.whl)
echo "wheel: $(basename "$wheel"), $(du -k "$wheel" | cut -f1) KiB"
"$python" -m zipfile -l "$wheel" | awk 'NR > 1 {print $1}' | sed 's|/[^/]*$||' | sort | uniq -c
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade "pip>=24"
"$tmp/venv/bin/python" -m pip install -q -c "$repo/requirements/constraints.txt" "$wheel"
mkdir "$tmp/elsewhere"
cd "$tmp/elsewhere"
export PATH="$tmp/venv/bin:$PATH" JAX_PLATFORMS=cpu
deepnmf --help > /dev/null
deepnmf train --config cifar10:sample --workdir run --config.num_epochs=1 --config.progress=False
test -s run/results.json
deepnmf evaluate --workdir run
deepnmf export --workdir run
ls run/eval/export
deepnmf sweep run --config sweeps/smoke --workdir sweep --dry-run
python -m deepnmf_jax --help > /dev/null
echo "wheel test: ok"
