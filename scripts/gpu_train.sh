#!/bin/bash
# Train the bundled models on one CUDA machine, in one sitting, with the project's own trainer:
#   * the gray and RGB models continue from the bundled weights with the "scientific" recipe,
#     batch 16, 48 px LR patches, 2304 decoded pixels per patch (LIIF's setting), for MINUTES each;
#   * eight short A/B runs of the recipe's options (gray, from scratch, equal steps) run beside them.
#
#   bash scripts/gpu_train.sh DATA MINUTES      # DATA: folder with T91/ BSDS200/ microscopy/ thermal/
#   AB=0 RGB_START=a.safetensors GRAY_START=b.safetensors THREADS=7 bash scripts/gpu_train.sh DATA MINUTES
#
# The cosine schedule needs the run's length in steps: a short probe measures steps per second,
# then the run resumes (same optimizer, same sampler state) with the length that fills MINUTES.
# Validation files are the bundled models' own held-aside files (their weights metadata), so the
# numbers compare with docs/quality.md's. Results land in $OUT (weights, logs as one tarball).
set -u
export PYTHONPATH=${SRC:-$PWD/src} PYTHONUNBUFFERED=1
DATA=${1:-.gpu_data}
MINUTES=${2:-6.5}
AB_STEPS=${AB_STEPS:-2500}
OUT=${OUT:-/tmp/gpu_train}
RUNS=${RUNS:-/tmp/runs}
PROBE=${PROBE:-0.75}
mkdir -p "$RUNS" "$OUT"
PY=${PYTHON:-python3}

hold_outs() {  # --hold-out NAME.* for each file the bundled model held aside
    $PY -c "
import sys
from pathlib import Path
from diinn_napari.weights import read_metadata
for f in read_metadata(sys.argv[1])['val_files']:
    print('--hold-out', Path(f).stem + '.*')" "$1"
}

COMMON=(--recipe scientific --device ${DEVICE:-cuda} --batch 16 --patch 48 --queries 2304 --val-fraction 0 --val-every 1000 --seed 1)
RGB=(--weights ${RGB_START:-weights/diinn-rgb.safetensors} --channels 3 --lr ${RGB_LR:-3e-4} --warmup 200 --threads ${THREADS:-3}
     --data "$DATA/T91" --data "$DATA/BSDS200" $(hold_outs weights/diinn-rgb.safetensors))
GRAY=(--weights ${GRAY_START:-weights/diinn-gray.safetensors} --channels 1 --lr 2e-4 --warmup 200 --threads ${THREADS:-3}
      --data "$DATA/T91" --data "$DATA/BSDS200" --data "$DATA/microscopy" --data "$DATA/thermal"
      $(hold_outs weights/diinn-gray.safetensors))

long_run() {  # name, args...: probe, then resume to fill MINUTES
    local name=$1; shift
    $PY -m diinn_napari.finetune "${COMMON[@]}" "$@" --steps 1000000 --time-limit $PROBE \
        --out "$RUNS/$name.safetensors" > "$RUNS/$name.out" 2>&1
    local done_steps total
    done_steps=$($PY -c "import torch; print(torch.load('$RUNS/$name.state.pt', weights_only=True)['step'])")
    total=$($PY -c "print(int($done_steps * $MINUTES / $PROBE * 0.93))")
    echo "$name: $done_steps steps in the $PROBE min probe -> --steps $total" | tee -a "$RUNS/$name.out"
    $PY -m diinn_napari.finetune "${COMMON[@]}" "$@" --steps "$total" --time-limit "$(
        $PY -c "print($MINUTES - $PROBE)")" --resume --out "$RUNS/$name.safetensors" >> "$RUNS/$name.out" 2>&1
}

ab_run() {  # name, args...: gray from scratch, AB_STEPS steps, one CPU thread
    local name=$1; shift
    $PY -m diinn_napari.finetune "${COMMON[@]}" --weights none --channels 1 --lr 5e-4 --threads 1 \
        --data "$DATA/T91" --data "$DATA/BSDS200" --data "$DATA/microscopy" --data "$DATA/thermal" \
        $(hold_outs weights/diinn-gray.safetensors) --steps "$AB_STEPS" --val-every 500 \
        --time-limit "$MINUTES" "$@" --out "$RUNS/ab-$name.safetensors" > "$RUNS/ab-$name.out" 2>&1
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
long_run rgb "${RGB[@]}" &
long_run gray "${GRAY[@]}" &
if [ "${AB:-1}" = 1 ]; then  # AB=0: the two long runs alone (each gets the whole GPU and more CPU threads)
    ab_run base &
    ab_run no-ema --ema 0 &
    ab_run step-schedule --schedule step &
    ab_run patch32 --patch 32 --queries 1024 &
    ab_run scales1-4 --scales 1-4 &
    ab_run no-aniso --aniso 0 &
    ab_run l1 --loss l1 &
    ab_run no-sci-aug --dark 0 --sparse 0 --jitter 0 --shot-noise 0 &
fi
wait
for name in rgb gray; do
    cp "$RUNS/$name.safetensors" "$OUT/$name.safetensors" 2>/dev/null
    tail -3 "$RUNS/$name.out"
done
cp "$RUNS/ab-base.safetensors" "$RUNS/ab-scales1-4.safetensors" "$OUT/" 2>/dev/null
(cd "$RUNS" && tar czf "$OUT/train-logs.tgz" *.out *.log.jsonl)
for f in "$RUNS"/*.log.jsonl; do echo "== $f"; tail -1 "$f"; done
