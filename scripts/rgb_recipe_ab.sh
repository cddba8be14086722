#!/usr/bin/env bash
# Issue 25: the RGB model's recipe A/B at equal CPU work (the same steps, the same per-step cost),
# each arm continuing the bundled RGB weights with the same schedule; then each arm scored like the
# bundled model (Set14, Set5, the RGB domain files; default consistency).
#
#   nice -n 19 bash scripts/rgb_recipe_ab.sh [DATA] [OUT]     (DATA: ../shared/data, OUT: runs/rgb-ab)
#
# Resumable: an arm with a finished marker is skipped, an interrupted arm continues (--resume).
set -u
cd "$(dirname "$0")/.."
D=${1:-../shared/data}; OUT=${2:-runs/rgb-ab}; STEPS=${STEPS:-400}
mkdir -p "$OUT"
# the files the bundled RGB model held aside, by name (so Set5/Set14 and these were never trained on)
HOLD=$(python -c "
from pathlib import Path; from diinn_napari.weights import read_metadata
print(' '.join(f'--hold-out {Path(f).stem}.*' for f in read_metadata('weights/diinn-rgb.safetensors')['val_files']))")
COMMON="--weights weights/diinn-rgb.safetensors --channels 3 --threads 1 --data $D/train/T91 --data $D/train/BSDS200
  $HOLD --val-fraction 0 --seed 3 --batch 8 --patch 32 --queries 1024 --preset scratch --train all
  --lr 1e-4 --warmup 50 --steps $STEPS --schedule cosine --ema 0.99 --loss charbonnier --val-every 200"
RGB_FILES="$D/domains/microscopy/xy_rgb__cells.tif $D/domains/microscopy/xyc_16bit__hela-cells.tif
  $D/domains/satellite/landsat7_RGB.byte.tif $D/domains/satellite/naip_m_4709963_se_14_1_20170827.tif
  $D/domains/satellite/landsat_timeseries_2005.tif"
arm() {  # arm NAME RECIPE-OPTIONS...
  local name=$1; shift
  if [ ! -f "$OUT/$name.finished" ]; then
    local resume=""; [ -f "$OUT/$name.state.pt" ] && resume="--resume"
    python -m diinn_napari.finetune $COMMON "$@" $resume --out "$OUT/$name.safetensors" >> "$OUT/$name.out" 2>&1
    case $? in 0|3) touch "$OUT/$name.finished" ;; *) echo "arm $name failed (see $OUT/$name.out)"; return 1 ;; esac
  fi
  local w="$OUT/$name.last.safetensors"
  for set in Set14 Set5; do
    [ -f "$OUT/$name-$set.txt" ] || python -m diinn_napari.evaluate --data "$D/benchmarks/$set" --scales 2,3,4 \
        --channels 3 --model "$w" --json "$OUT/$name-$set.json" > "$OUT/$name-$set.txt" 2>&1
  done
  [ -f "$OUT/$name-domain.txt" ] || python -m diinn_napari.evaluate $(printf -- '--data %s ' $RGB_FILES) \
      --scales 2,3,4 --channels 3 --model "$w" --per-image --json "$OUT/$name-domain.json" > "$OUT/$name-domain.txt" 2>&1
}
arm classic --recipe classic --scales 1-4 --aniso 0 --axial 0 --dark 0 --sparse 0 --jitter 0 --shot-noise 0
arm scientific --recipe scientific --axial 0
arm mix --recipe scientific --axial 0 --dark 0.1 --sparse 0.05 --jitter 0.1 --shot-noise 0.1 --aniso 0.1
