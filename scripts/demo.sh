#!/usr/bin/env bash
# Quick start (1/2): set up, then run the main job on the embedded default
# (torchvision ResNet-18, uniform ranks at 2.52x fewer FLOPs: inspect -> plan -> apply -> verify).
# Extra arguments go to `batude demo` (e.g. --method energy --budget 4x --out my_run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
batude demo --out demo_out "$@"
