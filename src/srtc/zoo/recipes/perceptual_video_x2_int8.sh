#!/usr/bin/env bash
# How perceptual_video_x2_int8 was made. Run from the checkout's root with the train extra installed and ../shared
# beside it; the data and the published teacher it names are described in ../shared/data/SOURCES.md.
set -euo pipefail
# cache/codec_vid: the coded-video pairs made by the first step of perceptual_video_x2.sh

python -m srtc.training.qat --ckpt checkpoints/perceptual_video_x2.pt --base perceptual_video_x2 --pairs cache/codec_vid --target teacher --out runs/qat_video_gan --steps 6000 --seed 0 --lr 2e-5 --range-lr 2e-4 --val-every 1000 --threads 1 --export src/srtc/zoo/perceptual_video_x2_int8.onnx --images ../shared/data/benchmarks/Set5 ../shared/data/benchmarks/Set14 --register-fallback
