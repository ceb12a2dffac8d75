#!/usr/bin/env bash
# Quick start (1/2): set up, then run the main job on the embedded default: ResNet-20 trained on
# Fashion-MNIST, compressed to 2.52x fewer FLOPs with BATUDE and with uniform ranks, verified, reported.
# Extra arguments go to `batude demo` (e.g. --full on a GPU, --budget 4x, --out my_run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
batude demo --out demo_out "$@"
