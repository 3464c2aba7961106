"""How much could a multi-frame model add? What the previous decoded frame knows that the current one does not.

``python -m srtc.training.codec_noise --video CLIP [--codec vp8 --kbps 400 --frames 60] [--json]``

A per-frame generator sees one decoded frame. A temporal model would also see the one before; that only
helps where the two frames' codec errors differ. This measures, on a clip through the real codec
(``srtc.training.evaluate.load_clip``), at LR resolution against the encoder's input:

- the decoded frame's PSNR;
- the error correlation between consecutive decoded frames on the pixels where the source did not change
  (the share of such pixels is reported too), and on all pixels after aligning the previous frame to the
  current one with dense optical flow (OpenCV Farneback on the decoded frames, as a receiver could; the
  source's previous frame is moved by the same flow, so "agrees" means agrees after that alignment);
- the share of pixels where the source agrees with its previous frame (raw, and aligned);
- an oracle bound: the PSNR after averaging each pixel with the previous decoded frame (raw, or aligned)
  wherever the *source* says the two agree (within one level). A model cannot pick those pixels better than
  the source itself does, nor average better than equal weights for two equally noisy readings, so this is
  a generous ceiling on what fusing two frames could buy before any upscaling.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

from .evaluate import Clip, check_codec, load_clip
from .quality import mse_to_psnr

log = logging.getLogger(__name__)

AGREE = 1.0  # source levels within which two frames count as showing the same thing


def flow(current: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Farneback flow from ``current`` to ``previous`` (uint8 planes): where each pixel was a frame ago."""
    return cv2.calcOpticalFlowFarneback(current, previous, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def warp(previous: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """``previous`` moved onto the current frame by ``flow(current, previous)``."""
    h, w = previous.shape
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(
        previous, grid_x + motion[..., 0], grid_y + motion[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if a.size > 100 and a.std() > 0 and b.std() > 0 else float("nan")


def measure(clip: Clip) -> dict:
    """The figures above, averaged over the clip's consecutive frame pairs (MSEs averaged before dB)."""
    mse: dict[str, list[np.floating]] = {"decoded": [], "fused_static": [], "fused_aligned": []}
    share, share_aligned, corr_static, corr_aligned = [], [], [], []
    for t in range(1, len(clip.decoded_y)):
        src, src0 = clip.lr_y[t].astype(np.float64), clip.lr_y[t - 1].astype(np.float64)
        dec, dec0 = clip.decoded_y[t].astype(np.float64), clip.decoded_y[t - 1].astype(np.float64)
        err = dec - src
        static = np.abs(src - src0) < AGREE
        share.append(float(static.mean()))
        corr_static.append(correlation(err[static], (dec0 - src0)[static]))
        motion = flow(clip.decoded_y[t], clip.decoded_y[t - 1])  # what a receiver can see; the source follows it
        warped_dec0 = warp(clip.decoded_y[t - 1], motion).astype(np.float64)
        warped_src0 = warp(clip.lr_y[t - 1], motion).astype(np.float64)
        agree = np.abs(warped_src0 - src) < AGREE
        share_aligned.append(float(agree.mean()))
        corr_aligned.append(correlation(err[agree], (warped_dec0 - warped_src0)[agree]))
        mse["decoded"].append(np.mean(err**2))
        mse["fused_static"].append(np.mean((np.where(static, (dec + dec0) / 2, dec) - src) ** 2))
        mse["fused_aligned"].append(np.mean((np.where(agree, (dec + warped_dec0) / 2, dec) - src) ** 2))
    out = {f"psnr_{k}": round(mse_to_psnr(float(np.mean(v))), 3) for k, v in mse.items()}
    out.update(
        {
            "static_share": round(float(np.mean(share)), 3),
            "aligned_share": round(float(np.mean(share_aligned)), 3),
            "error_correlation_static": round(float(np.nanmean(corr_static)), 3),
            "error_correlation_aligned": round(float(np.nanmean(corr_aligned)), 3),
            "pairs": len(clip.decoded_y) - 1,
        }
    )
    out["bound_gain_static_db"] = round(out["psnr_fused_static"] - out["psnr_decoded"], 3)
    out["bound_gain_aligned_db"] = round(out["psnr_fused_aligned"] - out["psnr_decoded"], 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", required=True, help="a 720p clip")
    ap.add_argument("--codec", choices=("vp8", "h264"), default="vp8")
    ap.add_argument("--kbps", type=float, default=400.0)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.frames < 2:
        raise SystemExit("--frames must be at least 2")
    check_codec(args.codec)
    try:
        clip = load_clip(Path(args.video), args.frames, args.codec, args.kbps)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from err
    result = {"video": Path(args.video).name, "codec": args.codec, "kbps": args.kbps, **measure(clip)}
    for key, value in result.items():
        log.info("%-28s %s", key, value)
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    return result


if __name__ == "__main__":
    main()
