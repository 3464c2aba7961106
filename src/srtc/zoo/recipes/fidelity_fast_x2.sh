#!/usr/bin/env bash
# How fidelity_fast_x2 was made. Run from the checkout's root with the train extra installed and ../shared
# beside it; the data and the published teacher it names are described in ../shared/data/SOURCES.md.
set -euo pipefail

python -m srtc.training.train --data ../shared/data/train --val ../shared/data/benchmarks/Set5 --out runs/fidelity_fast_x2 --steps 240000 --seed 0 --widths 32,16,16,16 --reparam --patch 64 --batch 32 --lr 2e-3 --min-lr 1e-5 --save-every 500 --threads 1
# the run above was stopped at step 23500 and resumed with:
python -m srtc.training.train --data ../shared/data/train --val ../shared/data/benchmarks/Set5 --out runs/fidelity_fast_x2 --steps 150000 --seed 0 --widths 32,16,16,16 --reparam --patch 64 --batch 32 --lr 2e-3 --min-lr 1e-5 --save-every 500 --threads 1 --resume
python -m srtc.training.export --ckpt runs/fidelity_fast_x2/last.pt --name fidelity_fast_x2 --out src/srtc/zoo/fidelity_fast_x2.onnx --description 'A real-time fidelity generator (12,768 parameters, quarter resolution, L1 on clean pairs): the stage-1 start of the default'"'"'s training.'
cp runs/fidelity_fast_x2/last.pt checkpoints/fidelity_fast_x2.pt  # the start of perceptual_video_x2 and of fidelity_fast_x2_int8
