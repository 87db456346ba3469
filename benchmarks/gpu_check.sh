#!/usr/bin/env bash
# The GPU measurement of docs/performance.md in one call (< 8 minutes on one H100 / H200), from the repo root:
#
#     bash benchmarks/gpu_check.sh            # device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=560)
#
# Writes $OUT/throughput.txt (environment + every table), $OUT/log.txt (full output), $OUT/rows-*.json.
# The machine has torch, torchvision and timm but no soundfile (needed to write and read the wavs of the
# pipeline rows): carry its wheels in .whl (docs/performance.md says how); without them the pipeline
# step is skipped and says so. Each step has its own time limit inside one overall budget, and every
# step appends its table as soon as it ends, so a slow step costs only its own rows.
set -u
OUT=${OUT:-/tmp/avseg-gpu-check}
mkdir -p "$OUT"
BUDGET=${BUDGET:-470}  # seconds for all steps together
# The sizes of the measurement (defaults: the paper's setting). To try the script on a CPU:
#   OUT=/tmp/gc PY=.venv/bin/python DEVICE=cpu MODEL=small SIZE=32 BATCH=4 STEPS=1 WARMUP=0 REPEATS=1 VIDEOS=12 WORKERS=1 BUDGET=1200 bash benchmarks/gpu_check.sh
DEVICE=${DEVICE:-cuda} MODEL=${MODEL:-paper} SIZE=${SIZE:-224} BATCH=${BATCH:-64}
STEPS=${STEPS:-10} WARMUP=${WARMUP:-3} REPEATS=${REPEATS:-3} VIDEOS=${VIDEOS:-160} WORKERS=${WORKERS:-12}
TXT="$OUT/throughput.txt"
LOG="$OUT/log.txt"
: >"$TXT"
: >"$LOG"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

{
  echo "# avseg GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu --format=csv 2>&1
  $PY -c "import torch, torchvision, os; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version(), 'CPUs', os.cpu_count())" 2>&1
  $PY -c "import soundfile; print('soundfile', soundfile.__version__)" 2>&1 | tail -1
} | tee -a "$TXT" "$LOG"

# step NAME SECONDS ARGS...: one throughput.py run limited to min(SECONDS, what is left of the budget)
step() {
  local name=$1 want=$2
  shift 2
  local left=$((BUDGET - SECONDS))
  local limit=$((want < left ? want : left))
  if [ "$limit" -lt 20 ]; then
    echo -e "\n## $name: skipped, the ${BUDGET} s budget is spent" | tee -a "$TXT" "$LOG"
    return
  fi
  echo -e "\n## $name (limit ${limit} s)" | tee -a "$LOG" >>"$TXT"
  timeout --signal=INT --kill-after=10 "$limit" $PY benchmarks/throughput.py --device "$DEVICE" --json "$OUT/rows-$name.json" "$@" >"$OUT/.part" 2>&1
  local rc=$?
  cat "$OUT/.part" >>"$LOG"
  if grep -q '^=== ' "$OUT/.part"; then
    sed -n '/^=== /,$p' "$OUT/.part" >>"$TXT"
  else  # stopped early: keep the rows it printed
    echo "(exit $rc before the end: the rows measured so far)" >>"$TXT"
    grep -E '^(section|model|stages|sweep|pipeline) ' "$OUT/.part" >>"$TXT"
  fi
  rm -f "$OUT/.part"
}

# 0. correctness on the GPU: bf16 + channels_last against fp32, device augmentation against the CPU
echo -e "\n## tests (pytest -m gpu)" | tee -a "$LOG" >>"$TXT"
timeout 90 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_performance.py 2>&1 | tee -a "$LOG" | tail -3 >>"$TXT"

COMMON=(--model "$MODEL" --image-size "$SIZE" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --repeats "$REPEATS")
# 1. model-only, every variant but compile (compiled rows come last: they take minutes to build)
step model 130 "${COMMON[@]}" --sections model --variants "fp32,bf16,channels_last,cudnn.benchmark,fused-adam,bf16+cl,bf16+cl+cudnn+fused"
# 2. pseudo-mask stages and the scaling sweep
step stages-sweep 110 "${COMMON[@]}" --sections stages,sweep --no-stage-compile

# 3. the real pipeline: synthetic S4 at 224 px (wavs need soundfile), its cache, loaders, fit(), the real stages
if $PY -c "import soundfile" 2>/dev/null; then
  DATA=/tmp/avseg-s4
  rm -rf "$DATA" /tmp/avseg-s4-cache
  GEN_START=$SECONDS
  $PY -c "import os; from pathlib import Path; from avseg.data.synthetic import generate; print(generate('s4', Path('$DATA'), num_videos=$VIDEOS, seed=0, size=224, workers=min(16, os.cpu_count())))" >>"$LOG" 2>&1
  echo "synthetic S4 ($VIDEOS videos, 224 px): $((SECONDS - GEN_START)) s" | tee -a "$LOG" >>"$TXT"
  step pipeline 150 "${COMMON[@]}" --sections pipeline --pipeline real --data "$DATA" --cache /tmp/avseg-s4-cache --workers "$WORKERS" --no-pipeline-compile
else
  echo -e "\n## pipeline: skipped, soundfile is missing (carry .whl: docs/performance.md)" | tee -a "$TXT" "$LOG"
fi

# 4. torch.compile on top of everything else, training and inference
step compile 200 "${COMMON[@]}" --sections model --variants "all+compile"

echo -e "\n# $SECONDS s in all" | tee -a "$TXT" "$LOG"
