#!/usr/bin/env bash
# The GPU checks batude owes, as one script for the device tool (writes everything under $OUT).
#
# Prepare once in the repo root (the GPU image has torch 2.11, no tensorly, Python 3.12):
#   echo /.whl/ >> .git/info/exclude; echo /.data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl tensorly==0.10.0
#   mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/
# Run with carry [".whl", ".data"]:
#   bash benchmarks/gpu_suite.sh            # part A: GPU tests + dense 30 epochs + 2.5x/4x, seed 0 (~7 min on an H100)
#   SEEDS=1 bash benchmarks/gpu_suite.sh    # part B in a later session: seed 1 (reuses nothing: trains again)
#   SMOKE=1 bash benchmarks/gpu_suite.sh    # tiny schedule, CPU is fine: checks the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import tensorly" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
DATA=${DATA:-$( [ -d .data/fashion-mnist ] && echo .data/fashion-mnist || echo /usr/share/datasets/fashion-mnist )}
if [ "${SMOKE:-0}" = 1 ]; then
  DENSE_EPOCHS=1; ADMM=1; FT=1; SUBSET="--subset 640"; DEVICE=${DEVICE:-cpu}; WORKERS=0
else
  DENSE_EPOCHS=${DENSE_EPOCHS:-30}; ADMM=${ADMM:-10}; FT=${FT:-10}; SUBSET=""; DEVICE=${DEVICE:-cuda}; WORKERS=${WORKERS:-4}
fi
python3 -c "import json; from batude.bench.env import environment; print(json.dumps(environment(), indent=2))" | tee "$OUT/env.json"
# 1. tests that need a GPU or TensorRT (they skip with the reason where those are missing)
python3 -m pytest -q -rs -p no:cacheprovider -m "gpu or trt" tests 2>&1 | tee "$OUT/gpu_tests.txt" || true
# 2. dense ResNet-20 on Fashion-MNIST, then BATUDE vs uniform/energy/VBMF at equal epochs
python3 -m batude train --model resnet20 --data fashion-mnist --data-dir "$DATA" $SUBSET --epochs "$DENSE_EPOCHS" \
  --device "$DEVICE" --workers "$WORKERS" --out "$OUT/dense"
python3 benchmarks/accuracy_vs_budget.py --dense "$OUT/dense/model.pt" --out "$OUT/accuracy" --data-dir "$DATA" $SUBSET \
  --budgets "${BUDGETS:-2.5x,4x}" --seeds "${SEEDS:-0}" --epochs-admm "$ADMM" --epochs-ft "$FT" --updates-per-epoch 4 \
  --device "$DEVICE" --workers "$WORKERS"
rm -f "$OUT"/dense/state.pt  # large; the checkpoint and log stay
