#!/usr/bin/env bash
# The GPU half of the GPT target's acceptance (issues #3 and #21) on a lent GPU machine:
#   1. the GPU preset's data cache, built as every node builds it (about 2 min on 16 cores)
#   2. parity: train.py's model compiled under bf16 autocast on the GPU against float32 eager on CPU
#   3. one full run of the GPU preset (5 min unless GPU_CHECK_SECONDS says otherwise): val_bpb, MFU,
#      tokens/s, peak memory, startup and compile time
#   4. two back-to-back runs of the GPU preset on one ar-ray trainer (bench/gpu_duty.py; GPU_CHECK_DUTY_SECONDS
#      of training each, default 60): the ledger's startup/train/eval/teardown_seconds of each run, the duty
#      cycle (training + evaluation / the trainer's wall time) and its projection to a 300 s budget
# Needs python3 with torch (CUDA), numpy, pandas and pyarrow; no Ray. Writes gpu_check.log (and gpu_duty.json)
# to $OUT (or the current folder). All four take ~14 min: more than one 10-minute device call, so split them
# over two calls on the same warm machine (the data cache of step 1 stays in AR_CACHE_DIR):
#   device run:  GPU_CHECK_STEPS="1 2 3" bash bench/gpu_check.sh      (~9 min; GPU_CHECK_SECONDS=240 for margin)
#                GPU_CHECK_STEPS="1 4" bash bench/gpu_check.sh        (~4 min; step 1 is quick once cached)
#   a dry run on CPU (what the tests do): GPU_CHECK_PRESET=cpu GPU_CHECK_DEVICE=cpu GPU_CHECK_SECONDS=3 \
#       GPU_CHECK_PARITY="--steps 4 --depth 1 --batch 4 --seq-len 128" bash bench/gpu_check.sh
#   (steps 1-3 unless GPU_CHECK_STEPS says otherwise; GPU_CHECK_TARGET: another target folder for step 4,
#   tests/trainers/test_gpu_duty.py gives it a toy)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
LOG=${OUT:-$PWD}/gpu_check.log
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PARITY=${GPU_CHECK_PARITY:---depth 4 --batch 8 --seq-len 512 --steps 40}
# the CPU dry run leaves out step 4 (two more runs: tests/trainers/test_gpu_duty.py runs it with a toy target)
if [ "$DEVICE" = cuda ]; then STEPS=" ${GPU_CHECK_STEPS:-1 2 3 4} "; else STEPS=" ${GPU_CHECK_STEPS:-1 2 3} "; fi
SECONDS_FULL=${GPU_CHECK_SECONDS:-300}
DUTY_SECONDS=${GPU_CHECK_DUTY_SECONDS:-$(( SECONDS_FULL < 60 ? SECONDS_FULL : 60 ))}
if [ "$DEVICE" = cuda ]; then DUTY_GPUS=0; else DUTY_GPUS=; fi  # the trainer's GPU ids (none: a CPU trainer)
step() { [[ $STEPS == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1 AR_CACHE_DIR=${AR_CACHE_DIR:-/tmp/ar-ray-cache} AR_PRESET=${GPU_CHECK_PRESET:-gpu}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || echo "(no nvidia-smi)"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
  cd "$ROOT/trainers/gpt" || exit 1
  if step 1; then
    echo "== 1. data cache"
    TIMEFORMAT="prepare: %R s wall"
    time "$PYTHON" prepare.py
  fi
  if step 2; then
    echo "== 2. parity (compiled bf16 on $DEVICE vs float32 on CPU)"
    # shellcheck disable=SC2086  # PARITY is a list of flags
    "$PYTHON" parity.py --device "$DEVICE" --dtype bf16 --compile $PARITY
  fi
  if step 3; then
    echo "== 3. full run of the $AR_PRESET preset"
    RUN=$(mktemp -d) && cp train.py prepare.py "$RUN" && cd "$RUN" || exit 1
    AR_SEED=1 AR_RESULT_FILE="$RUN/result.json" AR_BUDGET_SECONDS=$SECONDS_FULL "$PYTHON" train.py
    echo "result file: $(cat "$RUN/result.json")"
    nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv || true
  fi
  if step 4; then
    echo "== 4. two back-to-back runs of the $AR_PRESET preset on one trainer ($DUTY_SECONDS s budget each)"
    "$PYTHON" "$ROOT/bench/gpu_duty.py" --target "${GPU_CHECK_TARGET:-$ROOT/trainers/gpt}" --runs 2 --gpus "$DUTY_GPUS" \
      --budget-seconds "$DUTY_SECONDS" --project 300 --json "${OUT:-$PWD}/gpu_duty.json"
  fi
} 2>&1 | tee "$LOG"
