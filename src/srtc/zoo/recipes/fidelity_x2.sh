#!/usr/bin/env bash
# How fidelity_x2 was made. Run from the checkout's root with the train extra installed and ../shared
# beside it; the data and the published teacher it names are described in ../shared/data/SOURCES.md.
set -euo pipefail

python -m srtc.training.train --data ../shared/data/train --val ../shared/data/benchmarks/Set5 --out runs/fidelity_x2_parent --steps 90000 --seed 0 --full-res --reparam --widths 16,16,16,16,16,16 --patch 64 --batch 16 --lr 2e-3 --min-lr 1e-6 --val-every 10000 --save-every 1000 --threads 1 --teacher ../shared/peers/etds/ETDS_M7C48_x2.pth --teacher-weight 0.5
cp runs/fidelity_x2_parent/last.pt checkpoints/fidelity_x2_parent.pt
python -m srtc.training.grow --ckpt checkpoints/fidelity_x2_parent.pt --out runs/fidelity_x2_grown/init.pt
python -m srtc.training.train --data ../shared/data/train --val ../shared/data/benchmarks/Set5 --out runs/fidelity_x2 --minutes 105 --seed 7 --full-res --reparam --widths 16,16,16,16,16,16,16 --patch 64 --batch 16 --lr 5e-4 --min-lr 1e-6 --val-every 5000 --save-every 1000 --threads 1 --teacher ../shared/peers/etds/ETDS_M7C48_x2.pth --teacher-weight 0.5 --init runs/fidelity_x2_grown/init.pt
cp runs/fidelity_x2/last.pt checkpoints/fidelity_x2.pt
python -m srtc.training.export --ckpt checkpoints/fidelity_x2.pt --name fidelity_x2 --out src/srtc/zoo/fidelity_x2.onnx --description 'The fidelity model: a 14,660-parameter full-resolution generator, distilled from ETDS-M7C48; the highest PSNR here, too slow for 30 fps beside the codecs on 2 cores.'
