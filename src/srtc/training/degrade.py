"""Codec-aware training pairs: HR frames degraded the way the real WebRTC link degrades them.

The product receives 360p video that a sender downscaled and encoded in real time with VP8 or
H.264 at a few hundred kbps. A model trained only on clean bicubic pairs has never seen blocking
or ringing, so this module makes pairs the same way the link does:

HR frame (image, panned still or video frames; cropped to a multiple of 4 so the LR is even,
as 4:2:0 codecs need) -> x2 downscale (area or bicubic) -> realtime VP8 (``libvpx``) or H.264
(``libx264``) encode at 200..1500 kbps (log-uniform, for a 640x360 stream; smaller frames get
the same bits per pixel) -> decode -> Y planes of the decoded LR and of the HR, both uint8,
BT.601 limited range via ``srtc.training.imaging``. A configurable share of pairs stays clean
(bicubic, no codec), exactly as ``srtc.training.data`` makes them, so one model serves both.

Pairs are cached as ``pair_XXXXX.npz`` (``lr``, ``hr``, ``meta`` JSON; a clip's pair also keeps the
frame before, ``lr_prev`` and ``hr_prev``, for a temporal loss) under one folder per settings, so
training epochs never re-encode::

    python -m srtc.training.degrade --images ../shared/data/train --videos ../shared/data/video \\
        --out cache/codec_v1 --pairs 2000 --seed 0

``CodecPatchPairs`` reads such a folder and has the same interface as ``srtc.training.data.PatchPairs``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
import torch
from av.video.frame import PictureType
from PIL import Image
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import imaging
from .data import crop_pair
from .errors import ConfigError

log = logging.getLogger(__name__)

SCALE = 2
ALIGN = 2 * SCALE  # HR multiple so the LR has even sides (4:2:0 chroma)
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".ivf", ".y4m", ".m4v")
CODECS = ("libvpx", "libx264")
DECODERS = {"libvpx": "vp8", "libx264": "h264"}
ENCODERS = {decoder: encoder for encoder, decoder in DECODERS.items()}  # "vp8" -> "libvpx", as the CLI names them
KERNELS = ("area", "bicubic")
REF_PIXELS = 640 * 360  # the stream size the kbps range refers to
FPS = 30
CACHE_VERSION = 2  # 2: clip pairs keep the previous frame (lr_prev, hr_prev)


@dataclass(frozen=True)
class DegradeConfig:
    """Everything that shapes a pair; its hash names the cache folder."""

    clean_share: float = 0.3
    clip_share: float = 0.5
    video_share: float = 0.3
    kbps: tuple[float, float] = (200.0, 1500.0)
    clip_frames: tuple[int, int] = (4, 8)
    pan_px: tuple[int, int] = (1, 4)
    codecs: tuple[str, ...] = CODECS
    kernels: tuple[str, ...] = KERNELS
    vp8_cpu_used: tuple[int, ...] = (4, 6, 8)
    x264_presets: tuple[str, ...] = ("veryfast", "ultrafast")
    min_lr_side: int = 32
    max_hr: tuple[int, int] = (1280, 720)

    def digest(self) -> str:
        """Short stable hash of the settings (and the cache format version)."""
        text = json.dumps({"v": CACHE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Plan:
    """What one pair will be; drawn from the pair's own seeded generator."""

    index: int
    source: str
    kind: str  # "image" or "video"
    mode: str  # "clean", "still" or "clip"
    frames: int = 1
    start: int = 0  # first video frame
    pan: tuple[int, int] = (0, 0)  # HR px per frame (panned stills)
    codec: str | None = None
    kbps: float | None = None
    kernel: str = "bicubic"
    speed: str | None = None  # cpu-used or preset
    crop_seed: int = 0


@dataclass
class Pair:
    """A cached training pair: uint8 Y planes (HR is exactly twice the LR) and how it was made.

    A clip's pair also holds the frame before the kept one (decoded LR and HR), so a loss can compare
    frame-to-frame change; stills and clean pairs have none.
    """

    lr: np.ndarray
    hr: np.ndarray
    meta: dict = field(default_factory=dict)
    lr_prev: np.ndarray | None = None
    hr_prev: np.ndarray | None = None

    @property
    def has_prev(self) -> bool:
        return self.lr_prev is not None and self.hr_prev is not None


# ----------------------------------------------------------------------------- sources


def find_sources(folder: str | Path | None, suffixes: tuple[str, ...]) -> list[Path]:
    """Files with ``suffixes`` anywhere under ``folder``, sorted; none when the folder is unset.

    ``folder`` may also name one such file (one clip of a folder, leaving the others for evaluation).
    """
    if not folder:
        return []
    folder = Path(folder)
    if folder.is_file() and folder.suffix.lower() in suffixes:
        return [folder]
    if not folder.is_dir():
        raise FileNotFoundError(f"source folder not found: {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes)


def count_video_frames(path: Path) -> int:
    """Frames in a video, counted by demuxing (no decode); containers often lack the number."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for pkt in container.demux(stream) if pkt.size)


def iter_video_frames(path: Path) -> Iterator[tuple[int, av.VideoFrame]]:
    """Decoded frames of a video, numbered in presentation order (converted to RGB only when used)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield from enumerate(container.decode(stream))


# ----------------------------------------------------------------------------- degradation


def crop_box(size: tuple[int, int], max_hr: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random window of at most ``max_hr``, sides a multiple of 4 (so the LR is even for 4:2:0)."""
    width, height = size
    w = min(width, max_hr[0]) // ALIGN * ALIGN
    h = min(height, max_hr[1]) // ALIGN * ALIGN
    x = int(rng.integers(width - w + 1))
    y = int(rng.integers(height - h + 1))
    return x, y, x + w, y + h


def downscale(hr: Image.Image, kernel: str) -> Image.Image:
    """x2 downscale as senders do it: 2x2 area average or PIL's antialiased bicubic."""
    if kernel == "area":
        return hr.reduce(SCALE)
    if kernel == "bicubic":
        return imaging.downscale(hr, SCALE)
    raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")


def to_yuv420p(lr: Image.Image) -> av.VideoFrame:
    """The encoder's input frame; Y is ``imaging.luma_u8`` exactly, so clean and coded LR agree."""
    rgb = lr.convert("RGB")
    arr = av.VideoFrame.from_image(rgb).reformat(format="yuv420p").to_ndarray()
    arr[: lr.height] = imaging.luma_u8(lr)
    return av.VideoFrame.from_ndarray(arr, format="yuv420p")


def stream_kbps(kbps: float, width: int, height: int) -> float:
    """Encoder bitrate giving a ``width`` x ``height`` frame the bits per pixel 640x360 gets at ``kbps``."""
    return kbps * width * height / REF_PIXELS


def open_encoder(codec: str, width: int, height: int, kbps: float, speed: str) -> av.VideoCodecContext:
    """A realtime encoder like WebRTC's: one thread (deterministic), no lookahead, no B-frames."""
    ctx = cast(av.VideoCodecContext, av.CodecContext.create(codec, "w"))  # CODECS are video codecs
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, FPS)
    ctx.framerate = Fraction(FPS, 1)
    ctx.bit_rate = max(int(kbps * 1000), 10_000)
    ctx.gop_size = 10_000  # only the first frame is a keyframe, as in a call
    ctx.thread_count = 1
    rate = str(ctx.bit_rate)
    if codec == "libvpx":
        ctx.options = {
            "deadline": "realtime",
            "cpu-used": speed,
            "lag-in-frames": "0",
            "qmin": "2",
            "qmax": "56",
            "maxrate": rate,
            "minrate": "0",
            "bufsize": rate,
        }
    elif codec == "libx264":
        ctx.options = {"preset": speed, "tune": "zerolatency", "profile": "baseline", "maxrate": rate, "bufsize": rate}
    else:
        raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS}")
    return ctx


def encode_decode_yuv(
    lrs: list[Image.Image], codec: str, kbps: float, speed: str
) -> tuple[list[np.ndarray], list[str]]:
    """Encode LR frames as one realtime stream and decode it: decoded yuv420p frames as I420 arrays
    (``[h * 3 // 2, w]``: Y rows, then U, then V) and frame types; chroma too, for whoever upscales whole frames."""
    w, h = lrs[0].size
    enc = open_encoder(codec, w, h, kbps, speed)
    dec = cast(av.VideoCodecContext, av.CodecContext.create(DECODERS[codec], "r"))  # a video decoder
    packets: list[av.Packet] = []
    for t, lr in enumerate(lrs):
        frame = to_yuv420p(lr)
        frame.pts, frame.time_base = t, enc.time_base
        packets += enc.encode(frame)
    packets += enc.encode(None)
    decoded = [f for pkt in packets for f in dec.decode(pkt)] + list(dec.decode(None))
    planes = [f.to_ndarray(format="yuv420p") for f in decoded]
    types = [PictureType(int(f.pict_type)).name for f in decoded]
    if len(planes) != len(lrs):
        raise RuntimeError(f"{codec}: {len(lrs)} frames in, {len(planes)} decoded")
    return planes, types


def encode_decode(lrs: list[Image.Image], codec: str, kbps: float, speed: str) -> tuple[list[np.ndarray], list[str]]:
    """Encode LR frames as one realtime stream and decode it: decoded Y planes and frame types."""
    planes, types = encode_decode_yuv(lrs, codec, kbps, speed)
    h = lrs[0].height
    return [p[:h].copy() for p in planes], types


def pan_frames(
    img: Image.Image, frames: int, pan: tuple[int, int], max_hr: tuple[int, int], rng: np.random.Generator
) -> list[Image.Image]:
    """A still image panned by ``pan`` HR px per frame, so the codec makes real inter frames."""
    dx, dy = pan
    span_x, span_y = abs(dx) * (frames - 1), abs(dy) * (frames - 1)
    w = min(img.width - span_x, max_hr[0]) // ALIGN * ALIGN
    h = min(img.height - span_y, max_hr[1]) // ALIGN * ALIGN
    x0 = int(rng.integers(img.width - w - span_x + 1)) + (span_x if dx < 0 else 0)
    y0 = int(rng.integers(img.height - h - span_y + 1)) + (span_y if dy < 0 else 0)
    return [img.crop((x0 + t * dx, y0 + t * dy, x0 + t * dx + w, y0 + t * dy + h)) for t in range(frames)]


def degrade(
    hrs: list[Image.Image], codec: str | None, kbps: float | None, kernel: str, speed: str | None
) -> tuple[list[np.ndarray], list[str]]:
    """LR Y planes of HR frames: clean (codec None, like ``srtc.training.data``) or encoded and decoded."""
    lrs = [downscale(hr, kernel) for hr in hrs]
    if codec is None:
        return [imaging.luma_u8(lr) for lr in lrs], ["clean"] * len(lrs)
    assert kbps is not None and speed is not None  # a codec comes with its bitrate and speed (plan_pair)
    w, h = lrs[0].size
    return encode_decode(lrs, codec, stream_kbps(kbps, w, h), speed)


# ----------------------------------------------------------------------------- planning


def pair_rng(seed: int, index: int) -> np.random.Generator:
    """Each pair has its own generator, so a pair never depends on the others (resumable builds)."""
    return np.random.default_rng([seed, index])


def plan_pair(index: int, seed: int, cfg: DegradeConfig, images: list[Path], videos: list[tuple[Path, int]]) -> Plan:
    """Draw source, mode, codec, bitrate, kernel and speed for pair ``index``."""
    rng = pair_rng(seed, index)
    use_video = bool(videos) and (not images or rng.random() < cfg.video_share)
    clean = rng.random() < cfg.clean_share
    clip = not clean and rng.random() < cfg.clip_share
    frames = int(rng.integers(cfg.clip_frames[0], cfg.clip_frames[1] + 1)) if clip else 1
    codec = str(rng.choice(cfg.codecs))
    lo, hi = cfg.kbps
    kbps = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    kernel = str(rng.choice(cfg.kernels))
    speed = str(rng.choice(cfg.vp8_cpu_used)) if codec == "libvpx" else str(rng.choice(cfg.x264_presets))
    pan = (0, 0)
    if clip and not use_video:
        while pan == (0, 0):
            dx, dy = (
                int(v) * SCALE * int(rng.choice((-1, 0, 1)))
                for v in rng.integers(cfg.pan_px[0], cfg.pan_px[1] + 1, size=2)
            )
            pan = (dx, dy)
    if use_video:
        path, count = videos[int(rng.integers(len(videos)))]
        start = int(rng.integers(max(count - frames, 0) + 1))
        source, kind = path, "video"
    else:
        source, kind, start = images[int(rng.integers(len(images)))], "image", 0
    return Plan(
        index=index,
        source=str(source),
        kind=kind,
        mode="clean" if clean else ("clip" if clip else "still"),
        frames=frames,
        start=start,
        pan=pan,
        codec=None if clean else codec,
        kbps=None if clean else round(kbps, 1),
        kernel="bicubic" if clean else kernel,
        speed=None if clean else speed,
        crop_seed=int(rng.integers(2**31)),
    )


def make_pair(plan: Plan, hr_frames: list[Image.Image], cfg: DegradeConfig) -> Pair:
    """Run a plan on its HR frames (the source image, or the clip's video frames)."""
    rng = np.random.default_rng(plan.crop_seed)
    if plan.kind == "image" and plan.mode == "clip":
        hrs = pan_frames(hr_frames[0], plan.frames, plan.pan, cfg.max_hr, rng)
    else:
        box = crop_box(hr_frames[0].size, cfg.max_hr, rng)
        hrs = [f.crop(box) for f in hr_frames]
    ys, types = degrade(hrs, plan.codec, plan.kbps, plan.kernel, plan.speed)
    meta = {k: v for k, v in asdict(plan).items() if k != "crop_seed"}
    meta.update(
        frame_types=types,
        kept_frame=len(ys) - 1,
        lr_size=[ys[-1].shape[1], ys[-1].shape[0]],
        encoder_kbps=None if plan.kbps is None else round(stream_kbps(plan.kbps, ys[-1].shape[1], ys[-1].shape[0]), 1),
    )
    # JSON-normalised (tuples become lists), so a pair in memory equals the same pair read back.
    prev = {"lr_prev": ys[-2], "hr_prev": imaging.luma_u8(hrs[-2])} if len(ys) > 1 else {}
    return Pair(lr=ys[-1], hr=imaging.luma_u8(hrs[-1]), meta=json.loads(json.dumps(meta)), **prev)


# ----------------------------------------------------------------------------- cache


def pair_path(folder: Path, index: int) -> Path:
    return folder / f"pair_{index:05d}.npz"


def write_pair(path: Path, pair: Pair) -> None:
    """Write atomically, so an interrupted build never leaves a half pair that a resume trusts."""
    tmp = path.with_name(path.stem + ".tmp.npz")
    prev: dict[str, np.ndarray] = {}
    if pair.has_prev:
        assert pair.lr_prev is not None and pair.hr_prev is not None  # what has_prev means
        prev = {"lr_prev": pair.lr_prev, "hr_prev": pair.hr_prev}
    arrays = {"lr": pair.lr, "hr": pair.hr, "meta": np.array(json.dumps(pair.meta)), **prev}
    np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]  # numpy stub: a **dict could fill allow_pickle
    tmp.replace(path)


def read_pair(path: str | Path) -> Pair:
    with np.load(path, allow_pickle=False) as z:
        prev = {k: z[k] for k in ("lr_prev", "hr_prev") if k in z.files}
        return Pair(lr=z["lr"], hr=z["hr"], meta=json.loads(str(z["meta"])), **prev)


def default_cache_dir(cfg: DegradeConfig, seed: int, root: str | Path = "cache") -> Path:
    """``cache/<hash of settings and seed>``, for callers that do not name the folder."""
    return Path(root) / f"{cfg.digest()}_s{seed}"


def check_manifest(out: Path, manifest: dict) -> None:
    """Refuse to mix pairs made with other settings into an existing cache folder."""
    path = out / "manifest.json"
    if path.is_file():
        old = json.loads(path.read_text())
        keys = ("config_hash", "seed", "images", "videos")
        if any(old.get(k) != manifest.get(k) for k in keys):
            raise ConfigError(f"{out} holds pairs made with other settings; use another --out or delete it")


def build_cache(
    out: str | Path,
    images_dir: str | Path | None,
    videos_dir: str | Path | None,
    pairs: int,
    seed: int = 0,
    cfg: DegradeConfig = DegradeConfig(),
    progress: bool = True,
) -> Path:
    """Make ``pairs`` pairs under ``out`` (skipping those already there); returns the folder."""
    out = Path(out)
    images = find_sources(images_dir, imaging.IMAGE_SUFFIXES)
    video_paths = find_sources(videos_dir, VIDEO_SUFFIXES)
    if not images and not video_paths:
        raise FileNotFoundError(f"no images under {images_dir} and no videos under {videos_dir}")
    videos = [(p, count_video_frames(p)) for p in video_paths]
    videos = [(p, n) for p, n in videos if n > 0]
    manifest = {
        "config_hash": cfg.digest(),
        "config": asdict(cfg),
        "seed": seed,
        "version": CACHE_VERSION,
        "images": [str(p) for p in images],
        "videos": [str(p) for p, _ in videos],
    }
    out.mkdir(parents=True, exist_ok=True)
    check_manifest(out, manifest)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    plans = [plan_pair(i, seed, cfg, images, videos) for i in range(pairs) if not pair_path(out, i).is_file()]
    log.info("%d of %d pairs to make in %s (%d images, %d videos)", len(plans), pairs, out, len(images), len(videos))
    with logging_redirect_tqdm(), tqdm(total=len(plans), desc="pairs", unit="pair", disable=not progress) as bar:
        for plan, frames in iter_plan_frames(plans):
            try:
                pair = make_pair(plan, frames, cfg)
            except (ValueError, RuntimeError, av.FFmpegError) as exc:
                log.warning("pair %d from %s failed (%s); skipped", plan.index, plan.source, exc)
                bar.update(1)
                continue
            if min(pair.lr.shape) < cfg.min_lr_side:
                log.warning("pair %d: %s too small (LR %s); skipped", plan.index, plan.source, pair.lr.shape)
            else:
                write_pair(pair_path(out, plan.index), pair)
            bar.update(1)
    return out


def iter_plan_frames(plans: list[Plan]) -> Iterator[tuple[Plan, list[Image.Image]]]:
    """Each plan with its HR frames; every video is decoded once, in one pass, for all its clips."""
    for plan in plans:
        if plan.kind == "image":
            yield plan, [imaging.load_image(plan.source)]
    by_video: dict[str, list[Plan]] = defaultdict(list)
    for plan in plans:
        if plan.kind == "video":
            by_video[plan.source].append(plan)
    for source, group in by_video.items():
        yield from _video_clips(Path(source), group)


def _video_clips(path: Path, group: list[Plan]) -> Iterator[tuple[Plan, list[Image.Image]]]:
    """Collect each plan's consecutive frames during one sequential decode of ``path``."""
    pending = sorted(group, key=lambda p: p.start)
    last = max(p.start + p.frames for p in pending)
    window: dict[int, Image.Image] = {}
    for i, frame in iter_video_frames(path):
        if i >= last:
            break
        if any(p.start <= i < p.start + p.frames for p in pending):
            window[i] = frame.to_image()
        while pending and pending[0].start + pending[0].frames - 1 <= i:
            plan = pending.pop(0)
            yield plan, [window[j] for j in range(plan.start, plan.start + plan.frames)]
        lowest = pending[0].start if pending else i + 1
        for j in [j for j in window if j < lowest]:
            del window[j]
    for plan in pending:
        log.warning("pair %d: %s ended before frame %d; skipped", plan.index, path, plan.start + plan.frames)


# ----------------------------------------------------------------------------- training data


def list_pairs(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"pair cache not found: {folder} (build it with python -m srtc.training.degrade)")
    files = sorted(folder.glob("pair_*[0-9].npz"))
    if not files:
        raise FileNotFoundError(f"no pairs in {folder} (build them with python -m srtc.training.degrade)")
    return files


class CodecPatchPairs(torch.utils.data.Dataset):
    """Random aligned LR/HR patches from a pair cache; the interface of ``srtc.training.data.PatchPairs``.

    ``sample(batch, rng)`` gives LR [B,1,p/2,p/2] and HR [B,1,p,p] float32 on 0..1, with patches
    drawn in proportion to pair area and random flips and 90-degree rotations. As a torch
    ``Dataset``, item ``i`` is one such (LR [1,p/2,p/2], HR [1,p,p]) patch from pair ``i``.
    """

    def __init__(self, root: str | Path, patch: int = 96, limit: int | None = None, seed: int = 0) -> None:
        if patch % SCALE:
            raise ValueError(f"patch size {patch} must be a multiple of {SCALE}")
        self.patch = patch
        self.lr: list[np.ndarray] = []
        self.hr: list[np.ndarray] = []
        self.meta: list[dict] = []
        self.clips: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # pair index -> (LR, HR) as [H, W, 2]
        for path in list_pairs(root)[:limit]:
            pair = read_pair(path)
            if min(pair.hr.shape) < patch:
                log.warning("skipping %s: smaller than the %d px patch", path, patch)
                continue
            if pair.has_prev:
                assert pair.lr_prev is not None and pair.hr_prev is not None  # what has_prev means
                self.clips[len(self.hr)] = (
                    np.stack([pair.lr_prev, pair.lr], axis=-1),
                    np.stack([pair.hr_prev, pair.hr], axis=-1),
                )
            self.lr.append(pair.lr)
            self.hr.append(pair.hr)
            self.meta.append(pair.meta)
        if not self.hr:
            raise ValueError(f"no usable pairs under {root}")
        areas = np.array([a.size for a in self.lr], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.clip_ids = np.array(sorted(self.clips), dtype=np.int64)
        self.clip_weights = areas[self.clip_ids] / areas[self.clip_ids].sum() if len(self.clip_ids) else None
        self.rng = np.random.default_rng(seed)
        log.info("loaded %d pairs (%.1f M HR pixels) from %s", len(self.hr), areas.sum() * 4 / 1e6, root)

    def __len__(self) -> int:
        return len(self.hr)

    def crop(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One aligned uint8 patch pair from pair ``i`` with a random flip and rotation."""
        return crop_pair(self.lr[i], self.hr[i], self.patch, rng)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        lp, hp = self.crop(i, self.rng)
        return (
            torch.from_numpy(lp.astype(np.float32)[None] / 255.0),
            torch.from_numpy(hp.astype(np.float32)[None] / 255.0),
        )

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch: LR [B,1,p/2,p/2] and HR [B,1,p,p], float32 on the 0..1 scale."""
        lrs, hrs, _ = self.sample_coded(batch, rng)
        return lrs, hrs

    def sample_coded(self, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``sample``'s batch (the same draws) plus a bool [B]: which LR patches went through a codec."""
        p, q = self.patch, self.patch // SCALE
        lrs = np.empty((batch, 1, q, q), np.float32)
        hrs = np.empty((batch, 1, p, p), np.float32)
        coded = np.empty(batch, bool)
        for b, i in enumerate(rng.choice(len(self.hr), size=batch, p=self.weights)):
            lp, hp = self.crop(int(i), rng)
            lrs[b, 0] = lp
            hrs[b, 0] = hp
            coded[b] = self.meta[int(i)].get("kbps") is not None
        lrs /= 255.0
        hrs /= 255.0
        return torch.from_numpy(lrs), torch.from_numpy(hrs), torch.from_numpy(coded)

    def sample_temporal(self, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches of two consecutive frames from clip pairs: LR [B,2,p/2,p/2] and HR [B,2,p,p] on 0..1.

        Channel 0 is the previous frame, 1 the kept one; both frames share the place, flip and rotation,
        so their difference is the clip's own frame-to-frame change (what ``temporal_psnr`` scores).
        """
        if self.clip_weights is None:
            raise ValueError("no clip pairs (with a previous frame) in this cache: rebuild it with --clip-share > 0")
        p, q = self.patch, self.patch // SCALE
        lrs = np.empty((batch, 2, q, q), np.float32)
        hrs = np.empty((batch, 2, p, p), np.float32)
        for b, i in enumerate(rng.choice(self.clip_ids, size=batch, p=self.clip_weights)):
            lp, hp = crop_pair(*self.clips[int(i)], self.patch, rng)
            lrs[b] = np.moveaxis(lp, -1, 0)
            hrs[b] = np.moveaxis(hp, -1, 0)
        return torch.from_numpy(lrs / 255.0), torch.from_numpy(hrs / 255.0)


# ----------------------------------------------------------------------------- command line


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="../shared/data/train", help="folder of HR images ('' for none)")
    ap.add_argument("--videos", default="../shared/data/video", help="folder of HR videos, or one video ('' for none)")
    ap.add_argument("--out", default=None, help="cache folder (default cache/<settings hash>_s<seed>)")
    ap.add_argument("--pairs", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clean-share", type=float, default=DegradeConfig.clean_share)
    ap.add_argument("--clip-share", type=float, default=DegradeConfig.clip_share)
    ap.add_argument("--video-share", type=float, default=DegradeConfig.video_share)
    ap.add_argument("--min-kbps", type=float, default=DegradeConfig.kbps[0])
    ap.add_argument("--max-kbps", type=float, default=DegradeConfig.kbps[1])
    ap.add_argument(
        "--codecs",
        nargs="+",
        choices=sorted(ENCODERS),
        default=[DECODERS[c] for c in CODECS],
        help="codecs to draw from (default: all); the server's uplink is VP8 unless the browser offers only H.264",
    )
    return ap


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = DegradeConfig(
        clean_share=args.clean_share,
        clip_share=args.clip_share,
        video_share=args.video_share,
        kbps=(args.min_kbps, args.max_kbps),
        codecs=tuple(ENCODERS[c] for c in dict.fromkeys(args.codecs)),
    )
    out = args.out or default_cache_dir(cfg, args.seed)
    try:
        build_cache(out, args.images or None, args.videos or None, args.pairs, args.seed, cfg)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
