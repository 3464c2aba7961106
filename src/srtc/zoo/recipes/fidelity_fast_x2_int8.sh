#!/usr/bin/env bash
# How fidelity_fast_x2_int8 was made. Run from the checkout's root with the train extra installed and ../shared
# beside it; the data and the published teacher it names are described in ../shared/data/SOURCES.md.
set -euo pipefail

python -m srtc.training.qat --ckpt checkpoints/fidelity_fast_x2.pt --base fidelity_fast_x2 --out runs/qat_v2 --steps 6000 --seed 2 --lr 2e-5 --range-lr 2e-4 --val-every 1000 --threads 1 --export src/srtc/zoo/fidelity_fast_x2_int8.onnx --images ../shared/data/benchmarks/Set5 ../shared/data/benchmarks/Set14 --register-fallback
