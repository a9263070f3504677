#!/usr/bin/env bash
# All GPU benchmarks in one device call (results and logs under $OUT). On a machine without CUDA it runs
# the same scripts at CPU smoke sizes. Carry: .whl (diffusers, pydantic: not on the GPU image) and .ref.
set -u
OUT=${OUT:-bench/results}; mkdir -p "$OUT"
PY=${PY:-python3}
if ! $PY -c "import diffusers, pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if $PY -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEV=cuda; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  GEN="--arch full --stage --compile --budget-s 150"; HEADS="--heads esa_cyclegan cyclegan unet_cbam"
else
  DEV=cpu; GEN="--arch tiny --batches 1 --reps 1"; HEADS="--heads esa_cyclegan --flavor debug --size 32 --batch 2 --no-compile"
fi
run() { local name=$1 limit=$2; shift 2; echo "== $name (limit ${limit}s)"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "rc=$? in $((SECONDS - t0))s"; grep '^|' "$OUT/$name.log"; }
run train_heads 130 $PY bench/train_heads.py --device $DEV $HEADS --out "$OUT"
run enhance 90 $PY bench/enhance.py --device $DEV --out "$OUT" $([ $DEV = cpu ] && echo "--flavor debug --size 32 --batch 2 --no-compile --files 0")
run generation 360 $PY bench/generation.py --device $DEV $GEN --out "$OUT"
