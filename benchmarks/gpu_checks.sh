#!/usr/bin/env bash
# Every GPU measurement of benchmarks/RESULTS.md in one run, each under its own time limit:
#   1. step_overhead: full-size SDXL UNet at 1024², eager and CUDA graph, 1/2/3 characters +/- masks
#   2. train_throughput: full-size trainer at 1024², bf16, batch 1, 20 timed steps
#   3. train_throughput at the authors' batch 8 (5 timed steps), only if time is left
#   4. step_overhead under ComfyUI's TorchCompileModel, inductor then cudagraphs (compiled-patched vs
#      compiled-plain; 1, 2 and 3 characters + masks), only if time is left (GPU_CHECKS_BUDGET_S)
#
#   bash benchmarks/gpu_checks.sh COMFYUI_DIR OUT_DIR [WHEELS_DIR]
#
# WHEELS_DIR: wheels to install first (offline, into a temporary folder on PYTHONPATH), for a GPU machine
# with no network; benchmarks/bundle_offline.sh makes them. PYTHON picks the interpreter (default python3).
# GPU_CHECKS_QUICK=1 runs the same script with small models, for a dry run on a CPU.
set -uo pipefail
comfyui=$(cd "$1" && pwd) || { echo "usage: $0 COMFYUI_DIR OUT_DIR [WHEELS_DIR]"; exit 2; }
out=$(mkdir -p "$2" && cd "$2" && pwd)
wheels=${3:+$(cd "$3" && pwd)}
python=${PYTHON:-python3}
budget=${GPU_CHECKS_BUDGET_S:-540}  # seconds for the whole script; later steps are skipped, not cut short
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

if [ -n "$wheels" ]; then
  site=$(mktemp -d /tmp/storymaker-site.XXXX)
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl || exit 1
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  "$python" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$out/environment.txt"

if [ "${GPU_CHECKS_QUICK:-0}" = 1 ]; then
  overhead=(--res 128 --rounds 2); train=(--steps 2 --warmup 1); train_big=(--steps 1 --warmup 1 --batch-size 2)
else
  overhead=(--full --res 1024 --rounds 30); train=(--full-size --resolution 1024 --steps 20)
  train_big=(--full-size --resolution 1024 --steps 5 --batch-size 8)
fi

run() {  # run NAME LIMIT_S ARGS...: one benchmark, its log beside its JSON; a failure does not stop the rest
  local name=$1 limit=$2; shift 2
  local left=$((budget - SECONDS))
  if [ "$left" -lt 60 ]; then echo "== $name: skipped, ${left}s of the budget left"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$python" "$@" 2>&1 | tee "$out/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]} after ${SECONDS}s in all"
}

run step_overhead 240 benchmarks/step_overhead.py --comfyui "$comfyui" "${overhead[@]}" --out "$out/step_overhead.json"
run train_throughput_b1 200 benchmarks/train_throughput.py "${train[@]}" --json "$out/train_throughput_b1.json"
run train_throughput_b8 200 benchmarks/train_throughput.py "${train_big[@]}" --json "$out/train_throughput_b8.json"
for backend in inductor cudagraphs; do  # not in the CPU dry run (no cudagraphs there; minutes of compiling)
  [ "${GPU_CHECKS_QUICK:-0}" = 1 ] && break
  run "step_overhead_compiled_$backend" 240 benchmarks/step_overhead.py --comfyui "$comfyui" "${overhead[@]}" \
    --compile "$backend" --out "$out/step_overhead_compiled_$backend.json"
done
grep -h -E "^(step_overhead|train_throughput): " "$out"/*.log
