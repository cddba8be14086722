#!/usr/bin/env bash
# Issue 25: continue the bundled RGB model in the background on this CPU (one thread, niced),
# with the "mix" arm of scripts/rgb_recipe_ab.sh (the scientific recipe with a tenth of dark,
# jitter, shot-noise and anisotropic items: the arm that was neutral on both natural images
# and the RGB domain files), all layers, a cosine sized to the time limit; then score the
# result like the bundled model (Set14, Set5, the RGB domain files; default consistency).
#
#   nice -n 19 bash scripts/rgb_continue.sh [DATA] [OUT] [MINUTES] [SEED]   (../shared/data, runs/rgb-continue, 120, 4)
#
# A new SEED per continuation draws other patches than the run before.
#
# Resumable: rerun the same command after an interruption (--resume from the state beside --out).
set -u
cd "$(dirname "$0")/.."
D=${1:-../shared/data}; OUT=${2:-runs/rgb-continue}; MINUTES=${3:-120}; SEED=${4:-4}
mkdir -p "$OUT"
HOLD=$(python -c "
from pathlib import Path; from diinn_napari.weights import read_metadata
print(' '.join(f'--hold-out {Path(f).stem}.*' for f in read_metadata('weights/diinn-rgb.safetensors')['val_files']))")
resume=""; [ -f "$OUT/rgb.state.pt" ] && resume="--resume"
if [ ! -f "$OUT/finished" ]; then
  python -m diinn_napari.finetune --weights weights/diinn-rgb.safetensors --channels 3 --threads 1 \
    --data "$D/train/T91" --data "$D/train/BSDS200" $HOLD --val-fraction 0 --seed "$SEED" \
    --batch 8 --patch 32 --queries 1024 --preset finetune --train all --lr 1e-4 --warmup 100 \
    --time-limit "$MINUTES" --ema 0.999 --loss charbonnier --val-every 250 \
    --recipe scientific --axial 0 --dark 0.1 --sparse 0.05 --jitter 0.1 --shot-noise 0.1 --aniso 0.1 \
    $resume --out "$OUT/rgb.safetensors" >> "$OUT/train.out" 2>&1
  case $? in 0|3) touch "$OUT/finished" ;; *) echo "training failed (see $OUT/train.out)"; exit 1 ;; esac
fi
RGB_FILES="$D/domains/microscopy/xy_rgb__cells.tif $D/domains/microscopy/xyc_16bit__hela-cells.tif
  $D/domains/satellite/landsat7_RGB.byte.tif $D/domains/satellite/naip_m_4709963_se_14_1_20170827.tif
  $D/domains/satellite/landsat_timeseries_2005.tif"
for w in "$OUT/rgb.safetensors" "$OUT/rgb.last.safetensors"; do
  [ -f "$w" ] || continue
  name=$(basename "$w" .safetensors)
  for set in Set14 Set5; do
    [ -f "$OUT/$name-$set.txt" ] || OMP_NUM_THREADS=1 python -m diinn_napari.evaluate --data "$D/benchmarks/$set" \
        --scales 2,3,4 --channels 3 --model "$w" --json "$OUT/$name-$set.json" > "$OUT/$name-$set.txt" 2>&1
  done
  [ -f "$OUT/$name-domain.txt" ] || OMP_NUM_THREADS=1 python -m diinn_napari.evaluate $(printf -- '--data %s ' $RGB_FILES) \
      --scales 2,3,4 --channels 3 --model "$w" --per-image --json "$OUT/$name-domain.json" > "$OUT/$name-domain.txt" 2>&1
done
