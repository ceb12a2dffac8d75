#!/usr/bin/env bash
# Set up everything batude needs on a fresh machine (idempotent, safe to rerun):
#   - the Fashion-MNIST Debian package (dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist)
#   - a virtualenv in .venv with torch 2.14.1 + torchvision 0.29.1 and batude (editable) + extras
# Usage: bash scripts/setup.sh          (then: source .venv/bin/activate)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing dataset-fashion-mnist (Debian package)" >&2
  { $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null; } ||
    echo "setup: warning: could not install dataset-fashion-mnist; Fashion-MNIST features will ask for --data-dir" >&2
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version 2>&1)" >&2
  "$python" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
echo "setup: installing torch 2.14.1, torchvision 0.29.1 and batude[dev,onnx] into .venv" >&2
pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
pip install -q --disable-pip-version-check -e ".[dev,onnx]"
echo "setup: done ($(python -c 'import torch, batude; print("torch", torch.__version__, "batude", batude.__version__)'))" >&2
