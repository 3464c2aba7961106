"""Which codec to send the SR stream back in: quality at the viewer against the encoder's CPU time.

``python -m srtc.tools.return_codec_bench [--clip CLIP] [--frames 90] [--uplink-kbps 600]
[--kbps 1500 2500 5000] [--model NAME] [--vmaf] [--markdown] [--json]``

The clip goes the way of ``srtc.training.evaluate``'s coded-video path (``load_clip``): each 720p frame after
the fade-in is reduced to 640x360 by 2x2 area averaging, coded as one real-time VP8 stream at
``--uplink-kbps`` (the sender), and decoded. From the decoded frames:

- **SR off** (forwarded): bicubic x2 of the decoded frames, what a viewer of the forwarded stream shows;
- **generator**: the model's output (:class:`srtc.server.engine.OnnxUpscaler`, Y through the network, U/V
  bicubic), before any encode: the most SR on can reach;
- **SR on**: that output through each return-codec candidate at each ``--kbps``, decoded as the viewer does:
  the product's :class:`srtc.server.encoder.ReturnVp8Encoder` (made as the server makes it, its viewer-link
  ceiling set to the rate), and libx264 through PyAV at presets ultrafast, superfast and veryfast with
  zerolatency, the baseline profile (constrained baseline: no B-frames, no CABAC, as WebRTC browsers
  negotiate), bitrate = maxrate and a 1 s buffer.

Every candidate runs on the same frames at 30 fps (the uplink's rate in ``evaluate``) with the thread count the
return encoder would pick on this machine (aiortc's ``number_of_threads``). Per candidate and rate: encode ms per
frame (wall and process CPU, medians), the bitrate it sent, PSNR-Y against the 720p original (2 px shaved),
its margin over SR off, and the share of the generator's own gain it keeps; ``--vmaf`` adds VMAF-NEG the same
way. The first :data:`WARMUP` frames (the keyframe, rate control settling) are left out of every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol, cast

import av
import numpy as np
from aiortc.codecs.vpx import number_of_threads

from srtc.server.encoder import OPTIONS, VIDEO_CLOCK, ReturnVp8Encoder, realtime_options
from srtc.server.engine import BicubicUpscaler, OnnxUpscaler
from srtc.shared import SHARED
from srtc.training import evaluate, imaging
from srtc.zoo import resolve

from .bench import cpu_flags, cpu_model

log = logging.getLogger(__name__)

CLIP = SHARED / "data" / "video" / "bbb_bunny_720p25_5s.mp4"
WARMUP = 4  # frames left out of every figure: the keyframe and the rate control settling
FPS = 30
FRAME_TICKS = int(1 / (VIDEO_CLOCK * FPS))  # 3000 ticks of the 90 kHz RTP clock per frame
X264_PRESETS = ("ultrafast", "superfast", "veryfast")
BUFFER_S = 1.0  # x264's VBV: about a second, as WebRTC's pacer tolerates


# ---------------------------------------------------------------- candidates


class ReturnCoder(Protocol):
    """One return stream: encodes frames (timed) and hands the viewer's decoder its bitstream (not timed)."""

    decoder: str

    def encode(self, frame: av.VideoFrame) -> list[bytes]: ...

    def bitstream(self, units: list[bytes]) -> bytes: ...


class Vp8Return:
    """The product's encoder as the server runs it: RTP payloads out, the viewer link's rate as its ceiling."""

    decoder = "libvpx"

    def __init__(self, bps: int) -> None:
        self.encoder = ReturnVp8Encoder()
        self.encoder.ceiling = lambda: bps

    def encode(self, frame: av.VideoFrame) -> list[bytes]:
        payloads, _ = self.encoder.encode(frame)
        return payloads

    def bitstream(self, units: list[bytes]) -> bytes:
        return self.encoder.encoded or b""  # the coded frame before packetisation


class X264Return:
    """libx264 configured as a WebRTC H.264 sender would be: no lookahead, no B-frames, a 1 s buffer."""

    decoder = "h264"

    def __init__(self, bps: int, preset: str) -> None:
        self.bps, self.preset = bps, preset
        self.codec: av.VideoCodecContext | None = None

    def encode(self, frame: av.VideoFrame) -> list[bytes]:
        if self.codec is None:  # opened on the first frame, as the VP8 encoder is
            self.codec = self._open(frame.width, frame.height)
        return [bytes(packet) for packet in self.codec.encode(frame)]

    def bitstream(self, units: list[bytes]) -> bytes:
        return b"".join(units)

    def _open(self, width: int, height: int) -> av.VideoCodecContext:
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.time_base, codec.framerate = VIDEO_CLOCK, Fraction(FPS, 1)
        codec.bit_rate = self.bps
        codec.gop_size = 3000  # as the VP8 encoder: keyframes only when asked for
        codec.max_b_frames = 0
        codec.thread_count = number_of_threads(width * height, multiprocessing.cpu_count())
        rate = str(self.bps)
        buffer = str(int(self.bps * BUFFER_S))
        codec.options = {
            "preset": self.preset,
            "tune": "zerolatency",
            "profile": "baseline",
            "maxrate": rate,
            "bufsize": buffer,
        }
        return codec


@dataclass(frozen=True)
class Candidate:
    """A return codec and its settings, opened afresh for each rate (bps)."""

    codec: str
    settings: str
    open: Callable[[int], ReturnCoder]


def vp8_candidate() -> Candidate:
    """The product's return encoder, described by the settings it opens libvpx with."""
    opts = {**realtime_options(1), **OPTIONS}
    used, noise = opts["cpu-used"], opts["noise-sensitivity"]
    return Candidate("VP8", f"ReturnVp8Encoder: realtime, cpu-used {used}, CBR, noise-sensitivity {noise}", Vp8Return)


def x264_candidate(preset: str) -> Candidate:
    return Candidate("H.264", f"libx264 {preset}, zerolatency, baseline, 1 s VBV", lambda bps: X264Return(bps, preset))


def candidates(presets: Sequence[str] = X264_PRESETS) -> list[Candidate]:
    return [vp8_candidate(), *(x264_candidate(p) for p in presets)]


# ---------------------------------------------------------------- frames


def decoded_frames(clip: evaluate.Clip) -> list[av.VideoFrame]:
    """The uplink's decoded frames as the server's decoder hands them over: yuv420p on the RTP clock."""
    frames = []
    for i, yuv in enumerate(clip.decoded_yuv):
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts, frame.time_base = i * FRAME_TICKS, VIDEO_CLOCK
        frames.append(frame)
    return frames


def luma(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="yuv420p")[: frame.height]


@dataclass
class Coded:
    """What one candidate did at one rate: per-frame encode times and the luma the viewer decoded."""

    wall_ms: list[float]
    cpu_ms: list[float]
    sent_bytes: list[int]
    decoded_y: list[np.ndarray]


def code(coder: ReturnCoder, frames: Sequence[av.VideoFrame]) -> Coded:
    """Encode ``frames`` one at a time (only the encode is timed), decoding each as it comes, as a viewer."""
    decoder = cast(av.VideoCodecContext, av.CodecContext.create(coder.decoder, "r"))  # a video decoder
    out = Coded([], [], [], [])
    for frame in frames:
        wall, cpu = time.perf_counter(), time.process_time()
        units = coder.encode(frame)
        out.wall_ms.append((time.perf_counter() - wall) * 1000.0)
        out.cpu_ms.append((time.process_time() - cpu) * 1000.0)
        data = coder.bitstream(units)
        out.sent_bytes.append(len(data))
        out.decoded_y.extend(luma(f) for f in decoder.decode(av.Packet(data)))
    out.decoded_y.extend(luma(f) for f in decoder.decode(None))
    if len(out.decoded_y) != len(frames):
        raise RuntimeError(f"{coder.decoder}: {len(frames)} frames encoded, {len(out.decoded_y)} decoded")
    return out


# ---------------------------------------------------------------- scores


def quality(hr_y: Sequence[np.ndarray], ys: Sequence[np.ndarray], with_vmaf: bool) -> dict[str, float]:
    """Mean PSNR-Y (``evaluate``'s shave) and, with ``with_vmaf``, VMAF-NEG, on the frames after the warm-up."""
    refs, dist = list(hr_y[WARMUP:]), list(ys[WARMUP:])
    scores = {"psnr_y": float(np.mean([imaging.psnr(d, r, evaluate.SHAVE) for d, r in zip(dist, refs)]))}
    if with_vmaf:
        from srtc.training.vmaf import vmaf

        scores["vmaf_neg"] = float(vmaf(refs, dist)["vmaf_neg"])
    return scores


def against(scores: dict[str, float], off: dict[str, float], generator: dict[str, float]) -> dict[str, float | None]:
    """Each score's margin over SR off and the share of the generator's own gain it keeps (None: no gain)."""
    out: dict[str, float | None] = {}
    for key, value in scores.items():
        margin, gain = value - off[key], generator[key] - off[key]
        out[f"{key}_margin"] = round(margin, 3)
        out[f"{key}_kept"] = round(margin / gain, 2) if gain > 0 else None
    return out


def timing(coded: Coded) -> dict[str, float]:
    """Median encode ms (wall and process CPU) and the sent bitrate, after the warm-up."""
    sent = coded.sent_bytes[WARMUP:]
    return {
        "encode_ms_p50": round(statistics.median(coded.wall_ms[WARMUP:]), 2),
        "cpu_ms_p50": round(statistics.median(coded.cpu_ms[WARMUP:]), 2),
        "sent_kbps": round(sum(sent) * 8 * FPS / len(sent) / 1000.0),
    }


# ---------------------------------------------------------------- the run


def machine() -> dict:
    """The CPU every figure was measured on: ``lscpu``'s model, its SIMD flags, the cores."""
    return {"model": cpu_model(), "flags": cpu_flags(), "cores": multiprocessing.cpu_count()}


def run(
    clip_path: Path,
    frames: int,
    uplink_kbps: float,
    rates_kbps: Sequence[int],
    choices: Sequence[Candidate],
    with_vmaf: bool = False,
    model: str | None = None,
) -> dict:
    """The whole comparison on one clip: SR off, the generator, then every candidate at every rate."""
    if frames <= WARMUP:
        raise ValueError(f"--frames must be above the {WARMUP}-frame warm-up, got {frames}")
    log.info("%s: %d frames to 640x360, VP8 at %g kbps, decoded", clip_path, frames, uplink_kbps)
    clip = evaluate.load_clip(clip_path, frames, "vp8", uplink_kbps)
    uplink = evaluate.clip_summary(clip)
    small = decoded_frames(clip)
    off = quality(clip.hr_y, [BicubicUpscaler().upscale_luma(y) for y in clip.decoded_y], with_vmaf)
    generator = OnnxUpscaler(resolve(model), threads=multiprocessing.cpu_count())
    log.info("SR off (forwarded, bicubic at the viewer): PSNR-Y %.2f dB; running %s", off["psnr_y"], generator.name)
    sr = [generator.upscale(f) for f in small]
    best = quality(clip.hr_y, [luma(f) for f in sr], with_vmaf)
    log.info("generator before encode: PSNR-Y %.2f dB", best["psnr_y"])
    rows = []
    for kbps in rates_kbps:
        for candidate in choices:
            coded = code(candidate.open(kbps * 1000), sr)
            scores = quality(clip.hr_y, coded.decoded_y, with_vmaf)
            row = {"codec": candidate.codec, "settings": candidate.settings, "kbps": kbps, **timing(coded)}
            row.update({**{k: round(v, 3) for k, v in scores.items()}, **against(scores, off, best)})
            rows.append(row)
            log.info("%-5s %-50s %5d kbps (sent %5d): %6.2f ms, PSNR-Y %.2f dB (%+.2f over SR off, kept %s)",
                     row["codec"], row["settings"], kbps, row["sent_kbps"], row["encode_ms_p50"], row["psnr_y"],
                     row["psnr_y_margin"], row["psnr_y_kept"])  # fmt: skip
    return {
        "cpu": machine(),
        "clip": str(clip_path),
        "start_frame": clip.start,
        "frames": frames,
        "scored_frames": frames - WARMUP,
        "fps": FPS,
        "uplink_kbps": uplink_kbps,
        "uplink_lr_psnr_y": round(uplink["decoded_lr_psnr"], 2),
        "model": generator.name,
        "sr_off": {k: round(v, 3) for k, v in off.items()},
        "generator": {k: round(v, 3) for k, v in best.items()},
        "rows": rows,
    }


# ---------------------------------------------------------------- output


def _cell(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    """The table as docs/VIEWER.md has it, the CPU and the references above it."""
    cpu = result["cpu"]
    vmaf = "vmaf_neg" in result["sr_off"]
    off, best = result["sr_off"], result["generator"]
    lines = [
        f"CPU: {cpu['model']}, {cpu['cores']} cores, flags {' '.join(cpu['flags']) or 'none of avx2/avx512/vnni'}",
        f"Clip: {Path(result['clip']).name}, {result['scored_frames']} frames scored (from frame "
        f"{result['start_frame'] + WARMUP}), uplink VP8 {result['uplink_kbps']:g} kbps; model {result['model']}",
        f"SR off (forwarded, bicubic at the viewer): PSNR-Y {off['psnr_y']:.2f} dB"
        + (f", VMAF-NEG {off['vmaf_neg']:.2f}" if vmaf else ""),
        f"Generator before encode: PSNR-Y {best['psnr_y']:.2f} dB"
        + (f", VMAF-NEG {best['vmaf_neg']:.2f}" if vmaf else ""),
        "",
        "| codec | settings | kbps | sent kbps | encode ms p50 | CPU ms p50 | PSNR-Y | margin dB (kept) |"
        + (" VMAF-NEG | margin (kept) |" if vmaf else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if vmaf else ""),
    ]
    for r in result["rows"]:
        line = (
            f"| {r['codec']} | {r['settings']} | {r['kbps']} | {r['sent_kbps']} | {r['encode_ms_p50']:.2f} | "
            f"{r['cpu_ms_p50']:.2f} | {r['psnr_y']:.2f} | {r['psnr_y_margin']:+.2f} "
            f"({_cell(r['psnr_y_kept'], '.2f')}) |"
        )
        if vmaf:
            line += f" {r['vmaf_neg']:.2f} | {r['vmaf_neg_margin']:+.2f} ({_cell(r['vmaf_neg_kept'], '.2f')}) |"
        lines.append(line)
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m srtc.tools.return_codec_bench",
        description="the SR stream's return codec, chosen by quality at the viewer per encode millisecond",
    )
    ap.add_argument("--clip", type=Path, default=CLIP, help="a 720p clip (default: %(default)s)")
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--uplink-kbps", type=float, default=600.0, help="the sender's VP8 rate at 640x360")
    ap.add_argument("--kbps", type=int, nargs="+", default=[1500, 2500, 5000], help="the viewer link's rates")
    ap.add_argument("--model", default=None, help="the generator (default: the manifest's default)")
    ap.add_argument("--vmaf", action="store_true", help="add VMAF-NEG (libvmaf, pip install -e '.[vmaf]')")
    ap.add_argument("--markdown", action="store_true", help="print the table as docs/VIEWER.md has it")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cpu = machine()
    log.info("CPU %s, %d cores, %s", cpu["model"], cpu["cores"], " ".join(cpu["flags"]))
    result = run(args.clip, args.frames, args.uplink_kbps, args.kbps, candidates(), args.vmaf, args.model)
    if args.markdown:
        sys.stdout.write(markdown(result) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
