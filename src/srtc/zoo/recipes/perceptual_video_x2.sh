#!/usr/bin/env bash
# How perceptual_video_x2 was made. Run from the checkout's root with the train extra installed and ../shared
# beside it; the data and the published teacher it names are described in ../shared/data/SOURCES.md.
set -euo pipefail

python -m srtc.training.degrade --images ../shared/data/train --videos ../shared/data/video/bbb_opening_720p24_00-15s.webm --out cache/codec_vid --pairs 3000 --seed 1 --min-kbps 200 --max-kbps 1000 --clean-share 0.1 --video-share 0.3
python -m srtc.training.train --pairs cache/codec_vid --val ../shared/data/benchmarks/Set5 --out runs/perceptual_video_x2_stage1 --steps 20000 --seed 0 --widths 32,16,16,16 --reparam --patch 64 --batch 32 --lr 1e-3 --min-lr 1e-5 --save-every 2000 --val-every 5000 --threads 1 --init checkpoints/fidelity_fast_x2.pt --temporal 2
python -m srtc.training.gan --init runs/perceptual_video_x2_stage1/last.pt --pairs cache/codec_vid --val ../shared/data/benchmarks/Set5 --out runs/perceptual_video_x2 --steps 2500 --seed 0 --patch 64 --batch 16 --adv 0.05 --artifact 10000 --temporal 8 --val-every 500 --save-every 500 --threads 1
cp runs/perceptual_video_x2/last.pt checkpoints/perceptual_video_x2.pt
python -m srtc.training.export --ckpt checkpoints/perceptual_video_x2.pt --name perceptual_video_x2 --out src/srtc/zoo/perceptual_video_x2.onnx --default --description 'The default: a 12,768-parameter quarter-resolution generator, trained on VP8/H.264-coded video pairs, then GAN-tuned for detail that survives the codec.'
