#!/usr/bin/env bash
# How the bundled default model was made: synthetic PCam-format data, then wsi-train. Run from any folder:
#   bash models/synthetic-pcam-cnn/recipe.sh DATA_DIR MODEL_DIR
# Writes DATA_DIR/slides/{train,valid,test} (synthetic slides + truth files), DATA_DIR/pcam (the three PCam
# HDF5 splits with meta CSVs; same code, same files: ~8 min on 2 cores) and trains MODEL_DIR (CPU, ~15 min).
set -euo pipefail
note="Trained on SYNTHETIC H&E-like patches only (wsi-synth; never real tissue): for demonstration and \
pipeline testing, not for diagnosis. For a real model, train on PCam with wsi-train or use a published one."
data=${1:?usage: recipe.sh DATA_DIR MODEL_DIR}
model=${2:?usage: recipe.sh DATA_DIR MODEL_DIR}
synth() { wsi-synth slides "$data/slides/$1" --count "$2" --width 8000 --height 6000 --mpp "$3" --seed "$4" \
    --diameter-um 30 "$5" --negative-fraction 0.25; }
synth train 12 0.5 12 1500
synth train 6 0.25 13 600
synth valid 4 0.5 2 1500
synth test 4 0.5 3 1500
wsi-synth patches "$data/slides/train" --out "$data/pcam" --split train --per-slide 1000 --seed 1
wsi-synth patches "$data/slides/valid" --out "$data/pcam" --split valid --per-slide 750 --seed 2
wsi-synth patches "$data/slides/test" --out "$data/pcam" --split test --per-slide 750 --seed 3
wsi-train "$data/pcam" --out "$model" --name synthetic-pcam-cnn --architecture compact_cnn \
    --arch-arg depth=4 --arch-arg width=8 --epochs 4 --patience 2 --seed 0 --note "$note"
wsi-eval --model "$model" "$data/pcam" --split test --tta --json "$model/test_metrics.json" --record test
