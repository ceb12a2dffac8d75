#!/usr/bin/env bash
# The GPU checks batude owes, as one script for the device tool (writes everything under $OUT).
#
# Prepare once in the repo root (the GPU image has torch 2.11, triton 3.6, no tensorly, Python 3.12):
#   echo /.whl/ >> .git/info/exclude; echo /.data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl tensorly==0.10.0
#   mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/
# Run with carry [".whl", ".data"], one session's worth of parts at a time (15 min of device time
# per session; a fresh H100 started in about 30 s on 2026-11-26, an H200 on 2026-11-27). The device
# tool brings back at most 8 files from $OUT, at most two folders down: run few parts per call, or set
# PACK=1 (everything packed into $OUT/gpu_suite.tgz at exit, also when `timeout` stops the script).
# Times measured on an H100 on 2026-11-26 and an H200 on 2026-11-27 (BENCHMARKS.md, "H100 runs",
# "H200 runs"), estimates marked "?":
#   PART=kernels bash benchmarks/gpu_suite.sh          # gpu tests of kernels/ (H200: 281 tests in 49 s with 15 xdist
#                                                      #   workers, KT_WORKERS=15) + kernels_vs_cudnn.py (H200: 134 s
#                                                      #   with KERNELS="--budget-s 160 --layer-budget-s 110")  (~3-4 min)
#   PART=latency bash benchmarks/gpu_suite.sh          # latency-aware plans vs oracle (CUDA graphs and compile,
#                                                      #   b64/b1) + latency_vs_flops ResNet-18 2.52x      (H200: 90 s
#                                                      #   for the plans in CUDA graphs only; ~3 min? with compile)
#   PART=compile bash benchmarks/gpu_suite.sh          # the latency-aware plans compiled (freezing) and graphed, as
#                                                      #   the best dense is: the fair "vs best dense" for cuDNN plans
#                                                      #   (BATCHES=64 by default; ~1-2 min? per batch: 5 compiles)
#   PART=kernel-plans bash benchmarks/gpu_suite.sh     # latency-aware plans on a table with the kernels: ResNet-18
#                                                      #   b64 (100 s; H200 with the halo mode: 72 s, b1 93 s);
#                                                      #   BATCHES=1 and MODEL=resnet50 FLOPS=2.97x: 176 s together
#                                                      #   (then with compile rows, now with dense compile-graph instead;
#                                                      #   now also triton-compile: the plans on the kernels compiled and
#                                                      #   graphed, against compiled dense: 5 more compiles per batch)
#   PART=accuracy BUDGETS=2.5x METHODS=batude,uniform DENSE=benchmarks/results/fmnist_resnet20_dense30/model.pt
#                                                      #   BATUDE vs uniform at 2.5x, 10+10 epochs each, one run after
#                                                      #   another (173-192 s a run eager on 2026-11-26: plain epoch 5.9 s,
#                                                      #   BC-ADL 1.17x, fine-tuning 8-10 s; without DENSE it first trains
#                                                      #   one, 30 epochs)
#   PART=accuracy BUDGETS=2.5x,4x SEEDS=0,1 DENSE=<dense/model.pt> ... # on a dense model a session committed
#                                                      #   (ACC_ARGS: more accuracy_vs_budget.py options, e.g. "--kd", or
#                                                      #   "--continue-from benchmarks/results/<dir>/results.json": skip the
#                                                      #   runs an earlier, cut-short call finished)
#   PART=train-speed DENSE=benchmarks/results/fmnist_resnet20_dense30/model.pt  # training ms/step, eager vs torch.compile
#                                                      #   (default, reduce-overhead) for dense, BC-ADL, decomposed (~4 min?)
#   PART=latency-accuracy DENSE=<model.pt> bash ...    # FLOPs vs matched latency budget, accuracy and ms (~6 min?;
#                                                      #   trains the dense model first when DENSE is not given; LA_ARGS:
#                                                      #   more latency_budget_accuracy.py options, e.g. "--compile default")
#   PART=tests bash benchmarks/gpu_suite.sh            # every gpu/trt-marked test outside kernels/
#   PART=profile bash benchmarks/gpu_suite.sh          # `batude bench --profile`: GPU time per kernel category, idle share,
#                                                      #   top kernels of dense vs uniform 2.52x ResNet-18 in CUDA graphs,
#                                                      #   compiled+graphed, on the kernels (graphed; compiled+graphed),
#                                                      #   b64 and b1 (~5 min?: 6 compiles, the kernels' autotuning)
#   SMOKE=1 PART=... bash benchmarks/gpu_suite.sh      # tiny schedule on the CPU: checks the script itself
#   LUT_DIR=benchmarks/results/<dir> PART=...           # latency parts: reuse the tables a cut-short session saved
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
PART=${PART:-kernels}
mkdir -p "$OUT"
if [ "${PACK:-0}" = 1 ]; then  # the device tool brings back at most 8 files: write elsewhere, pack into $OUT at exit
  PACKED=$OUT; OUT=$(mktemp -d)   # (also when stopped: `timeout 540 bash ...` sends TERM, and what is done comes back)
  trap 'tar czf "$PACKED/gpu_suite.tgz" -C "$OUT" .; rm -rf "$OUT"' EXIT
  trap 'exit 143' TERM INT
fi
if [ -d .whl ] && ! python3 -c "import tensorly" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
DATA=${DATA:-$( [ -d .data/fashion-mnist ] && echo .data/fashion-mnist || echo /usr/share/datasets/fashion-mnist )}
if [ "${SMOKE:-0}" = 1 ]; then
  DENSE_EPOCHS=1; ADMM=1; FT=1; SUBSET="--subset 640"; DEVICE=${DEVICE:-cpu}; WORKERS=0
  LAT="--device cpu --dtype fp32 --batches 2 --input 3,32,32 --backends eager --points 2 --iters 3 --warmup 1"
  LVF="--device cpu --dtypes fp32 --batches 1 --backends eager --iters 2 --warmup 1"
  KERNELS="--smoke"; export TRITON_INTERPRET=1
else
  DENSE_EPOCHS=${DENSE_EPOCHS:-30}; ADMM=${ADMM:-10}; FT=${FT:-10}; SUBSET=""; DEVICE=${DEVICE:-cuda}; WORKERS=${WORKERS:-4}
  LAT=""; LVF="--device cuda --dtypes fp16 --batches 1,64 --backends eager,cuda-graph"; KERNELS=${KERNELS:-"--budget-s 240 --layer-budget-s 160"}
fi
has() { [[ ",$PART," == *",$1,"* ]]; }
LUTS=${LUT_DIR:+--lut-dir $LUT_DIR}  # reuse latency tables an earlier session saved (lut_b<batch>.json, same GPU)
python3 -c "import json; from batude.bench.env import environment; print(json.dumps(environment(), indent=2))" | tee "$OUT/env.json"
if has kernels; then  # issue 6: correctness on the real compiler, then the speed table
  # compile-bound: spread over the CPU cores with pytest-xdist where the image has it; capped (KT_TIMEOUT s)
  XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n ${KT_WORKERS:-8}" || true)
  timeout --foreground "${KT_TIMEOUT:-900}" python3 -m pytest -q -rs -p no:cacheprovider $XDIST --durations=10 -m gpu tests/kernels 2>&1 \
    | tee "$OUT/kernel_tests.txt" || true
  python3 benchmarks/kernels_vs_cudnn.py $KERNELS --out "$OUT/kernels"
fi
if has latency; then  # issues 5 and 7: latency-aware plans vs the oracle, and the latency-vs-FLOPs rows
  python3 benchmarks/latency_aware.py $LAT $LUTS --out "$OUT/latency_aware"
  python3 benchmarks/latency_vs_flops.py --models resnet18 --budgets 2.52x --methods uniform,batude $LVF \
    --iters 30 --warmup 5 --out "$OUT/latency_vs_flops"
fi
if has compile; then
  if [ "${SMOKE:-0}" = 1 ]; then COMPILE="$LAT"; else COMPILE="--batches ${BATCHES:-64} --backends compile-graph"; fi
  python3 benchmarks/latency_aware.py $COMPILE $LUTS --out "$OUT/latency_aware_compile"
fi
if has kernel-plans; then  # issue 7's kernel goals: >= 2.0x (b64) / >= 1.6x (b1) faster than the best dense backend
  if [ "${SMOKE:-0}" = 1 ]; then  # the interpreter: a small CIFAR ResNet-20 at 16x16
    KP="--device cpu --dtype fp32 --batches 1 --model batude:resnet20 --input 3,16,16 --backends eager --lut-backend triton --points 2 --iters 1 --warmup 0"; else
    KP="--lut-backend triton --batches ${BATCHES:-64} --points 3 --backends ${BACKENDS:-cuda-graph,triton-compile} --model ${MODEL:-resnet18} --flops ${FLOPS:-2.52x}"; fi
  python3 benchmarks/latency_aware.py $KP $LUTS --out "$OUT/latency_aware_triton"
fi
if has profile; then  # issues 6, 7: where the time goes, kernel by kernel, dense vs uniform Tucker-2 on cuDNN, compiled, kernels
  if [ "${SMOKE:-0}" = 1 ]; then PM="batude:resnet20"; PB="--device cpu --batch 2 --backend eager --iters 3 --warmup 1 --profile-calls 2"; else
    PM="torchvision:${MODEL:-resnet18}"; PB="--device cuda --dtype fp16 --batch ${BATCHES:-64,1} --backend ${BACKENDS:-cuda-graph,compile-graph,triton,triton-compile}"; fi
  python3 -m batude plan "$PM" --method uniform --budget "${FLOPS:-2.52x}" --out "$OUT/profile_plan.json"
  python3 -m batude bench "$PM" --plan "$OUT/profile_plan.json" --compare-dense $PB --profile --out "$OUT/profile" 2>&1 \
    | tee "$OUT/profile.txt" || true  # a diagnostic: a failure here must not cost the parts after it
fi
dense_model() {  # DENSE: the given Fashion-MNIST ResNet-20 checkpoint, else one trained here (kept under $OUT/dense)
  DENSE=${DENSE:-}
  if [ -z "$DENSE" ] || [ ! -f "$DENSE" ]; then
    python3 -m batude train --model resnet20 --data fashion-mnist --data-dir "$DATA" $SUBSET --epochs "$DENSE_EPOCHS" \
      --device "$DEVICE" --workers "$WORKERS" --out "$OUT/dense"
    DENSE="$OUT/dense/model.pt"; rm -f "$OUT"/dense/state.pt  # large; the checkpoint and log stay
  fi
}
if has latency-accuracy; then  # issue 7: at equal measured latency, the latency budget vs the FLOPs budget (accuracy)
  dense_model
  if [ "${SMOKE:-0}" = 1 ]; then LA="--device cpu --dtype fp32 --batch 8 --points 2 --iters 3"; else
    LA="--device cuda --dtype fp16 --lut-backend cuda-graph --batch 64"; fi
  python3 benchmarks/latency_budget_accuracy.py --dense "$DENSE" --out "$OUT/latency_budget_accuracy" --data-dir "$DATA" \
    $SUBSET $LA --epochs-admm "$ADMM" --epochs-ft "$FT" --workers "$WORKERS" ${LA_ARGS:-}
fi
if has tests; then
  python3 -m pytest -q -rs -p no:cacheprovider -m "gpu or trt" tests --ignore=tests/kernels 2>&1 | tee "$OUT/gpu_tests.txt" || true
fi
if has train-speed; then  # issue 3's GPU time: are the launch-bound training steps faster compiled?
  dense_model
  if [ "${SMOKE:-0}" = 1 ]; then TS="--subset 256 --modes eager,default"; else TS="--modes ${MODES:-eager,default,reduce-overhead}"; fi
  python3 benchmarks/train_speed.py --dense "$DENSE" --data-dir "$DATA" $TS --device "$DEVICE" --workers "$WORKERS" --out "$OUT/train_speed"
fi
if has accuracy; then  # issue 3: dense ResNet-20 on Fashion-MNIST, then BATUDE vs uniform/energy/VBMF at equal epochs
  dense_model
  python3 benchmarks/accuracy_vs_budget.py --dense "$DENSE" --out "$OUT/accuracy" --data-dir "$DATA" $SUBSET \
    --budgets "${BUDGETS:-2.5x,4x}" --seeds "${SEEDS:-0}" --methods "${METHODS:-batude,uniform,energy,vbmf}" --epochs-admm "$ADMM" --epochs-ft "$FT" --updates-per-epoch 4 ${ACC_ARGS:-} \
    --device "$DEVICE" --workers "$WORKERS"
fi
