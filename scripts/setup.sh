#!/usr/bin/env bash
# Set up refit in a virtualenv (default .venv), with the right torch build for this machine:
#   - a machine with an NVIDIA GPU (nvidia-smi works) gets PyPI's CUDA build;
#   - a CPU-only machine gets a CPU build: a local wheel when pip's find-links has one,
#     otherwise PyTorch's CPU index. A CPU machine never downloads the multi-GB CUDA build.
# Usage: bash scripts/setup.sh [dev]      ("dev" adds the test and documentation tools)
# Override: REFIT_VENV=path, PYTHON=python3.11, REFIT_TORCH_SPEC="torch==2.13.0".
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${REFIT_VENV:-.venv}
extras=${1:-}
torch_spec=${REFIT_TORCH_SPEC:-torch==2.13.0}

"${PYTHON:-python3}" -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install -q --upgrade pip

if python -c "import torch" 2>/dev/null; then
  echo "torch $(python -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "NVIDIA GPU found: installing the CUDA build of torch"
  pip install "torch>=2.4,<3"
else
  wheels=$(mktemp -d)
  if pip download -q --no-deps --no-index "$torch_spec" -d "$wheels" 2>/dev/null \
     && ls "$wheels"/torch-*+cpu-*.whl >/dev/null 2>&1; then
    echo "CPU-only machine: installing the local CPU wheel $(basename "$wheels"/torch-*.whl)"
    pip install "$wheels"/torch-*.whl
  else
    echo "CPU-only machine: installing torch from PyTorch's CPU index"
    pip install "$torch_spec" --index-url https://download.pytorch.org/whl/cpu \
      --extra-index-url https://pypi.org/simple
  fi
  rm -rf "$wheels"
fi

# "dev" brings the documentation tools too: CI builds the site (mkdocs build --strict) and its tests open it.
if [ "$extras" = dev ]; then extras=dev,docs; fi
pip install -e ".${extras:+[$extras]}"
echo "refit is set up in $venv: . $venv/bin/activate"
