"""What the probe sends: real content, pre-rendered once at 1280x720 (the PSNR originals) and 640x360.

Big Buck Bunny by default (skipping its fade-in), or any video, image or folder of images (panned
and zoomed, so the codec and the upscaler see motion). Pre-rendering keeps the probe's own CPU cost
low while it measures.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from aiortc import VideoStreamTrack

from srtc.server.config import CLIENT_DIR
from srtc.shared import SHARED

from . import framecode

log = logging.getLogger("server.probe")

CLOCK_RATE = 90_000  # RTP video clock: pts unit
DEFAULT_VIDEO = SHARED / "data" / "video" / "bbb_opening_720p24_00-15s.webm"
SAMPLES_DIR = CLIENT_DIR / "samples"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

FULL_W, FULL_H = 1280, 720  # the original, and what SR-on should return
SENT_W, SENT_H = 640, 360  # what is sent, and what SR-off should return
CODE_MARGIN = 8  # reference px around the frame code left out of PSNR (codec/scaler ringing)
MAX_SOURCE_SECONDS = 10.0  # pre-rendered frames, then the source loops
SECONDS_PER_IMAGE = 2.0
MIN_CONTENT_STD = 20.0  # leading video frames flatter than this (a fade from black) are skipped...
MAX_LEAD_IN_S = 5.0  # ...for at most this long


class SourceError(ValueError):
    """The source cannot be used: not found, unreadable, or without frames; the message says which."""


def psnr_y(
    a: np.ndarray, b: np.ndarray, exclude: tuple[int, int, int, int] | None = None, peak: float = 255.0
) -> float:
    """PSNR (dB) of two same-size uint8 planes over every pixel outside the ``exclude`` box.

    Computed as full-frame squared error minus the box's, which is exact and avoids a mask array.
    """
    if a.shape != b.shape:
        raise ValueError(f"PSNR of planes of different sizes: {a.shape} vs {b.shape}")
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    total = float(cv2.norm(a, b, cv2.NORM_L2SQR))
    count = a.size
    if exclude is not None:
        x0, y0, x1, y1 = exclude
        if x1 > x0 and y1 > y0:
            box_a = np.ascontiguousarray(a[y0:y1, x0:x1])
            box_b = np.ascontiguousarray(b[y0:y1, x0:x1])
            total -= float(cv2.norm(box_a, box_b, cv2.NORM_L2SQR))
            count -= (y1 - y0) * (x1 - x0)
    if count <= 0:
        raise ValueError("the exclusion box covers the whole plane")
    mse = max(total, 0.0) / count
    return float("inf") if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def luma_limited(bgr: np.ndarray) -> np.ndarray:
    """Limited-range BT.601 luma (16..235), as in the yuv420p frames that are sent."""
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)[: bgr.shape[0]].copy()


def to_yuv420p(bgr: np.ndarray) -> np.ndarray:
    """A BGR frame as one ``(H*3/2, W)`` yuv420p array (cv2's I420 layout, what PyAV takes)."""
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)


def cover(bgr: np.ndarray, width: int = FULL_W, height: int = FULL_H) -> np.ndarray:
    """Scale and centre-crop an image to fill ``width x height`` (no bars, aspect kept)."""
    h, w = bgr.shape[:2]
    s = max(width / w, height / h)
    nw, nh = max(width, round(w * s)), max(height, round(h * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    scaled = cv2.resize(bgr, (nw, nh), interpolation=interp)
    x0, y0 = (nw - width) // 2, (nh - height) // 2
    return scaled[y0 : y0 + height, x0 : x0 + width]


@dataclass
class Source:
    """Pre-rendered frames to send, and the originals PSNR is measured against.

    ``sent`` holds every frame as 640x360 yuv420p without the code; ``originals`` holds the
    1280x720 luma only for every ``psnr_every``-th source frame, which bounds memory.
    """

    sent: list[np.ndarray]
    fps: float
    originals: dict[int, np.ndarray]
    reference_psnr: dict[int, float]  # source index -> PSNR-Y of bicubic 2x of the sent frame
    description: str
    psnr_every: int = 5

    def index_for(self, elapsed_s: float) -> int:
        """Which source frame is shown ``elapsed_s`` after the start (the source loops)."""
        return int(elapsed_s * self.fps + 1e-6) % len(self.sent)


def prepare_source(frames: Iterable[np.ndarray], fps: float, psnr_every: int, description: str) -> Source:
    """Turn 1280x720 BGR frames into what is sent, the PSNR originals and the ideal reference."""
    exclude = framecode.region(FULL_W, FULL_H, margin=CODE_MARGIN)
    sent: list[np.ndarray] = []
    originals: dict[int, np.ndarray] = {}
    reference: dict[int, float] = {}
    for index, bgr in enumerate(frames):
        if bgr.shape[:2] != (FULL_H, FULL_W):
            bgr = cover(bgr)
        small = cv2.resize(bgr, (SENT_W, SENT_H), interpolation=cv2.INTER_AREA)
        yuv = to_yuv420p(small)
        sent.append(yuv)
        if index % psnr_every == 0:
            original = luma_limited(bgr)
            originals[index] = original
            upscaled = cv2.resize(yuv[:SENT_H], (FULL_W, FULL_H), interpolation=cv2.INTER_CUBIC)
            reference[index] = psnr_y(upscaled, original, exclude)
    if not sent:
        raise SourceError(f"the source gave no frames: {description}")
    return Source(sent, fps, originals, reference, description, psnr_every)


def video_frames(path: Path, max_seconds: float = MAX_SOURCE_SECONDS) -> tuple[Iterator[np.ndarray], float]:
    """Decoded BGR frames of a video file (at most ``max_seconds`` of them) and its frame rate."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise SourceError(f"cannot open video source {path}: {exc}") from exc
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or 30
    fps = float(rate)
    limit = max(1, int(max_seconds * fps))

    def generate() -> Iterator[np.ndarray]:
        count = 0
        try:
            for decoded, frame in enumerate(container.decode(stream)):
                bgr = frame.to_ndarray(format="bgr24")
                # A fade in from black is not content: start at the first textured frame.
                if count == 0 and decoded < MAX_LEAD_IN_S * fps and float(bgr[::8, ::8].std()) < MIN_CONTENT_STD:
                    continue
                yield bgr
                count += 1
                if count >= limit:
                    break
        finally:
            container.close()

    return generate(), fps


def image_files(folder: Path) -> list[Path]:
    """The JPEG/PNG files of a folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def pan_zoom_frames(
    images: Sequence[np.ndarray], fps: float, max_seconds: float = MAX_SOURCE_SECONDS
) -> Iterator[np.ndarray]:
    """A slow Ken Burns pan and zoom across each image in turn, rendered at 1280x720.

    Motion is what makes a codec work and what a super-resolver has to keep up with; a still
    image would flatter both.
    """
    per_image = max(SECONDS_PER_IMAGE, max_seconds / len(images))
    frames_per_image = max(1, round(per_image * fps))
    total = min(len(images) * frames_per_image, max(1, round(max_seconds * fps)))
    # Each image once at ~1.25x the output size, so the per-frame warp only shrinks a little.
    prepared = [cover(img, round(FULL_W * 1.25), round(FULL_H * 1.25)) for img in images]
    for n in range(total):
        which, step = divmod(n, frames_per_image)
        img = prepared[which % len(prepared)]
        p = step / max(1, frames_per_image - 1)
        yield _pan_zoom(img, p, reverse=bool(which % 2))


def _pan_zoom(img: np.ndarray, p: float, reverse: bool) -> np.ndarray:
    """One frame at progress ``p`` (0..1): a window shrinking from 100% to 85% and drifting sideways."""
    h, w = img.shape[:2]
    zoom = 1.0 + 0.18 * p
    win_w = w / zoom
    win_h = win_w * FULL_H / FULL_W
    drift = p if not reverse else 1.0 - p
    cx = win_w / 2 + (w - win_w) * drift
    cy = h / 2 + (h - win_h) / 2 * (drift - 0.5)
    s = FULL_W / win_w
    matrix = np.array([[s, 0.0, FULL_W / 2 - s * cx], [0.0, s, FULL_H / 2 - s * cy]], dtype=np.float64)
    return cv2.warpAffine(img, matrix, (FULL_W, FULL_H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def load_source(path: str | Path | None, fps: float, psnr_every: int = 5) -> Source:
    """The default or given source, pre-rendered (video file, image folder or single image)."""
    if path is None:
        if DEFAULT_VIDEO.is_file():
            path = DEFAULT_VIDEO
        elif SAMPLES_DIR.is_dir() and image_files(SAMPLES_DIR):
            path = SAMPLES_DIR
        else:
            raise SourceError(f"no source: neither {DEFAULT_VIDEO} nor images in {SAMPLES_DIR}; pass --source")
    path = Path(path)
    started = time.monotonic()
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        files = image_files(path) if path.is_dir() else [path]
        images = [img for img in (cv2.imread(str(f), cv2.IMREAD_COLOR) for f in files) if img is not None]
        if not images:
            raise SourceError(f"no readable JPEG/PNG images in {path}")
        source = prepare_source(
            pan_zoom_frames(images, fps), fps, psnr_every, f"{len(images)} images from {path}, panned"
        )
    elif path.is_file():
        frames, video_fps = video_frames(path)
        source = prepare_source(frames, video_fps, psnr_every, f"video {path}")
    else:
        raise SourceError(f"source not found: {path}")
    log.info(
        "source: %s, %d frames at %.3g fps (%.1f s, looped), rendered in %.1f s",
        source.description,
        len(source.sent),
        source.fps,
        len(source.sent) / source.fps,
        time.monotonic() - started,
    )
    return source


# --------------------------------------------------------------------------- the uplink


@dataclass
class SentFrame:
    """What the receive side needs to know about a sent frame."""

    time: float  # time.monotonic() when the frame was handed to the encoder
    index: int  # source frame index (picks the PSNR original)


class NumberedTrack(VideoStreamTrack):
    """The uplink: source frames at ``fps``, each with its number drawn in, pts on the 90 kHz clock."""

    kind = "video"

    def __init__(self, source: Source, fps: float, duration_s: float) -> None:
        super().__init__()
        self.source = source
        self.period = 1.0 / fps
        self.duration_s = duration_s
        self.sent: dict[int, SentFrame] = {}  # wrapped frame number -> send record
        self.count = 0
        self.first_time: float | None = None
        self.last_time: float | None = None
        self.done = asyncio.Event()
        self._next: float | None = None
        # pts from the frame number (a camera's steady clock) rather than from the time each frame went out: the
        # RTP timestamps then step by exactly 90000 / fps per frame, so a viewer can number frames from them.
        self.steady_pts = False

    def pts_of(self, elapsed_s: float) -> int:
        """The pts (90 kHz) of the frame being sent now, ``elapsed_s`` after the first one."""
        if self.steady_pts:
            return int(round(self.count * CLOCK_RATE * self.period))
        return int(round(elapsed_s * CLOCK_RATE))

    async def recv(self) -> av.VideoFrame:
        now = time.monotonic()
        if self._next is None:
            self._next = now
        if self.first_time is not None and self._next - self.first_time > self.duration_s - self.period / 2:
            self.done.set()
            await asyncio.Event().wait()  # sending is over; aiortc cancels this on close
        wait = self._next - now
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -2 * self.period:
            self._next = now  # the encoder fell behind: drop the backlog rather than burst
        self._next += self.period
        return self._make_frame()

    def _make_frame(self) -> av.VideoFrame:
        now = time.monotonic()
        if self.first_time is None:
            self.first_time = now
        elapsed = now - self.first_time
        index = self.source.index_for(elapsed)
        yuv = self.source.sent[index].copy()
        number = self.count % framecode.MODULUS
        framecode.embed(yuv[:SENT_H], number)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = self.pts_of(elapsed)
        frame.time_base = Fraction(1, CLOCK_RATE)
        self.count += 1
        sent_at = time.monotonic()
        self.sent[number] = SentFrame(sent_at, index)
        self.last_time = sent_at
        return frame
