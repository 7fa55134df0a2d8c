#!/usr/bin/env bash
# One-shot device benchmark: training-step images/s of FGSM-RS, N-FGSM, LAP, AAER, GradAlign
# and PGD-AT (PreActResNet-18 width 64, batch 128 and 512, float32 and bfloat16, with each
# step's device memory and the ratio to a plain PyTorch FGSM-RS step when torch is
# importable), FGSM-RS and LAP on WideResNet-34-10 and ViT-small (batch 128, both dtypes), and
# AutoAttack-standard points/s next to PGD-50-10, and the streaming input path's images/s next
# to the step's (when grain is installed), written as table.md and results.json. Sized
# for one GPU in under 9 minutes: every part has its own timeout, all parts together stop
# at GPU_BENCH_TOTAL_TIMEOUT (default 540 s; parts past it are listed as skipped), and the table
# is written even when a part fails (marked failed). See docs/throughput.md.
#
#   bash benchmarks/gpu.sh [--smoke] [OUT_DIR]    # default OUT_DIR: benchmarks/results/<date>-<device>
#
# --smoke: tiny sizes (width 8, batch 8, float32, one round, two methods, WideResNet-10-1 and a
# two-block ViT of width 32, a shrunken AutoAttack on 8 points) to check the script end to end,
# on CPU too. Its numbers are not a benchmark.
# Python: $PYTHON, else .venv/bin/python, else python3. Per-part timeouts (seconds):
# GPU_BENCH_STEP_TIMEOUT, GPU_BENCH_NET_TIMEOUT (WideResNet, ViT), GPU_BENCH_EVAL_TIMEOUT,
# GPU_BENCH_INPUT_TIMEOUT.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
OUT=''
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    -*) echo "gpu.sh: unknown option $arg (use --smoke and/or an output directory)" >&2; exit 2 ;;
    *) OUT=$arg ;;
  esac
done

if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# JAX allocates on demand, so the PyTorch step in the same process finds memory too.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# Compilations are kept across runs of this script on the same machine (a rerun compiles less).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-${TMPDIR:-/tmp}/fat_jax_jax_cache}

if (( SMOKE )); then
  WIDTH=8; BATCHES=(8); DTYPES=(float32); METHODS=fgsm_rs,n_fgsm; ROUNDS=1; STEPS=1
  NETS=(wrn10_1 vit_tiny); NET_BATCH=8
  STEP_TIMEOUT=${GPU_BENCH_STEP_TIMEOUT:-150}; EVAL_TIMEOUT=${GPU_BENCH_EVAL_TIMEOUT:-150}
  NET_TIMEOUT=${GPU_BENCH_NET_TIMEOUT:-150}; TOTAL=${GPU_BENCH_TOTAL_TIMEOUT:-1200}
  EVAL_ARGS=(--model=cnn --width=8 --n=8 --batch-size=8 --pgd-steps=2 --pgd-restarts=2
             --apgd-steps=2 --fab-steps=2 --square-queries=10)
  INPUT_ARGS=(--layout=tiny --batch-size=8 --batches=3 --width=8 --steps=1)
  INPUT_TIMEOUT=${GPU_BENCH_INPUT_TIMEOUT:-150}
else
  WIDTH=64; BATCHES=(128 512); DTYPES=(float32 bfloat16)
  METHODS=fgsm_rs,n_fgsm,lap,aaer,gradalign,pgd_at; ROUNDS=3; STEPS=5
  # LAP.py --model WideResNet | Vit (tmllab/2024_ICML_LAP); AAER.py's WideResNet is the same.
  NETS=(wrn34_10 vit_small); NET_BATCH=128
  STEP_TIMEOUT=${GPU_BENCH_STEP_TIMEOUT:-75}; EVAL_TIMEOUT=${GPU_BENCH_EVAL_TIMEOUT:-150}
  NET_TIMEOUT=${GPU_BENCH_NET_TIMEOUT:-120}; TOTAL=${GPU_BENCH_TOTAL_TIMEOUT:-540}
  EVAL_ARGS=(--model=preact_resnet18 --width=64 --n=256 --batch-size=256)
  INPUT_ARGS=(--layout=imagenet --batch-size=128 --batches=16 --workers=12 --width=64 --steps=5)
  INPUT_TIMEOUT=${GPU_BENCH_INPUT_TIMEOUT:-150}
fi

DEVICE=$(timeout 60 "$PY" -c 'import jax; print(jax.devices()[0].device_kind)' 2>/dev/null \
         | tr -cs 'A-Za-z0-9._\n-' '_' || true)
DEVICE=${DEVICE:-unknown}
OUT=${OUT:-benchmarks/results/$(date -u +%Y%m%d-%H%M)-$DEVICE}
mkdir -p "$OUT"
: > "$OUT/parts.tsv"

TORCH=()
if "$PY" -c 'import torch' 2>/dev/null; then TORCH=(--torch); fi

# run_part NAME TIMEOUT COMMAND...: the command's output goes to NAME.log; its exit status and
# wall time go to parts.tsv (124/137: timed out). A failing part never stops the script. The
# timeout is cut to what is left of TOTAL less 20 s for the table; with under 10 s left the part
# is skipped (timeout 0 in parts.tsv).
run_part() {
  local name=$1 limit=$2 rc=0 start=$SECONDS left=$((TOTAL - SECONDS - 20))
  shift 2
  if (( left < 10 )); then
    printf '%s\t124\t0\t0\n' "$name" >> "$OUT/parts.tsv"
    echo "gpu.sh: $name skipped (GPU_BENCH_TOTAL_TIMEOUT=${TOTAL}s spent)" >&2
    return
  fi
  if (( limit > left )); then limit=$left; fi
  echo "gpu.sh: $name (timeout ${limit}s)" >&2
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >> "$OUT/parts.tsv"
  if (( rc )); then echo "gpu.sh: $name failed (exit $rc), see $OUT/$name.log" >&2; fi
}

# step_parts DTYPE: PreActResNet-18 at each batch, then FGSM-RS and LAP on each of NETS.
step_parts() {
  local dtype=$1 batch net extra=()
  if [[ $dtype == float32 ]]; then extra=("${TORCH[@]}"); fi
  for batch in "${BATCHES[@]}"; do
    run_part "step_${dtype}_b${batch}" "$STEP_TIMEOUT" "$PY" benchmarks/step_time.py \
      --width="$WIDTH" --batch-per-device="$batch" --devices=1 --dtypes="$dtype" \
      --methods="$METHODS" --rounds="$ROUNDS" --steps="$STEPS" \
      --json="$OUT/step_${dtype}_b${batch}.json" ${extra[@]+"${extra[@]}"}
  done
  for net in "${NETS[@]}"; do
    run_part "step_${dtype}_b${NET_BATCH}_${net}" "$NET_TIMEOUT" "$PY" benchmarks/step_time.py \
      --model="$net" --batch-per-device="$NET_BATCH" --devices=1 --dtypes="$dtype" \
      --methods=fgsm_rs,lap --rounds="$ROUNDS" --steps="$STEPS" \
      --json="$OUT/step_${dtype}_b${NET_BATCH}_${net}.json"
  done
}

# float32 first, then the evaluation, then bfloat16: what matters most runs before the time is up.
step_parts float32
run_part eval "$EVAL_TIMEOUT" "$PY" benchmarks/eval_throughput.py "${EVAL_ARGS[@]}" \
  --json="$OUT/eval.json"
# The streaming input path (grain, ImageNet-100-sized JPEGs cropped to 224) next to the step.
if "$PY" -c 'import grain' 2>/dev/null; then
  run_part input "$INPUT_TIMEOUT" "$PY" benchmarks/input_throughput.py "${INPUT_ARGS[@]}" \
    --json="$OUT/input.json"
fi
for dtype in "${DTYPES[@]}"; do
  if [[ $dtype != float32 ]]; then step_parts "$dtype"; fi
done

TABLE_ARGS=("$OUT")
if (( SMOKE )); then TABLE_ARGS+=(--smoke); fi
"$PY" benchmarks/gpu_table.py "${TABLE_ARGS[@]}"
echo "gpu.sh: wrote $OUT/table.md and $OUT/results.json" >&2
