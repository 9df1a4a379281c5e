#!/usr/bin/env bash
# The GPU half of the GPT target's acceptance (issue #3), in one call of a lent GPU machine (~11 min):
#   1. the GPU preset's data cache, built as every node builds it (about 2 min on 16 cores)
#   2. parity: train.py's model compiled under bf16 autocast on the GPU against float32 eager on CPU
#   3. one full run of the GPU preset (5 min unless GPU_CHECK_SECONDS says otherwise): val_bpb, MFU,
#      tokens/s, peak memory, startup and compile time
# Needs python3 with torch (CUDA) and numpy; no Ray. Writes gpu_check.log to $OUT (or the current folder).
#   device run:  bash bench/gpu_check.sh
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOG=${OUT:-$PWD}/gpu_check.log
export PYTHONUNBUFFERED=1 AR_CACHE_DIR=${AR_CACHE_DIR:-/tmp/ar-ray-cache} AR_PRESET=gpu
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name())"
  cd "$ROOT/trainers/gpt"
  echo "== 1. data cache"
  /usr/bin/time -f "prepare: %e s wall, %M KB peak RSS" python3 prepare.py
  echo "== 2. parity (compiled bf16 on GPU vs float32 on CPU)"
  python3 parity.py --device cuda --dtype bf16 --compile --depth 4 --batch 8 --seq-len 512 --steps 40
  echo "== 3. full run of the GPU preset"
  RUN=$(mktemp -d) && cp train.py prepare.py "$RUN" && cd "$RUN"
  AR_SEED=1 AR_RESULT_FILE="$RUN/result.json" AR_BUDGET_SECONDS=${GPU_CHECK_SECONDS:-300} python3 train.py
  echo "result file: $(cat "$RUN/result.json")"
  nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv
} 2>&1 | tee "$LOG"
