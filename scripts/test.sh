#!/usr/bin/env bash
# Quick start (2/2): set up, then run the CPU test suite (GPU/TensorRT tests skip with a reason).
# Extra arguments go to pytest (e.g. -m "not slow", -k budget).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pytest -q -p no:cacheprovider "$@"
