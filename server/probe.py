"""Headless probe: send numbered 640x360 frames to the server and measure both streams it returns.

    python -m server.probe --url http://127.0.0.1:8080 --seconds 20 [--json] [--source PATH] [--fps 30]

Each sent frame carries its number in its pixels (:mod:`server.framecode`), because nothing else
survives the server's decode / upscale / re-encode. That number gives, per returned frame, the
latency (receipt time minus the time the frame was handed to the encoder) and the 1280x720
original to compare against for PSNR-Y. The source is real photographic content (Big Buck Bunny
by default), pre-rendered once so the probe costs little CPU while it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import aiohttp
import av
import cv2
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import MediaStreamError

from server import framecode
from server.budget import STAGES
from server.engine import plane_view
from server.metrics import FreezeDetector, percentile
from server.receiver import attach as attach_resilient
from server.receiver import sender_rtt_ms

log = logging.getLogger("server.probe")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VIDEO = REPO_ROOT.parent / "shared" / "data" / "video" / "bbb_opening_720p24_00-15s.webm"
SAMPLES_DIR = REPO_ROOT / "client_web" / "samples"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

FULL_W, FULL_H = 1280, 720  # the original, and what SR-on should return
SENT_W, SENT_H = 640, 360  # what is sent, and what SR-off should return
CLOCK_RATE = 90_000  # RTP video clock: pts unit
CODE_MARGIN = 8  # reference px around the frame code left out of PSNR (codec/scaler ringing)
MAX_SOURCE_SECONDS = 10.0  # pre-rendered frames, then the source loops
SECONDS_PER_IMAGE = 2.0
MIN_CONTENT_STD = 20.0  # leading video frames flatter than this (a fade from black) are skipped...
MAX_LEAD_IN_S = 5.0  # ...for at most this long
GROWTH_WINDOW_S = 5.0
STREAM_INDEX = {1: "sr", 2: "raw"}  # transceiver index -> stream name (0 is the uplink)


class ProbeError(RuntimeError):
    """The probe could not run: server unreachable, refused the offer, or never connected."""


# --------------------------------------------------------------------------- pure measurements


def frame_rate(times: Sequence[float]) -> float:
    """Frames per second over the span from first to last receipt (0 with fewer than two frames)."""
    if len(times) < 2:
        return 0.0
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else 0.0


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


def recovery_after(times: Sequence[float], change_at: float, fps: float) -> dict[str, float | int | None]:
    """How the stream behaved after a network change at ``change_at`` (monotonic seconds).

    ``recovery_ms``: from the change to the first received frame after which no gap between frames
    exceeds the freeze threshold at the sent rate (max(3 / fps, 1 / fps + 0.15) s); None if it never
    settles. Also the frame rate over the time after the change plus one second.
    """
    threshold = max(3.0 / fps, 1.0 / fps + 0.150)
    after = [t for t in times if t >= change_at]
    long_gaps = [b for a, b in zip(after, after[1:]) if b - a >= threshold]
    settled_at = long_gaps[-1] if long_gaps else (after[0] if after else None)
    late = [t for t in after if t >= change_at + 1.0]
    return {
        "recovery_ms": _r((settled_at - change_at) * 1000.0) if settled_at is not None else None,
        "frames_after": len(after),
        "fps_from_1s_after": _r(frame_rate(late)),
    }


def latency_summary(
    samples: Sequence[tuple[float, float]], window_s: float = GROWTH_WINDOW_S
) -> dict[str, float | None]:
    """p50/p95/max of latencies, and the medians of the first and last ``window_s`` of sending.

    ``samples`` are ``(send_time, latency_ms)``; the windows are by send time, so frames still in
    flight at the end do not count as growth.
    """
    lat = [ms for _, ms in samples]
    out: dict[str, float | None] = {
        "p50": _r(percentile(lat, 50)),
        "p95": _r(percentile(lat, 95)),
        "max": _r(max(lat) if lat else None),
        "first5s_p50": None,
        "last5s_p50": None,
    }
    if samples:
        first = min(t for t, _ in samples)
        last = max(t for t, _ in samples)
        out["first5s_p50"] = _r(percentile([ms for t, ms in samples if t < first + window_s], 50))
        out["last5s_p50"] = _r(percentile([ms for t, ms in samples if t > last - window_s], 50))
    return out


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


# --------------------------------------------------------------------------- the source


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
        raise ProbeError(f"the source gave no frames: {description}")
    return Source(sent, fps, originals, reference, description, psnr_every)


def video_frames(path: Path, max_seconds: float = MAX_SOURCE_SECONDS) -> tuple[Iterator[np.ndarray], float]:
    """Decoded BGR frames of a video file (at most ``max_seconds`` of them) and its frame rate."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise ProbeError(f"cannot open video source {path}: {exc}") from exc
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
            raise ProbeError(f"no source: neither {DEFAULT_VIDEO} nor images in {SAMPLES_DIR}; pass --source")
    path = Path(path)
    started = time.monotonic()
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        files = image_files(path) if path.is_dir() else [path]
        images = [img for img in (cv2.imread(str(f), cv2.IMREAD_COLOR) for f in files) if img is not None]
        if not images:
            raise ProbeError(f"no readable JPEG/PNG images in {path}")
        source = prepare_source(pan_zoom_frames(images, fps), fps, psnr_every, f"{len(images)} images from {path}, panned")
    elif path.is_file():
        frames, video_fps = video_frames(path)
        source = prepare_source(frames, video_fps, psnr_every, f"video {path}")
    else:
        raise ProbeError(f"source not found: {path}")
    log.info(
        "source: %s, %d frames at %.3g fps (%.1f s, looped), rendered in %.1f s",
        source.description, len(source.sent), source.fps, len(source.sent) / source.fps, time.monotonic() - started,
    )
    return source


# --------------------------------------------------------------------------- sending


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

    async def recv(self) -> av.VideoFrame:  # type: ignore[override]
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
        frame.pts = int(round(elapsed * CLOCK_RATE))
        frame.time_base = Fraction(1, CLOCK_RATE)
        self.count += 1
        sent_at = time.monotonic()
        self.sent[number] = SentFrame(sent_at, index)
        self.last_time = sent_at
        return frame


# --------------------------------------------------------------------------- receiving


class ArrivalWatch:
    """When each returned frame's last RTP packet reached the probe, looked up by the decoded frame's pts.

    Why: it splits the returned frame's latency into the network part and the decode part. This reads
    aiortc internals (the receiver's timestamp mapper); when they change, it quietly gives None.
    """

    MAX_PENDING = 1000

    def __init__(self, receiver: object) -> None:
        self.receiver = receiver
        self.times: dict[int, float] = {}  # RTP timestamp -> time.monotonic() of its marker packet
        original = getattr(receiver, "_handle_rtp_packet", None)
        if original is None:
            return

        async def handle(packet, *args, **kwargs):  # type: ignore[no-untyped-def]
            if getattr(packet, "marker", 0) and packet.timestamp not in self.times:
                self.times[packet.timestamp] = time.monotonic()
                if len(self.times) > self.MAX_PENDING:
                    for stale in list(self.times)[: self.MAX_PENDING // 2]:
                        del self.times[stale]
            await original(packet, *args, **kwargs)

        receiver._handle_rtp_packet = handle  # type: ignore[attr-defined]

    def arrival_of(self, pts: int | None) -> float | None:
        """Arrival time of the frame whose decoded pts is ``pts`` (aiortc: RTP timestamp - first one)."""
        mapper = getattr(self.receiver, "_RTCRtpReceiver__timestamp_mapper", None)
        origin = getattr(mapper, "_origin", None)
        if origin is None or pts is None:
            return None
        return self.times.pop((origin + pts) % (1 << 32), None)


@dataclass
class StreamStats:
    """Everything measured on one returned stream."""

    name: str
    frames: int = 0
    width: int = 0
    height: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (send time, ms)
    arrival_latencies: list[float] = field(default_factory=list)  # ms, to the last RTP packet
    psnr: list[float] = field(default_factory=list)
    unreadable: int = 0  # no intact frame code
    unknown: int = 0  # a code for a number never sent
    repeats: int = 0  # the same number again (a frame sent back twice)
    out_of_order: int = 0  # a number lower than one already received (frames must come back in order)
    last_number: int = -1
    seen: set[int] = field(default_factory=set)
    freezes: FreezeDetector = field(default_factory=FreezeDetector)

    def report(self) -> dict:
        return {
            "frames": self.frames,
            "width": self.width,
            "height": self.height,
            "fps": _r(frame_rate(self.times)),
            "latency_ms": latency_summary(self.latencies),
            "arrival_latency_ms": {
                "p50": _r(percentile(self.arrival_latencies, 50)),
                "p95": _r(percentile(self.arrival_latencies, 95)),
            },
            "psnr_y": _r(_mean(self.psnr)),
            "psnr_frames": len(self.psnr),
            "numbered": len(self.seen),
            "unreadable": self.unreadable,
            "unknown": self.unknown,
            "repeats": self.repeats,
            "out_of_order": self.out_of_order,
            "last_number": self.last_number,
            "sizes": dict(self.sizes),
            "freezes": self.freezes.stats(),
        }


def luma_plane(frame: av.VideoFrame) -> np.ndarray:
    """The Y plane of a decoded frame as a ``(height, width)`` view (converted if not yuv420p)."""
    if frame.format.name not in ("yuv420p", "yuvj420p"):
        frame = frame.reformat(format="yuv420p")
    return plane_view(frame, 0)


def measure_frame(
    stats: StreamStats, y: np.ndarray, received: float, sent: dict[int, SentFrame], source: Source,
    arrived: float | None = None,
) -> None:
    """Count one returned frame, its latency, and its PSNR-Y when its original is kept.

    ``received`` is when the decoded frame came out of the track; ``arrived`` (optional) when its
    last RTP packet reached the probe.
    """
    height, width = y.shape
    stats.frames += 1
    stats.width, stats.height = width, height
    key = f"{width}x{height}"
    stats.sizes[key] = stats.sizes.get(key, 0) + 1
    stats.times.append(received)
    stats.freezes.frame(received)
    number = framecode.read(y)
    if number is None:
        stats.unreadable += 1
        return
    record = sent.get(number)
    if record is None:
        stats.unknown += 1
        return
    if number in stats.seen:
        stats.repeats += 1
        return
    stats.seen.add(number)
    if number < stats.last_number:
        stats.out_of_order += 1
    stats.last_number = max(stats.last_number, number)
    stats.latencies.append((record.time, (received - record.time) * 1000.0))
    if arrived is not None:
        stats.arrival_latencies.append((arrived - record.time) * 1000.0)
    original = source.originals.get(record.index)
    if original is not None:
        stats.psnr.append(psnr_y(to_full_size(y), original, framecode.region(FULL_W, FULL_H, margin=CODE_MARGIN)))


def to_full_size(y: np.ndarray) -> np.ndarray:
    """A returned luma plane at 1280x720: as is when it already is, else bicubic (SR-off is 2x)."""
    if y.shape == (FULL_H, FULL_W):
        return y
    return cv2.resize(y, (FULL_W, FULL_H), interpolation=cv2.INTER_CUBIC)


async def consume(
    track: MediaStreamTrack, stats: StreamStats, uplink: NumberedTrack, source: Source,
    watch: ArrivalWatch | None = None,
) -> None:
    """Read a returned track until it ends, measuring every frame as soon as it is out of the decoder."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        received = time.monotonic()
        arrived = watch.arrival_of(frame.pts) if watch is not None else None
        measure_frame(stats, luma_plane(frame), received, uplink.sent, source, arrived)


# --------------------------------------------------------------------------- the report


@dataclass
class ProbeReport:
    """The probe's findings; ``to_json`` is the machine-readable form, ``to_text`` the human one."""

    url: str
    session_id: str | None
    sent: int
    seconds: float
    fps: float
    skipped: int | None
    streams: dict[str, dict]
    psnr_reference: dict[str, float | int | None]
    source: str
    psnr_every: int = 5
    server_session: dict | None = None
    network: dict | None = None  # the cap, the probe's achieved send bitrate, the server's /network counters
    server_cpu: dict | None = None  # the server process's cores in use while the probe sent (see cpu_between)

    def targets(self) -> dict[str, bool]:
        """The system's acceptance targets, checked on the SR-on stream."""
        sr = self.streams.get("sr", {})
        lat = sr.get("latency_ms", {})
        first, last = lat.get("first5s_p50"), lat.get("last5s_p50")
        return {
            "sr_1280x720": (sr.get("width"), sr.get("height")) == (FULL_W, FULL_H),
            "sr_fps_ge_20": (sr.get("fps") or 0) >= 20,
            "sr_latency_p95_le_250ms": lat.get("p95") is not None and lat["p95"] <= 250,
            "sr_no_latency_growth_50ms": first is not None and last is not None and last - first <= 50,
        }

    def budget(self) -> dict[str, dict]:
        """The server's per-stage latency (p50/p95 ms) of each returned stream, from its /stats."""
        streams = (self.server_session or {}).get("streams") or {}
        return {name: s["budget_ms"] for name, s in streams.items() if s and s.get("budget_ms")}

    def governor(self) -> dict | None:
        """What the server's SR stage did under load: generator or bicubic, and on how many frames."""
        return (self.server_session or {}).get("governor")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["freezes"] = {name: s.get("freezes") for name, s in self.streams.items()}
        out["latency_ms"] = {name: s.get("latency_ms") for name, s in self.streams.items()}
        out["budget_ms"] = self.budget()
        out["governor"] = self.governor()
        out["targets"] = self.targets()
        return _finite(out)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def to_text(self) -> str:
        lines = [
            f"probe of {self.url} (session {self.session_id}), source: {self.source}",
            f"sent {self.sent} frames of {SENT_W}x{SENT_H} in {self.seconds:.1f} s at {self.fps:g} fps"
            f" (frame number drawn in the top-left {framecode.COLS * framecode.BLOCK}x{framecode.ROWS * framecode.BLOCK} px)",
            f"frames the server's SR stage skipped (/stats): {_fmt(self.skipped)}",
            "",
            "stream              frames  size       fps    latency p50 / p95 / max ms   first 5 s / last 5 s p50 ms",
        ]
        labels = {"sr": "sr  (SR on, 720p)", "raw": "raw (SR off)"}
        for name in ("sr", "raw"):
            s = self.streams.get(name)
            if s is None:
                lines.append(f"{labels[name]:<19} not received")
                continue
            lat = s["latency_ms"]
            lines.append(
                f"{labels[name]:<19} {s['frames']:>6}  {s['width']}x{s['height']:<5} {_fmt(s['fps']):>6}"
                f"   {_fmt(lat['p50']):>7} / {_fmt(lat['p95']):>7} / {_fmt(lat['max']):>7}"
                f"       {_fmt(lat['first5s_p50']):>7} / {_fmt(lat['last5s_p50'])}"
            )
            arrival = s["arrival_latency_ms"]
            if arrival["p50"] is not None:
                lines.append(
                    f"{'':<19} to the frame's last RTP packet (before decode):"
                    f" p50 {_fmt(arrival['p50'])} / p95 {_fmt(arrival['p95'])} ms"
                )
            freezes = s.get("freezes") or {}
            lines.append(
                f"{'':<19} freezes (WebRTC freezeCount rule): {freezes.get('freezeCount')},"
                f" {_fmt(freezes.get('totalFreezesDuration'))} s in all; longest gap {_fmt(freezes.get('longestGapMs'))} ms"
            )
            if s["unreadable"] or s["unknown"] or s["repeats"]:
                lines.append(
                    f"{'':<19} ({s['unreadable']} without a readable number, {s['unknown']} unknown, "
                    f"{s['repeats']} repeats)"
                )
        lines += self._budget_lines()
        cpu = self.server_cpu
        if cpu:
            lines.append(f"server CPU while sending: {cpu['cores_used']:.2f} of {cpu['machine_cores']} cores for"
                         f" {cpu['sessions']} session(s): {cpu['cores_per_session']} cores per session,"
                         f" {_fmt(cpu['sessions_per_core'])} sessions per core")
        net = self.network or {}
        if net:
            server = net.get("server") or {}
            lines += ["", f"network: cap {_fmt(net.get('cap_kbps'))} kbps, probe sent {_fmt(net.get('sent_kbps'))} kbps"
                      f" ({_fmt(net.get('packets_sent'))} RTP packets)"]
            if server:
                lines.append(f"  server's impairment: {json.dumps(server, sort_keys=True)}")
            change = net.get("change")
            if change:
                lines.append(f"  network changed to {change['settings']} after {change['after_s']:g} s:")
                for name, rec in change["streams"].items():
                    lines.append(f"    {name}: back to a freeze-free stream {_fmt(rec['recovery_ms'])} ms after the change;"
                                 f" {_fmt(rec['fps_from_1s_after'])} fps from 1 s after it")
        box = framecode.region(FULL_W, FULL_H, margin=CODE_MARGIN)
        ref = self.psnr_reference
        lines += [
            "",
            f"PSNR-Y (dB) against the 1280x720 original's luma, excluding the top-left {box[2]}x{box[3]} px"
            f" frame-code area, on every {self.psnr_every}th source frame:",
            f"  SR-on stream as received (1280x720):                 {_fmt(self.streams.get('sr', {}).get('psnr_y'))}",
            f"  SR-off stream as received, bicubic 2x:               {_fmt(self.streams.get('raw', {}).get('psnr_y'))}",
            f"  reference: sent 360p before compression, bicubic 2x: {_fmt(ref.get('bicubic_sent'))}",
            "",
            "latency growth on the SR stream (last 5 s p50 - first 5 s p50): "
            + _fmt(_diff(self.streams.get("sr", {}).get("latency_ms", {}))) + " ms",
            "targets: " + ", ".join(f"{k} {'ok' if v else 'FAIL'}" for k, v in self.targets().items()),
        ]
        return "\n".join(lines)


    def _budget_lines(self) -> list[str]:
        budget = self.budget()
        if not budget:
            return []
        lines = ["", "server latency budget, ms p50 / p95 (receive = first packet to decoder; total = first packet to sent):",
                 f"{'stream':<8}" + "".join(f"{stage:>15}" for stage in STAGES)]
        for name, stages in budget.items():
            cells = (f"{_fmt(stages[st]['p50'])} / {_fmt(stages[st]['p95'])}" for st in STAGES if st in stages)
            lines.append(f"{name:<8}" + "".join(f"{cell:>15}" for cell in cells))
        gov = self.governor()
        if gov:
            lines.append(f"SR stage under load: {gov['mode']}, generator on {_fmt(gov['share'])} of frames now;"
                         f" {gov['generator_frames']} generator / {gov['bicubic_frames']} bicubic frames;"
                         f" generator p50 {_fmt(gov['generator_ms_p50'])} ms against a {_fmt(gov['budget_ms'])} ms budget")
        return lines


def build_report(
    url: str, session_id: str | None, uplink: NumberedTrack, fps: float, streams: dict[str, StreamStats],
    source: Source, server_session: dict | None, psnr_every: int = 5, network: dict | None = None,
) -> ProbeReport:
    """Summarise the raw measurements."""
    seconds = 0.0
    if uplink.first_time is not None and uplink.last_time is not None:
        seconds = uplink.last_time - uplink.first_time + 1.0 / fps
    used = {rec.index for rec in uplink.sent.values() if rec.index in source.reference_psnr}
    reference = [source.reference_psnr[i] for i in used]
    skipped = server_session.get("skipped") if server_session else None
    return ProbeReport(
        url=url,
        session_id=session_id,
        sent=uplink.count,
        seconds=_r(seconds) or 0.0,
        fps=fps,
        skipped=skipped,
        streams={name: stats.report() for name, stats in streams.items()},
        psnr_reference={"bicubic_sent": _r(_mean(reference)), "frames": len(reference)},
        source=source.description,
        psnr_every=psnr_every,
        server_session=server_session,
        network=network,
    )


# --------------------------------------------------------------------------- signaling and the run


async def post_offer(http: aiohttp.ClientSession, url: str, sdp: str) -> dict:
    """POST the offer; the answer's JSON, or a ProbeError that says what went wrong."""
    endpoint = url.rstrip("/") + "/offer"
    try:
        async with http.post(endpoint, json={"sdp": sdp, "type": "offer", "sr": True}) as resp:
            body = await resp.text()
            if resp.status >= 400:
                raise ProbeError(f"server answered {resp.status} to POST {endpoint}: {_error_text(body)}")
    except aiohttp.ClientConnectionError as exc:
        raise ProbeError(f"cannot reach the server at {url}: {exc}") from exc
    except asyncio.TimeoutError as exc:
        raise ProbeError(f"no answer from {endpoint} in time") from exc
    try:
        answer = json.loads(body)
        if answer.get("type") != "answer" or not answer.get("sdp"):
            raise ValueError("expected {'sdp', 'type': 'answer', 'id'}")
    except (ValueError, AttributeError) as exc:
        raise ProbeError(f"POST {endpoint} gave no usable answer ({exc}): {body[:200]!r}") from exc
    return answer


async def fetch_process(http: aiohttp.ClientSession, url: str) -> dict | None:
    """The server's ``process`` block of GET /stats (its CPU time), or None when it cannot be had."""
    try:
        async with http.get(url.rstrip("/") + "/stats") as resp:
            body = await resp.json(content_type=None) if resp.status < 400 else {}
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        log.warning("GET /stats failed: %s", exc)
        return None
    process = body.get("process") if isinstance(body, dict) else None
    return process if isinstance(process, dict) and "cpu_s" in process else None


def cpu_between(before: dict | None, after: dict | None) -> dict | None:
    """Cores the server used between two readings, and per session (the per-stream CPU cost)."""
    if not before or not after:
        return None
    wall = after["monotonic_s"] - before["monotonic_s"]
    if wall <= 0:
        return None
    cores = (after["cpu_s"] - before["cpu_s"]) / wall
    sessions = max(1, int(after.get("sessions") or 1))
    return {"seconds": _r(wall), "cores_used": _r(cores, 3), "sessions": sessions,
            "cores_per_session": _r(cores / sessions, 3),
            "sessions_per_core": _r(sessions / cores) if cores > 0 else None,
            "machine_cores": after.get("cores")}


async def fetch_session_stats(http: aiohttp.ClientSession, url: str, session_id: str | None) -> dict | None:
    """This session's entry in GET /stats, or None (logged) when it cannot be had."""
    try:
        async with http.get(url.rstrip("/") + "/stats") as resp:
            if resp.status >= 400:
                log.warning("GET /stats answered %d", resp.status)
                return None
            stats = await resp.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        log.warning("GET /stats failed: %s", exc)
        return None
    sessions = stats.get("sessions", []) if isinstance(stats, dict) else []
    for entry in sessions:
        if isinstance(entry, dict) and str(entry.get("id")) == str(session_id):
            return entry
    log.warning("session %s not in GET /stats (%d sessions listed)", session_id, len(sessions))
    return None


async def change_network(http: aiohttp.ClientSession, url: str, after_s: float, settings: dict) -> float | None:
    """POST /network ``settings`` after ``after_s`` seconds of sending; the monotonic time it took effect."""
    await asyncio.sleep(after_s)
    async with http.post(url.rstrip("/") + "/network", json=settings) as resp:
        body = await resp.text()
        if resp.status >= 400:
            log.error("POST /network %s answered %d: %s", settings, resp.status, _error_text(body))
            return None
    log.info("network changed to %s", settings)
    return time.monotonic()


async def network_report(http: aiohttp.ClientSession, url: str, pc: RTCPeerConnection, uplink: NumberedTrack) -> dict:
    """The cap the server announced, the bitrate the probe's encoder achieved, the server's link counters."""
    report: dict = {"cap_kbps": None, "sent_kbps": None, "packets_sent": None, "server": None}
    try:
        async with http.get(url.rstrip("/") + "/network") as resp:
            if resp.status < 400:
                report["server"] = await resp.json(content_type=None)
                settings = report["server"].get("settings", report["server"]) if isinstance(report["server"], dict) else {}
                report["cap_kbps"] = settings.get("kbps") or None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        log.warning("GET /network failed: %s", exc)
    sender = pc.getTransceivers()[0].sender
    for stat in (await sender.getStats()).values():
        if stat.type == "outbound-rtp":
            span = (uplink.last_time or 0.0) - (uplink.first_time or 0.0)
            report["packets_sent"] = stat.packetsSent
            if span > 0:
                report["sent_kbps"] = _r(stat.bytesSent * 8 / span / 1000.0, 1)
    return report


async def delete_session(http: aiohttp.ClientSession, url: str, session_id: str) -> None:
    """DELETE /sessions/{id}; failures are logged, never raised (this runs on the way out)."""
    try:
        async with http.delete(f"{url.rstrip('/')}/sessions/{session_id}") as resp:
            if resp.status >= 400 and resp.status != 404:
                log.warning("DELETE /sessions/%s answered %d", session_id, resp.status)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.warning("DELETE /sessions/%s failed: %s", session_id, exc)


async def wait_connected(pc: RTCPeerConnection, timeout_s: float) -> None:
    """Wait for ICE+DTLS, or raise ProbeError when it fails or takes longer than ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while pc.connectionState != "connected":
        if pc.connectionState in ("failed", "closed"):
            raise ProbeError(f"peer connection {pc.connectionState} before it connected")
        if time.monotonic() > deadline:
            raise ProbeError(f"peer connection not connected after {timeout_s:g} s (state {pc.connectionState})")
        await asyncio.sleep(0.05)


async def wait_sent(pc: RTCPeerConnection, uplink: NumberedTrack, timeout_s: float) -> None:
    """Wait until the uplink has sent its frames; a lost connection or a stall is a ProbeError."""
    deadline = time.monotonic() + timeout_s
    while not uplink.done.is_set():
        if pc.connectionState in ("failed", "closed"):
            raise ProbeError(f"peer connection {pc.connectionState} after {uplink.count} frames were sent")
        if time.monotonic() > deadline:
            raise ProbeError(f"sending did not finish: {uplink.count} frames sent in {timeout_s:g} s")
        await asyncio.sleep(0.1)


async def log_progress(uplink: NumberedTrack, streams: dict[str, StreamStats]) -> None:
    """Once a second: frames sent and received, so a stalled run is visible while it runs."""
    while True:
        await asyncio.sleep(1.0)
        received = ", ".join(f"{name} {s.frames}" for name, s in streams.items())
        log.info("sent %d, received %s", uplink.count, received)


async def run_probe(
    url: str,
    seconds: float,
    source: str | Path | Source | None = None,
    fps: float = 30.0,
    psnr_every: int = 5,
    grace_s: float = 1.5,
    connect_timeout_s: float = 20.0,
    network_change: tuple[float, dict] | None = None,
) -> ProbeReport:
    """Connect to the server, send numbered frames for ``seconds``, and measure both returned streams.

    The peer connection is closed and the session deleted on every exit path.
    """
    src = source if isinstance(source, Source) else load_source(source, fps, psnr_every)
    uplink = NumberedTrack(src, fps, seconds)
    streams = {name: StreamStats(name) for name in STREAM_INDEX.values()}
    pc = RTCPeerConnection()
    tasks: list[asyncio.Task] = []
    session_id: str | None = None
    server_session: dict | None = None
    network: dict | None = None
    resilient: list = []
    server_cpu: dict | None = None

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        transceivers = pc.getTransceivers()
        index = next((i for i, t in enumerate(transceivers) if t.receiver.track is track), None)
        name = STREAM_INDEX.get(index) if index is not None else None
        if name is None:
            log.warning("unexpected %s track on transceiver %s, ignored", track.kind, index)
            return
        receiver = transceivers[index].receiver
        watch = ArrivalWatch(receiver)
        # Receive like a browser: each frame released at its last packet, losses NACKed, no stall.
        resilient.append(attach_resilient(receiver, rtt_ms=sender_rtt_ms(pc)))
        tasks.append(asyncio.ensure_future(consume(track, streams[name], uplink, src, watch)))

    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        try:
            pc.addTransceiver(uplink, direction="sendonly")
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            answer = await post_offer(http, url, pc.localDescription.sdp)
            session_id = str(answer["id"]) if answer.get("id") is not None else None
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            except Exception as exc:  # aiortc raises ValueError, InvalidAccessError, ...
                raise ProbeError(f"the server's answer cannot be applied: {exc or type(exc).__name__}") from exc
            await wait_connected(pc, connect_timeout_s)
            log.info("connected (session %s), sending for %g s", session_id, seconds)
            cpu_before = await fetch_process(http, url)
            tasks.append(asyncio.ensure_future(log_progress(uplink, streams)))
            if network_change is not None:
                change = asyncio.ensure_future(change_network(http, url, *network_change))
                tasks.append(change)
            await wait_sent(pc, uplink, seconds + connect_timeout_s)
            server_cpu = cpu_between(cpu_before, await fetch_process(http, url))
            await asyncio.sleep(grace_s)  # let frames still in flight arrive
            server_session = await fetch_session_stats(http, url, session_id)
            network = await network_report(http, url, pc, uplink)
            if network_change is not None and change.done() and not change.cancelled() and change.result():
                changed_at = change.result()
                network["change"] = {"after_s": network_change[0], "settings": network_change[1],
                                     "streams": {n: recovery_after(st.times, changed_at, fps) for n, st in streams.items()}}
        finally:
            for receiver in resilient:
                receiver.stop()
            await pc.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if session_id is not None:
                await delete_session(http, url, session_id)
    report = build_report(url, session_id, uplink, fps, streams, src, server_session, src.psnr_every, network)
    report.server_cpu = server_cpu
    return report


async def run_clients(
    url: str, seconds: float, clients: int, source: str | Path | Source | None = None, fps: float = 30.0,
    psnr_every: int = 5, network_change: tuple[float, dict] | None = None,
) -> list[ProbeReport]:
    """``clients`` probes at once against one server, sharing one pre-rendered source (so the probe's own
    CPU cost stays small), each with its own session; their reports in client order."""
    src = source if isinstance(source, Source) else load_source(source, fps, psnr_every)
    return list(await asyncio.gather(*(
        run_probe(url, seconds, source=src, fps=fps, psnr_every=psnr_every,
                  network_change=network_change if i == 0 else None)
        for i in range(clients)
    )))


def clients_summary(reports: Sequence[ProbeReport]) -> dict:
    """Per-stream fps and latency of every client side by side, and their medians (the scale figures)."""
    rows = []
    for i, report in enumerate(reports):
        row: dict = {"client": i, "session_id": report.session_id, "sent": report.sent, "skipped": report.skipped}
        for name, stream in report.streams.items():
            row[name] = {"frames": stream["frames"], "fps": stream["fps"], "latency_ms": stream["latency_ms"]}
        rows.append(row)
    medians = {}
    for name in ("sr", "raw"):
        fps = [r[name]["fps"] for r in rows if name in r]
        p95 = [r[name]["latency_ms"]["p95"] for r in rows if name in r and r[name]["latency_ms"]["p95"] is not None]
        medians[name] = {"fps": _r(percentile(fps, 50)), "latency_p95_ms": _r(percentile(p95, 50))}
    # Client 0's sending window; the others sent over the same seconds.
    return {"clients": len(reports), "per_client": rows, "median": medians,
            "server_cpu": reports[0].server_cpu if reports else None}


# --------------------------------------------------------------------------- helpers and CLI


def _error_text(body: str) -> str:
    """The ``error`` of a JSON error body (the server's contract), else the body's start."""
    try:
        message = json.loads(body).get("error")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else body[:500].strip()


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _diff(lat: dict) -> float | None:
    first, last = lat.get("first5s_p50"), lat.get("last5s_p50")
    return None if first is None or last is None else round(last - first, 2)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _finite(value: object) -> object:
    """JSON has no inf/NaN: such figures become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to send")
    parser.add_argument("--fps", type=float, default=30.0, help="frames per second sent")
    parser.add_argument("--source", default=None, help="video file, image or folder of images (default: Big Buck Bunny)")
    parser.add_argument("--psnr-every", type=int, default=5, help="PSNR on every Nth source frame")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--clients", type=int, default=1, help="concurrent clients, each with its own session (default 1)")
    parser.add_argument("--network-change", metavar="SECONDS:JSON", default=None,
                        help="after SECONDS of sending, POST JSON to /network, e.g. '20:{\"loss\": 0}', and report the recovery")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or not 1 <= args.fps <= 120 or args.psnr_every < 1 or not 1 <= args.clients <= 64:
        parser.error("need --seconds > 0, --fps in 1..120, --psnr-every >= 1 and --clients in 1..64")
    if args.network_change is not None:
        when, _, body = args.network_change.partition(":")
        try:
            args.network_change = (float(when), json.loads(body))
        except ValueError:
            parser.error("--network-change takes SECONDS:JSON, for example '20:{\"loss\": 0}'")
        if not isinstance(args.network_change[1], dict):
            parser.error("--network-change: the JSON must be an object")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        for noisy in ("aioice", "aiortc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        reports = asyncio.run(
            run_clients(args.url, args.seconds, args.clients, source=args.source, fps=args.fps,
                        psnr_every=args.psnr_every, network_change=args.network_change)
        )
    except ProbeError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.clients > 1:
        for i, report in enumerate(reports):
            print(f"--- client {i}\n{report.to_text()}\n", file=sys.stderr if args.json else sys.stdout, flush=True)
        summary = clients_summary(reports)
        if args.json:
            print(json.dumps({**summary, "reports": [r.to_dict() for r in reports]}), flush=True)
        else:
            print(json.dumps({"median": summary["median"], "server_cpu": summary["server_cpu"]}), flush=True)
        return 0
    report = reports[0]
    if args.json:
        print(report.to_text(), file=sys.stderr, flush=True)  # stdout stays one JSON object
        print(report.to_json(), flush=True)
    else:
        print(report.to_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
