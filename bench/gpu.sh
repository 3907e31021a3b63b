#!/usr/bin/env bash
# The GPU benchmarks and CUDA tests in one call, on a bare GPU machine (README, "On a GPU").
# Needs .gpu/ as README says: the stand-ins of ../shared/gpu and the wheels named there.
# SMALL=1 rehearses it on the CPU.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
PY=${PY:-python3}
if [ "${SMALL:-0}" = 1 ]; then
  DEV=cpu; PTS=4; CH=4; TPTS=8; TCH=4; REP=1; CMP=""; PREC=fp32
else
  DEV=cuda; PTS=512; CH=256; TPTS=1024; TCH=256; REP=3; CMP="--compile"; PREC=fp32,bf16
fi
SITE=$(mktemp -d)
$PY -m pip install -q --no-index --no-deps --target "$SITE" .gpu/wheels/*.whl > "$OUT/pip.txt" 2>&1
export PYTHONPATH=$PWD/.gpu:$SITE PYTHONUNBUFFERED=1
step() {  # name, timeout, command...
  local name=$1 limit=$2; shift 2
  local began=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "== $name rc=$? $((SECONDS - began)) s" | tee -a "$OUT/steps.txt"
  tail -n 25 "$OUT/$name.txt"
}
step env 60 $PY -c "import torch, timm, zarr, numpy; print(torch.__version__, timm.__version__, zarr.__version__, numpy.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(), torch.get_num_threads())"
step vitb 170 $PY bench/infer_bench.py --device $DEV --points $PTS --chunk $CH --repeats $REP --precisions $PREC $CMP --json "$OUT/vitb.json"
step task 120 $PY bench/infer_task_bench.py --device $DEV --points $TPTS --chunk $TCH --precision "${PREC##*,}" --json "$OUT/task.json"
step cudatests 150 $PY -m pytest -q -p no:cacheprovider -o filterwarnings=ignore::DeprecationWarning tests/embedders -k "cuda"
step r50 70 $PY bench/infer_bench.py --device $DEV --arch resnet50 --points $PTS --chunk $CH --repeats $REP --precisions $PREC --json "$OUT/r50.json"
step vits 70 $PY bench/infer_bench.py --device $DEV --arch vit_small_patch16_224 --points $PTS --chunk $CH --repeats $REP --precisions $PREC --json "$OUT/vits.json"
cat "$OUT/steps.txt"
