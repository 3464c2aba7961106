"""aiortc's VP8 settings against the return encoder's (:mod:`srtc.server.encoder`), on the same 720p frames.

``python -m srtc.tools.encoder_bench [--frames 60] [--kbps 500 1500] [--json]`` encodes real frames,
bicubic x2 as the SR track sends them, with both encoders at each bitrate, decodes the payloads, and
prints the encode time and the decoded PSNR-Y of each, side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np
from aiortc.codecs.vpx import Vp8Encoder, VpxPayloadDescriptor

from srtc.server.encoder import OPTIONS, ReturnVp8Encoder
from srtc.server.engine import BicubicUpscaler

from .bench_frames import load_frames

log = logging.getLogger(__name__)


def measure(encoder: Vp8Encoder, frames: Sequence[av.VideoFrame]) -> dict:
    """Encode ``frames`` as a sender would, decode the payloads; encode ms per frame and PSNR-Y of the result.

    The first 4 frames (the keyframe and the rate control settling) are left out of both figures.
    """
    decoder = av.CodecContext.create("libvpx", "r")
    times, scores = [], []
    for frame in frames:
        started = time.perf_counter()
        payloads, _ = encoder.encode(frame)
        times.append((time.perf_counter() - started) * 1000.0)
        data = b"".join(VpxPayloadDescriptor.parse(p)[1] for p in payloads)
        for out in decoder.decode(av.Packet(data)):
            a = out.to_ndarray(format="gray").astype(np.float64)
            b = frame.to_ndarray(format="gray").astype(np.float64)
            scores.append(10.0 * np.log10(255.0**2 / max(float(np.mean((a - b) ** 2)), 1e-10)))
    return {
        "encode_ms_p50": round(statistics.median(times[4:]), 2),
        "psnr_y": round(float(np.mean(scores[4:])), 2),
        "frames": len(frames),
    }


def upscaled_frames(count: int) -> tuple[list[av.VideoFrame], str]:
    """Real 640x360 frames (the bench's BBB clip or the page's samples), bicubic x2: what the SR track sends."""
    small, source = load_frames(count)
    bicubic = BicubicUpscaler()
    frames = []
    for i, frame in enumerate(small):
        big = bicubic.upscale(frame)
        big.pts, big.time_base = i * 3000, Fraction(1, 90000)
        frames.append(big)
    return frames, source


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m srtc.tools.encoder_bench",
        description="aiortc's VP8 settings against the return encoder's, on the same 720p frames",
    )
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument(
        "--kbps",
        type=int,
        nargs="+",
        default=[500, 1500],
        help="CBR targets (the return encoder clamps them to its 720p limits, srtc.server.return_rate)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    frames, source = upscaled_frames(args.frames)
    rows = []
    for kbps in args.kbps:
        for name, make in (("aiortc", Vp8Encoder), ("return", ReturnVp8Encoder)):
            encoder = make()
            encoder.target_bitrate = kbps * 1000
            row = {"encoder": name, "kbps": kbps, **measure(encoder, frames)}
            rows.append(row)
            log.info(
                "%-7s %5d kbps: encode %6.2f ms p50, decoded PSNR-Y %.2f dB",
                name,
                kbps,
                row["encode_ms_p50"],
                row["psnr_y"],
            )
    result = {"source": source, "size": "1280x720", "options": OPTIONS, "rows": rows}
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
