"""PSNR-Y of a model and of bicubic upscaling on benchmark folders (the usual SR protocol).

``python -m models.evaluate --model NAME_OR_PATH --images DIR [DIR...] [--json]``

Protocol, per image (see ``models.imaging`` for the conventions):
- HR is cropped to even size; LR = PIL bicubic downscale of the HR RGB, kept as uint8 RGB.
- Model: input is the LR's Y rounded to uint8 (what a decoder gives), /255; its output is
  clipped and rounded to 0..255 (what gets displayed) and compared with the HR's Y.
- Bicubic: the LR RGB is upscaled with PIL BICUBIC (uint8 RGB), then converted to Y.
- PSNR on Y (0..255 scale, HR Y unrounded), 2 px shaved at each border, averaged per folder.
The model runs through onnxruntime, as in the server.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import imaging
from models.manifest import resolve

log = logging.getLogger(__name__)

SCALE = 2
SHAVE = 2

Upscaler = Callable[[np.ndarray], np.ndarray]
"""Maps LR luma uint8 [h,w] to SR luma float [2h,2w] on the 0..1 scale."""


@dataclass
class Sample:
    """One benchmark image prepared once: model input, target, and bicubic baseline."""

    name: str
    lr_y: np.ndarray  # uint8 [h, w]
    hr_y: np.ndarray  # float64 [2h, 2w], 0..255
    bicubic_y: np.ndarray  # float64 [2h, 2w], 0..255


def load_samples(folder: str | Path) -> list[Sample]:
    """Prepare every image of ``folder`` under the protocol."""
    samples = []
    for path in imaging.list_images(folder):
        hr = imaging.crop_to_multiple(imaging.load_image(path), SCALE)
        lr = imaging.downscale(hr, SCALE)
        samples.append(Sample(path.stem, imaging.luma_u8(lr), imaging.luma(hr),
                              imaging.luma(imaging.upscale(lr, SCALE))))
    return samples


def to_display(sr: np.ndarray) -> np.ndarray:
    """0..1 float output to the 0..255 levels that would be displayed."""
    return np.rint(np.clip(sr * 255.0, 0.0, 255.0))


def evaluate(samples: list[Sample], upscale: Upscaler) -> dict:
    """Per-image and mean PSNR-Y of ``upscale`` and of bicubic."""
    rows = []
    for s in samples:
        sr = to_display(upscale(s.lr_y))
        if sr.shape != s.hr_y.shape:
            raise ValueError(f"{s.name}: output {sr.shape}, expected {s.hr_y.shape}")
        rows.append({"image": s.name, "model": imaging.psnr(sr, s.hr_y, SHAVE),
                     "bicubic": imaging.psnr(s.bicubic_y, s.hr_y, SHAVE)})
    return {"model": float(np.mean([r["model"] for r in rows])),
            "bicubic": float(np.mean([r["bicubic"] for r in rows])),
            "images": rows}


def onnx_upscaler(path: str | Path, threads: int = 2) -> Upscaler:
    """Run an ONNX model under the contract (input "lr" [1,1,h,w] luma/255)."""
    from models.speed import make_session

    sess = make_session(path, threads)

    def run(lr_y: np.ndarray) -> np.ndarray:
        x = (lr_y.astype(np.float32) / 255.0)[None, None]
        return sess.run(["sr"], {"lr": x})[0][0, 0]

    return run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="manifest name or .onnx path (default: manifest default)")
    ap.add_argument("--images", nargs="+", required=True, help="benchmark folders")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout at the end")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    path = resolve(args.model)
    upscale = onnx_upscaler(path, args.threads)
    log.info("model %s (%s); PSNR-Y in dB, x%d, shave %d", args.model or "default", path, SCALE, SHAVE)
    log.info("%-12s %7s %9s %9s %7s", "folder", "images", "model", "bicubic", "gain")
    results = {}
    for folder in args.images:
        r = evaluate(load_samples(folder), upscale)
        name = Path(folder).name
        results[name] = {"images": len(r["images"]), "model": round(r["model"], 3),
                         "bicubic": round(r["bicubic"], 3)}
        log.info("%-12s %7d %9.3f %9.3f %+7.3f", name, len(r["images"]), r["model"], r["bicubic"],
                 r["model"] - r["bicubic"])
    if args.json:
        sys.stdout.write(json.dumps({"model": str(args.model or "default"), "file": str(path),
                                     "scale": SCALE, "shave": SHAVE, "results": results}) + "\n")


if __name__ == "__main__":
    main()
