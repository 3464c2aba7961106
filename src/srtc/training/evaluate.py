"""Quality of a model against bicubic (and published peers): clean x2 benchmarks and the real codec path.

``python -m srtc.training.evaluate --model NAME_OR_PATH [--compare NAME_OR_PATH...] --images DIR [DIR...]
[--video CLIP --codec vp8|h264 --kbps N --frames N [--vmaf] [--targets]] [--pan DIR] [--peers DIR] [--json]
[--json-out FILE]``

``--compare`` scores more models on the very same images and decoded frames (libvpx's real-time mode
does not encode a clip exactly alike twice, so separate runs differ by a few hundredths of a dB).

Clean x2 benchmarks (``--images``), per image (see ``srtc.training.imaging`` for the conventions):
- HR is cropped to even size (MATLAB ``modcrop``); LR = antialiased bicubic downscale of the HR RGB
  (PIL BICUBIC, which matches MATLAB ``imresize``), kept as uint8 RGB.
- Model: input is the LR's Y rounded to uint8 (what a decoder gives), /255; its output is clipped and
  rounded to 0..255 (what gets displayed) and compared with the HR's Y (BT.601 limited range, unrounded).
- Bicubic: the LR RGB is upscaled with PIL BICUBIC (uint8 RGB), then converted to Y.
- Metrics on Y (0..255), 2 px shaved at each border, mean over the folder's images:
  PSNR; SSIM (Wang et al., Gaussian 11x11, sigma 1.5); down-sampling consistency (SR downscaled by
  the same PIL bicubic vs the LR Y, 1 LR px shaved); gradient statistics (mean Sobel magnitude ratio
  SR/HR, and L1 distance of the magnitude histograms). Definitions in ``srtc.training.quality``.

Codec path (``--video``), as the product sees it: each 1280x720 frame of the clip (after the leading
near-black fade-in, luma std < 20, unless ``--start`` is given) is downscaled to 640x360 by 2x2 area
averaging (``--kernel``; what a sender's scaler does), encoded as one real-time stream at ``--kbps``
and 30 fps (VP8: libvpx deadline=realtime cpu-used 6, no lag; H.264: libx264 ultrafast, zerolatency,
baseline; first frame only a keyframe; ``srtc.training.degrade``'s encoder), decoded, upscaled x2 by the model
(and by PIL bicubic on the decoded Y), and compared with the original frame's Y (BT.601 limited range,
rounded to uint8, as in ``srtc.training.degrade``'s pairs): PSNR and SSIM per frame (2 px shave), averaged;
gradient statistics; temporal consistency (``srtc.training.quality.temporal_psnr``: PSNR of
(SR_t - SR_t-1) - (HR_t - HR_t-1), pooled over all consecutive pairs; higher = frame-to-frame change
reproduced more faithfully, less flicker). ``decoded_lr_psnr`` is the codec's own loss on the LR.

Panned clips (``--pan DIR``): each image of DIR (cropped to at most 1280x720) panned 4 / 2 HR px per
frame into a ``--pan-frames`` clip, then the codec path above, each clip its own stream at the bits per
pixel ``--kbps`` gives 640x360; figures are means over the clips. Coded video of other content than the
film clips (one of which trains the video-aware models).

Targets (``--targets``): at each coded point, the ``--model``'s margins against ``TARGETS``: VMAF-NEG
>= +4.0 over bicubic and >= +1.5 over the best compared fidelity model (kind "fidelity" in the manifest),
PSNR-Y >= +0.1 dB over bicubic, temporal PSNR no worse than bicubic's; each line says met or missed, and
whether the model is at least ordered above each reference. ``srtc.training.gain_plot`` draws a grid's
margins against bitrate from the JSON (``--json-out``).

Models and peers run through onnxruntime (srtc.runtime), as in the server. ``--peers``
adds the published models built by ``srtc.training.peers`` to every table; unrunnable ones are listed with
the reason. ``--json`` prints one JSON object on stdout at the end; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from srtc.runtime import LumaRunner
from srtc.zoo import resolve

from . import imaging, quality
from .errors import ConfigError

log = logging.getLogger(__name__)

SCALE = 2
SHAVE = 2
LR_SHAVE = SHAVE // SCALE
MIN_LUMA_STD = 20.0  # a frame flatter than this is a fade or a fill, not content
VIDEO_CODECS = {"vp8": ("libvpx", "6"), "h264": ("libx264", "ultrafast")}  # name -> (encoder, speed)
PAN_PX = (4, 2)  # HR px per frame for --pan clips: 2 / 1 LR px, a slow diagonal camera move
METRICS = ("psnr", "ssim", "ds_psnr", "grad_ratio", "grad_hist_l1", "flat_noise")
# The perceptual-quality targets (``--targets``) for the --model on each coded point: (metric, against, margin).
# "fidelity" is the best of the compared models the manifest lists as kind "fidelity", by VMAF-NEG at that point.
TARGETS = (
    ("vmaf_neg", "bicubic", 4.0),
    ("vmaf_neg", "fidelity", 1.5),
    ("psnr", "bicubic", 0.1),
    ("tpsnr", "bicubic", 0.0),
)

Upscaler = Callable[[np.ndarray], np.ndarray]
"""Maps LR luma uint8 [h,w] to SR luma float [2h,2w] on the 0..1 scale."""


@dataclass
class Sample:
    """One benchmark image prepared once: model input, target, and bicubic baseline."""

    name: str
    lr_y: np.ndarray  # uint8 [h, w]
    hr_y: np.ndarray  # float64 [2h, 2w], 0..255
    bicubic_y: np.ndarray  # float64 [2h, 2w], 0..255
    bicubic_metrics: dict | None = field(default=None, repr=False)  # filled on first full evaluation


def load_samples(folder: str | Path) -> list[Sample]:
    """Prepare every image of ``folder`` under the protocol."""
    samples = []
    for path in imaging.list_images(folder):
        hr = imaging.crop_to_multiple(imaging.load_image(path), SCALE)
        lr = imaging.downscale(hr, SCALE)
        samples.append(
            Sample(path.stem, imaging.luma_u8(lr), imaging.luma(hr), imaging.luma(imaging.upscale(lr, SCALE)))
        )
    return samples


def to_display(sr: np.ndarray) -> np.ndarray:
    """0..1 float output to the 0..255 levels that would be displayed."""
    return np.rint(np.clip(sr * 255.0, 0.0, 255.0))


def image_metrics(sr: np.ndarray, hr: np.ndarray, lr: np.ndarray) -> dict:
    """All clean-benchmark metrics of one displayed SR luma image (see the module docstring)."""
    return {
        "psnr": imaging.psnr(sr, hr, SHAVE),
        "ssim": quality.ssim(sr, hr, SHAVE),
        "ds_psnr": quality.downsample_psnr(sr, lr, LR_SHAVE, SCALE),
        **quality.gradient_stats(sr, hr, SHAVE),
        "flat_noise": quality.flat_noise(sr, hr, SHAVE),
    }


def mean_metrics(rows: list[dict]) -> dict:
    """Per-key mean over images (dB averaged as dB, as SR tables do); NaN (no flat area) is skipped."""
    with warnings.catch_warnings():  # a metric NaN in every row stays NaN, without a warning per call
        warnings.simplefilter("ignore", RuntimeWarning)
        return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def evaluate(samples: list[Sample], upscale: Upscaler, full: bool = False) -> dict:
    """Per-image and mean PSNR-Y of ``upscale`` and of bicubic; ``full`` adds every metric.

    The PSNR-only default is what training validation calls at every check, so it stays cheap.
    With ``full``, the result also has ``metrics`` ({"model": means, "bicubic": means}) and each
    image row has ``metrics`` of both.
    """
    rows: list[dict] = []
    for s in samples:
        sr = to_display(upscale(s.lr_y))
        if sr.shape != s.hr_y.shape:
            raise ValueError(f"{s.name}: output {sr.shape}, expected {s.hr_y.shape}")
        row = {
            "image": s.name,
            "model": imaging.psnr(sr, s.hr_y, SHAVE),
            "bicubic": imaging.psnr(s.bicubic_y, s.hr_y, SHAVE),
        }
        if full:
            if s.bicubic_metrics is None:
                s.bicubic_metrics = image_metrics(s.bicubic_y, s.hr_y, s.lr_y)
            row["metrics"] = {"model": image_metrics(sr, s.hr_y, s.lr_y), "bicubic": s.bicubic_metrics}
        rows.append(row)
    result = {
        "model": float(np.mean([r["model"] for r in rows])),
        "bicubic": float(np.mean([r["bicubic"] for r in rows])),
        "images": rows,
    }
    if full:
        result["metrics"] = {who: mean_metrics([r["metrics"][who] for r in rows]) for who in ("model", "bicubic")}
    return result


def onnx_upscaler(path: str | Path, threads: int = 2) -> Upscaler:
    """Run an ONNX model under the contract (input "lr" [1,1,h,w] luma/255)."""
    return LumaRunner(path, threads)


def bicubic_luma(lr_y: np.ndarray) -> np.ndarray:
    """PIL bicubic x2 of a uint8 luma plane (the SR-off path on decoded video), as an ``Upscaler``."""
    img = Image.fromarray(lr_y)
    return np.asarray(img.resize((img.width * SCALE, img.height * SCALE), Image.Resampling.BICUBIC), np.float64) / 255.0


# ---------------------------------------------------------------- codec path


@dataclass
class Clip:
    """Frames of a clip through the sender's scaler and a real-time codec, with their originals."""

    name: str
    start: int  # first frame used
    hr_y: list[np.ndarray]  # uint8 [720, 1280]
    lr_y: list[np.ndarray]  # uint8 [360, 640], the encoder's input
    decoded_y: list[np.ndarray]  # uint8 [360, 640], what the receiver gets
    frame_types: list[str]
    # uint8 [540, 640] I420 (Y rows, then U, then V) of the decoded frames: whole frames for the server's upscaler
    decoded_yuv: list[np.ndarray] = field(default_factory=list, repr=False)


def first_content_frame(path: Path, limit: int = 600) -> int:
    """Index of the first frame whose luma is not nearly flat (clips often open on a fade from black)."""
    from .degrade import iter_video_frames

    for i, frame in iter_video_frames(path):
        if frame.to_ndarray(format="yuv420p")[: frame.height].std() >= MIN_LUMA_STD or i >= limit:
            return i
    return 0


def check_codec(codec: str) -> tuple[str, str]:
    """The (encoder, speed) of a ``VIDEO_CODECS`` name; a clear error for any other."""
    if codec not in VIDEO_CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(VIDEO_CODECS)}")
    return VIDEO_CODECS[codec]


def code_clip(name: str, start: int, hr_y: list[np.ndarray], lrs: list[Image.Image], codec: str, kbps: float) -> Clip:
    """Encode the LR frames as one real-time stream and decode them: the ``Clip`` the receiver would get.

    ``kbps`` is for a 640x360 stream; other frame sizes get the same bits per pixel.
    """
    from . import degrade

    encoder, speed = check_codec(codec)
    rate = degrade.stream_kbps(kbps, lrs[0].width, lrs[0].height)
    decoded, types = degrade.encode_decode_yuv(lrs, encoder, rate, speed)
    height = lrs[0].height
    lr_y = [imaging.luma_u8(lr) for lr in lrs]
    return Clip(name, start, hr_y, lr_y, [yuv[:height] for yuv in decoded], types, decoded)


def load_clip(
    path: str | Path,
    frames: int,
    codec: str = "vp8",
    kbps: float = 400.0,
    kernel: str = "area",
    start: int | None = None,
) -> Clip:
    """Run ``frames`` frames of ``path`` through downscale -> encode -> decode (``srtc.training.degrade``)."""
    from . import degrade

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    check_codec(codec)
    start = first_content_frame(path) if start is None else start
    hr_y: list[np.ndarray] = []
    lrs: list[Image.Image] = []
    for i, frame in degrade.iter_video_frames(path):
        if i < start:
            continue
        if len(lrs) >= frames:
            break
        hr = frame.to_image()
        hr = hr.crop((0, 0, hr.width - hr.width % degrade.ALIGN, hr.height - hr.height % degrade.ALIGN))
        hr_y.append(imaging.luma_u8(hr))
        lrs.append(degrade.downscale(hr, kernel))
    if len(lrs) < 2:
        raise ValueError(f"{path}: only {len(lrs)} frame(s) from frame {start}; need at least 2")
    return code_clip(path.name, start, hr_y, lrs, codec, kbps)


def load_panned_clips(
    folder: str | Path,
    frames: int = 10,
    codec: str = "vp8",
    kbps: float = 400.0,
    kernel: str = "area",
    pan: tuple[int, int] = PAN_PX,
    limit: int | None = None,
) -> list[Clip]:
    """Each image of ``folder`` as a short clip, panned ``pan`` HR px per frame, through the codec.

    Why: the only clips at hand are from one film, and one of them trains the video models; panned
    photographs are coded video of other content, for checking that a gain is not the film's alone.
    Each clip is encoded as its own stream, at the bits per pixel ``kbps`` gives a 640x360 stream.
    """
    from . import degrade

    check_codec(codec)
    if any(v % SCALE for v in pan) or pan == (0, 0):
        raise ValueError(f"pan {pan}: HR px per frame, multiples of {SCALE}, not both 0")
    clips = []
    for path in imaging.list_images(folder)[:limit]:
        hrs = degrade.pan_frames(imaging.load_image(path), frames, pan, (1280, 720), np.random.default_rng(0))
        lrs = [degrade.downscale(hr, kernel) for hr in hrs]
        clips.append(code_clip(Path(path).name, 0, [imaging.luma_u8(hr) for hr in hrs], lrs, codec, kbps))
    if not clips:
        raise FileNotFoundError(f"no images under {folder}")
    return clips


def evaluate_clips(clips: list[Clip], upscalers: dict[str, Upscaler]) -> dict:
    """``evaluate_clip`` on each clip, then the mean of each figure over clips (dB averaged as dB)."""
    tables = [evaluate_clip(clip, upscalers, progress_every=0) for clip in clips]
    return {name: mean_metrics([t[name] for t in tables]) for name in upscalers}


def evaluate_clip(clip: Clip, upscalers: dict[str, Upscaler], progress_every: int = 10, vmaf: bool = False) -> dict:
    """Per-upscaler means over frames: PSNR, SSIM, gradient statistics, temporal PSNR, ds_psnr vs decoded LR;
    with ``vmaf``, VMAF and VMAF-NEG too (libvmaf, :mod:`srtc.training.vmaf`)."""
    rows: dict[str, list[dict]] = {name: [] for name in upscalers}
    temporal = {name: quality.TemporalError(SHAVE) for name in upscalers}
    pairs = {}
    if vmaf:
        from .vmaf import VmafPairs

        height, width = clip.hr_y[0].shape
        pairs = {name: VmafPairs(width, height, limit=len(clip.hr_y)) for name in upscalers}
    for t, (hr, dec) in enumerate(zip(clip.hr_y, clip.decoded_y)):
        hr = hr.astype(np.float64)
        for name, up in upscalers.items():
            sr = to_display(up(dec))
            if sr.shape != hr.shape:
                raise ValueError(f"{name}: output {sr.shape}, expected {hr.shape}")
            rows[name].append(image_metrics(sr, hr, dec))
            temporal[name].add(sr, hr)
            if name in pairs:
                pairs[name].add(np.clip(np.rint(hr), 0, 255).astype(np.uint8), sr)
        if progress_every and (t + 1) % progress_every == 0:
            log.info("  video frame %d/%d", t + 1, len(clip.hr_y))
    out = {}
    for name in upscalers:
        out[name] = mean_metrics(rows[name])
        out[name]["tpsnr"] = temporal[name].psnr()
        if name in pairs:
            scores = pairs[name].score()
            out[name]["vmaf"], out[name]["vmaf_neg"] = float(scores["vmaf"]), float(scores["vmaf_neg"])
    return out


def clip_summary(clip: Clip) -> dict:
    """What the receiver got: codec loss on the LR and the frame types."""
    lr_psnr = [imaging.psnr(d, c, 0) for d, c in zip(clip.decoded_y, clip.lr_y)]
    return {
        "clip": clip.name,
        "start_frame": clip.start,
        "frames": len(clip.hr_y),
        "decoded_lr_psnr": float(np.mean([p for p in lr_psnr if math.isfinite(p)] or [float("inf")])),
        "frame_types": {k: clip.frame_types.count(k) for k in sorted(set(clip.frame_types))},
    }


# ---------------------------------------------------------------- command line


def rounded(d: dict, digits: int = 4) -> dict:
    """Round the floats of a (nested) metrics dict for JSON and tables."""
    return {
        k: rounded(v, digits) if isinstance(v, dict) else (round(v, digits) if isinstance(v, float) else v)
        for k, v in d.items()
    }


def log_table(title: str, rows: dict[str, dict], keys: tuple[str, ...]) -> None:
    """One readable block per table on the log."""
    log.info("%s", title)
    log.info("  %-30s %s", "", " ".join(f"{k:>12}" for k in keys))
    for name, m in rows.items():
        log.info("  %-30s %s", name, " ".join(f"{m[k]:>12.4f}" for k in keys))


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="manifest name or .onnx path (default: manifest default)")
    ap.add_argument(
        "--compare",
        nargs="*",
        default=[],
        help="more models (names or .onnx paths) scored on the same images and decoded frames",
    )
    ap.add_argument("--images", nargs="*", default=[], help="benchmark folders")
    ap.add_argument("--video", default=None, help="a 720p clip for the codec path")
    ap.add_argument(
        "--codec",
        nargs="+",
        choices=sorted(VIDEO_CODECS),
        default=["vp8"],
        help="codec(s) of the coded path; several give a grid with --kbps (--pan takes the first)",
    )
    ap.add_argument(
        "--kbps",
        nargs="+",
        type=float,
        default=[400.0],
        help="encoder bitrate(s) for the 640x360 stream, e.g. 300 400 600 1000 (--pan takes the first)",
    )
    ap.add_argument("--frames", type=int, default=30, help="video frames to use (default %(default)s)")
    ap.add_argument("--start", type=int, default=None, help="first video frame (default: after the fade-in)")
    ap.add_argument("--kernel", choices=("area", "bicubic"), default="area", help="sender's 720p->360p scaler")
    ap.add_argument(
        "--pan", default=None, help="folder of images, each panned into a clip and coded like --video (other content)"
    )
    ap.add_argument("--pan-frames", type=int, default=10, help="frames per panned clip (default %(default)s)")
    ap.add_argument("--pan-limit", type=int, default=None, help="use only the first N images of --pan")
    ap.add_argument("--peers", default=None, help="folder of published peer models (e.g. ../shared/peers)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--vmaf",
        action="store_true",
        help="VMAF and VMAF-NEG on the coded-video path too (libvmaf: pip install -e '.[vmaf]')",
    )
    ap.add_argument(
        "--targets",
        action="store_true",
        help="check --model at each coded point against TARGETS (VMAF-NEG needs --vmaf; the fidelity reference is "
        "the best --compare model of kind fidelity); lines on the log, 'targets' in the JSON",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout at the end")
    ap.add_argument("--json-out", default=None, help="also write the JSON object to this file")
    return ap


def _listed(value: object) -> list:
    """An option that takes one value or several, as a list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def coded_video(args: argparse.Namespace, codec: str, kbps: float, upscalers: dict, vmaf: bool) -> dict:
    """The clip through ``codec`` at ``kbps``, each upscaler and bicubic scored on the decoded frames."""
    log.info("video %s: %d frames, %s at %g kbps, %s downscale", args.video, args.frames, codec, kbps, args.kernel)
    clip = load_clip(args.video, args.frames, codec, kbps, args.kernel, args.start)
    summary = clip_summary(clip)
    log.info("  decoded: LR PSNR %.2f dB vs encoder input, frame types %s", summary["decoded_lr_psnr"],
             summary["frame_types"])  # fmt: skip
    table = evaluate_clip(clip, {"bicubic": bicubic_luma, **upscalers}, vmaf=vmaf)
    log_table(
        f"video {clip.name} ({codec} {kbps:g} kbps, {len(clip.hr_y)} frames)",
        table,
        METRICS[:2] + ("tpsnr",) + (("vmaf", "vmaf_neg") if vmaf else ()) + METRICS[2:],
    )
    entry = {"codec": codec, "kbps": kbps, "kernel": args.kernel, "fps": 30, "results": rounded(table)}
    return {**rounded(summary), **entry}


def log_grid(grid: list[dict], models: list[str]) -> None:
    """Each model's margin over bicubic at every codec and bitrate: PSNR-Y, and VMAF-NEG when scored."""
    log.info("margin over bicubic (PSNR-Y dB / VMAF-NEG) by codec and bitrate:")
    for name in models:
        cells = []
        for entry in grid:
            model, base = entry["results"][name], entry["results"]["bicubic"]
            cell = f"{model['psnr'] - base['psnr']:+.2f}"
            if "vmaf_neg" in model and "vmaf_neg" in base:
                cell += f" / {model['vmaf_neg'] - base['vmaf_neg']:+.1f}"
            cells.append(f"{entry['codec']} {entry['kbps']:g}: {cell}")
        log.info("  %-28s %s", name, "   ".join(cells))


def fidelity_models(names: list[str]) -> list[str]:
    """Those of ``names`` that the manifest lists with kind "fidelity" (paths and unknown names are not)."""
    from srtc.zoo import load_manifest

    models = load_manifest().get("models", {})
    return [name for name in names if models.get(name, {}).get("kind") == "fidelity"]


def target_checks(entry: dict, model: str, fidelity: list[str]) -> dict:
    """``model`` at one coded point (a ``video_grid`` entry) against ``TARGETS``.

    Each check has the margin, the margin needed, ``meets`` (margin >= needed) and ``ordered`` (the model
    above its reference: margin > 0, or >= 0 where the target is "no worse"). Checks whose metric was not
    scored (VMAF without ``--vmaf``) or whose reference is missing are left out.
    """
    res = entry["results"]
    scored = [name for name in fidelity if "vmaf_neg" in res.get(name, {})]
    best = max(scored, key=lambda name: res[name]["vmaf_neg"]) if scored else None
    checks = []
    for metric, against, need in TARGETS:
        ref = best if against == "fidelity" else against
        if ref is None or metric not in res[model] or metric not in res[ref]:
            continue
        margin = res[model][metric] - res[ref][metric]
        checks.append(
            {
                "metric": metric,
                "against": ref,
                "margin": round(margin, 4),
                "need": need,
                "meets": margin >= need - 1e-9,
                "ordered": margin >= 0 if need == 0 else margin > 0,
            }
        )
    return {
        "codec": entry["codec"],
        "kbps": entry["kbps"],
        "model": model,
        "fidelity": best,
        "checks": checks,
        "meets_all": all(c["meets"] for c in checks),
        "ordered_all": all(c["ordered"] for c in checks),
    }


def log_targets(targets: list[dict]) -> None:
    """One line per coded point: each target's margin and whether it is met."""
    log.info("targets for %s (margin over the reference; needed):", targets[0]["model"] if targets else "-")
    for t in targets:
        cells = [
            f"{c['metric']} {c['margin']:+.2f} vs {c['against']} (>= {c['need']:+.1f}) "
            + ("meets" if c["meets"] else "MISSES")
            for c in t["checks"]
        ]
        verdict = "meets all" if t["meets_all"] else ("misses some; ordered" if t["ordered_all"] else "misses some")
        log.info("  %s %g: %s -- %s", t["codec"], t["kbps"], "; ".join(cells), verdict)


def run(args: argparse.Namespace) -> dict:
    """The whole evaluation; returns the JSON object."""
    t0 = time.perf_counter()
    path = resolve(args.model)
    model_name = str(args.model or "default")
    upscalers: dict[str, Upscaler] = {model_name: onnx_upscaler(path, args.threads)}
    names = [str(name) for name in getattr(args, "compare", [])]
    compare = {name: resolve(name) for name in names}
    if model_name in compare or len(compare) < len(names):
        raise ConfigError("--compare: each model once, and not the --model itself")
    upscalers.update({name: onnx_upscaler(p, args.threads) for name, p in compare.items()})
    result: dict = {
        "model": model_name,
        "file": str(path),
        "scale": SCALE,
        "shave": SHAVE,
        "compare": {name: str(p) for name, p in compare.items()},
        "clean": {},
        "video": None,
        "video_grid": None,
        "pan": None,
        "peers": None,
        "targets": None,
    }
    log.info("model %s (%s); x%d, Y BT.601 limited range, shave %d", model_name, path, SCALE, SHAVE)
    with tempfile.TemporaryDirectory(prefix="srtc-eval-") as tmp:
        if args.peers:
            from .peers import peer_upscalers

            log.info("building peers from %s", args.peers)
            peers, skipped = peer_upscalers(Path(args.peers), Path(tmp), args.threads)
            for s in skipped:
                log.warning("peer skipped: %s: %s", s["name"], s["reason"])
            upscalers.update({p.name: p.upscale for p in peers})
            result["peers"] = {
                "dir": str(args.peers),
                "found": [{"name": p.name, "params": p.params, "note": p.note} for p in peers],
                "skipped": skipped,
            }
        for folder in args.images:
            name = Path(folder).name
            samples = load_samples(folder)
            log.info("%s: %d images", name, len(samples))
            table: dict[str, dict] = {}
            for who, up in upscalers.items():
                r = evaluate(samples, up, full=True)
                table.setdefault("bicubic", r["metrics"]["bicubic"])
                table[who] = r["metrics"]["model"]
                log.info("  %s done (PSNR %.3f dB)", who, r["model"])
            result["clean"][name] = {"images": len(samples), "results": rounded(table)}
            log_table(f"{name} ({len(samples)} images)", table, METRICS)
        if args.video:
            vmaf = getattr(args, "vmaf", False)
            combos = [(codec, kbps) for codec in _listed(args.codec) for kbps in _listed(args.kbps)]
            result["video_grid"] = [coded_video(args, codec, kbps, upscalers, vmaf) for codec, kbps in combos]
            result["video"] = result["video_grid"][0]
        if getattr(args, "pan", None):
            codec, kbps = _listed(args.codec)[0], _listed(args.kbps)[0]
            clips = load_panned_clips(args.pan, args.pan_frames, codec, kbps, args.kernel, limit=args.pan_limit)
            log.info(
                "panned clips: %d images of %s, %d frames each, %s at %g kbps",
                len(clips),
                args.pan,
                args.pan_frames,
                codec,
                kbps,
            )
            table = evaluate_clips(clips, {"bicubic": bicubic_luma, **upscalers})
            result["pan"] = {
                "dir": str(args.pan),
                "clips": len(clips),
                "frames": args.pan_frames,
                "pan_px": list(PAN_PX),
                "codec": codec,
                "kbps": kbps,
                "kernel": args.kernel,
                "decoded_lr_psnr": round(float(np.mean([clip_summary(c)["decoded_lr_psnr"] for c in clips])), 4),
                "results": rounded(table),
            }
            log_table(
                f"panned {Path(args.pan).name} ({len(clips)} clips, {codec} {kbps:g} kbps)",
                table,
                METRICS[:2] + ("tpsnr",) + METRICS[2:],
            )
    if len(result.get("video_grid") or []) > 1:
        log_grid(result["video_grid"], [name for name in upscalers])
    if getattr(args, "targets", False) and result["video_grid"]:
        fidelity = fidelity_models(names)
        result["targets"] = [target_checks(entry, model_name, fidelity) for entry in result["video_grid"]]
        log_targets(result["targets"])
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    log.info("done in %.1f s", result["wall_s"])
    return result


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    if not args.images and not args.video and not args.pan:
        raise SystemExit("nothing to evaluate: give --images, --video and/or --pan")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        result = run(args)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    if getattr(args, "json_out", None):
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result) + "\n", encoding="utf-8")
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
