#!/usr/bin/env bash
# The GPU half of the GPT target's acceptance (issue #3), in one call of a lent GPU machine (~11 min):
#   1. the GPU preset's data cache, built as every node builds it (about 2 min on 16 cores)
#   2. parity: train.py's model compiled under bf16 autocast on the GPU against float32 eager on CPU
#   3. one full run of the GPU preset (5 min unless GPU_CHECK_SECONDS says otherwise): val_bpb, MFU,
#      tokens/s, peak memory, startup and compile time
# Needs python3 with torch (CUDA) and numpy; no Ray. Writes gpu_check.log to $OUT (or the current folder).
#   device run:  bash bench/gpu_check.sh
#   a dry run on CPU (what the tests do): GPU_CHECK_PRESET=cpu GPU_CHECK_DEVICE=cpu GPU_CHECK_SECONDS=3 \
#       GPU_CHECK_PARITY="--steps 4 --depth 1 --batch 4 --seq-len 128" bash bench/gpu_check.sh
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
LOG=${OUT:-$PWD}/gpu_check.log
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PARITY=${GPU_CHECK_PARITY:---depth 4 --batch 8 --seq-len 512 --steps 40}
export PYTHONUNBUFFERED=1 AR_CACHE_DIR=${AR_CACHE_DIR:-/tmp/ar-ray-cache} AR_PRESET=${GPU_CHECK_PRESET:-gpu}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || echo "(no nvidia-smi)"
  "$PYTHON" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
  cd "$ROOT/trainers/gpt" || exit 1
  echo "== 1. data cache"
  TIMEFORMAT="prepare: %R s wall"
  time "$PYTHON" prepare.py
  echo "== 2. parity (compiled bf16 on $DEVICE vs float32 on CPU)"
  # shellcheck disable=SC2086  # PARITY is a list of flags
  "$PYTHON" parity.py --device "$DEVICE" --dtype bf16 --compile $PARITY
  echo "== 3. full run of the $AR_PRESET preset"
  RUN=$(mktemp -d) && cp train.py prepare.py "$RUN" && cd "$RUN" || exit 1
  AR_SEED=1 AR_RESULT_FILE="$RUN/result.json" AR_BUDGET_SECONDS=${GPU_CHECK_SECONDS:-300} "$PYTHON" train.py
  echo "result file: $(cat "$RUN/result.json")"
  nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv || true
} 2>&1 | tee "$LOG"
