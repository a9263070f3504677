#!/usr/bin/env bash
# All GPU benchmarks in one device call (results and logs under $OUT). On a machine without CUDA it runs
# the same scripts at CPU smoke sizes. Carry: .whl (the facelift wheel, plus diffusers and pydantic, which the GPU
# image lacks; `make gpu-wheels` builds them all).
# Budget: the limits below add up to 550 s, inside one 10-min device call with the wheel install; each
# benchmark saves its JSON as it goes, so a cut-short run keeps its finished rows.
set -u
OUT=${OUT:-bench/results}; mkdir -p "$OUT"
PY=${PY:-python3}
if ! $PY -c "import diffusers, pydantic, facelift.models" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if $PY -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEV=cuda; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  HEADS="--heads esa_cyclegan --compile-modes regional full --budget-s 90"
  REAL="--heads esa_cyclegan --compile-modes regional --budget-s 30 --real-input 256 --decode-workers 8"
  GEN="--arch full --modes eager regional stage fp8-regional --budget-s 160"
else
  DEV=cpu; HEADS="--heads esa_cyclegan --flavor debug --size 32 --batch 2 --no-compile"
  REAL="$HEADS --real-input 4"
  GEN="--arch tiny --batches 1 --reps 1 --modes eager regional stage fp8-regional"
fi
run() { local name=$1 limit=$2; shift 2; echo "== $name (limit ${limit}s)"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "rc=$? in $((SECONDS - t0))s"; grep '^|' "$OUT/$name.log"; }
if [ "${SERVE_ONLY:-0}" = 1 ]; then
  # facelift serve under load (bench/serve_load.py, docs/serve.md), in its own device call (the rows below fill
  # one): needs ray[serve] there. The tiny profile at 512² measures the serving path (Ray Serve, batching, PNG
  # encode, the head on the GPU), not FLUX: the public anchor (schnell end to end at 512², 0.29 s p50 / 0.49 s
  # p90 with fp8 + compile) needs the real schnell weights in the HF cache (--profile flux --num-gpus 1).
  run serve_load 300 $PY bench/serve_load.py --profile tiny --size 512 --num-gpus $([ $DEV = cuda ] && echo 1 || echo 0) \
    --requests 64 --out "$OUT"
  exit 0
fi
run fp8_linear 50 $PY bench/fp8_linear.py --device $DEV --out "$OUT"
run train_heads 160 $PY bench/train_heads.py --device $DEV $HEADS --out "$OUT"
# end to end: the same step fed by real 512² PNGs through the product's input pipeline (decode overlapped)
run train_real_input 90 $PY bench/train_heads.py --device $DEV $REAL --out "$OUT/real-input"
run generation 250 $PY bench/generation.py --device $DEV $GEN --out "$OUT"
