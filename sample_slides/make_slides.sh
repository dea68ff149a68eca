#!/usr/bin/env bash
# Synthetic slides with ground truth. `make_slides.sh` re-makes the bundled sample beside this script;
# `make_slides.sh large OUT` writes a 100,000 × 80,000 px slide (0.25 µm/px, levels 1/4/16) into OUT.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [[ "${1:-}" == large ]]; then
    wsi-synth slides "${2:?usage: make_slides.sh large OUT}" --count 1 --width 100000 --height 80000 --mpp 0.25 \
        --seed 100 --negative-fraction 0 --max-metastases 4 --diameter-um 50 5000 --prefix large-node
else
    wsi-synth slides "$here" --count 1 --width 6000 --height 4500 --mpp 0.5 --seed 19 --negative-fraction 0 \
        --max-metastases 2 --diameter-um 700 1500 --prefix synthetic-node --workers 1
fi
