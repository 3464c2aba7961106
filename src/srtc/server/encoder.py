"""The return streams' VP8 encoder: aiortc's, tuned for frames that are already clean and upscaled.

aiortc opens libvpx with ``noise-sensitivity 4``, a temporal denoiser meant for camera noise. On the
frames this server sends back (decoded, then upscaled) it only blurs what the generator restored, and
it costs encode time. ``python -m srtc.tools.encoder_bench`` measures both settings side by side on the same
frames; docs/BENCHMARKS.md has the figures (the denoiser off: faster, and a higher PSNR-Y of the
decoded stream against the frames the encoder was given). A faster ``cpu-used`` (-10, -12) was
tried and rejected: on detailed content it lost up to 1 dB at the same bitrate.

How it plugs in (aiortc == 1.16.0, pinned): ``RTCRtpSender._next_encoded_frame`` creates its encoder
only while ``_RTCRtpSender__encoder`` is None, so :func:`install` sets one first when the negotiated
codec is VP8. :class:`ReturnVp8Encoder` opens the libvpx context itself whenever aiortc's own
``encode`` would open a new one (first frame, size change, a bitrate change over 10%), with aiortc's
settings plus :data:`OPTIONS`; aiortc's ``encode`` then finds a matching context and uses it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
from aiortc.codecs.vpx import MAX_FRAME_RATE, Vp8Encoder, number_of_threads
from aiortc.mediastreams import MediaStreamError
from av.frame import Frame

from .metrics import ByteRate
from .priority import lower_this_thread
from .return_rate import BASE_DEFAULT, RateLimits, limits

log = logging.getLogger(__name__)

VIDEO_CLOCK = Fraction(1, 90000)  # RTP's video clock: aiortc's frames carry it as their time base
OPTIONS = {"noise-sensitivity": "0"}  # on top of aiortc's own settings (cpu-used -6, realtime, CBR)
RAISE_HOLD_S = 5.0  # a higher bitrate reopens the encoder (a keyframe) at most this often
SENT_WINDOW_S = 2.0  # the window of the stream's measured send rate
CONGESTION_SHARE = 0.85  # a REMB under this share of the measured send rate is congestion


class ReturnVp8Encoder(Vp8Encoder):
    """aiortc's VP8 encoder (packetisation, keyframes) with :data:`OPTIONS`, bitrate limits that grow
    with the resolution (:mod:`srtc.server.return_rate`), and fewer reopenings when the bitrate rises.

    libvpx takes a new bitrate only in a new context, which starts with a keyframe (many bits, then a
    blurred frame while CBR recovers). aiortc reopens on every change over 10%, which a REMB ramping up
    ~8% a second triggers every second or so; here a rise waits until :data:`RAISE_HOLD_S` after the
    last opening (so it comes in fewer, larger steps; only the first REMB's rise over the start bitrate
    applies at once), and a fall, which congestion asks for, applies at once.

    ``nice``: the threads that run :meth:`encode` (and the libvpx threads they start) go this many nice
    levels below the process, so the SR stage takes the cores first (:mod:`srtc.server.priority`).
    """

    def __init__(self, nice: int = 0) -> None:
        super().__init__()
        self.nice = nice
        self._lowered: set[int] = set()  # the threads already put at ``nice``
        self.requested: int | None = None  # the last bitrate the client's REMB gave this stream (bps)
        self.reopens = 0  # contexts opened after the first one, each starting with a keyframe
        self._target = BASE_DEFAULT
        self._opened_at = -math.inf
        self._opened_on_request = False  # False: the open context runs on the start bitrate, not a REMB's
        self.ceiling: Callable[[], int | None] | None = None  # the viewer link's share for this stream (bps)
        self.congested = False  # a REMB below what is sent: the REMB rules until it is back at the ceiling
        self._sent = ByteRate(SENT_WINDOW_S)  # what the stream sends
        self._last_pts: int | None = None
        self._pts_shift = 0  # added to the source's pts since it last went back (see _monotonic)
        self.pts_shifts = 0  # times the source's pts went back
        self.errors = 0  # encodes that failed and were recovered by a fresh context
        # The viewers' rate for a relayed stream (bps, srtc.server.relay): the encode never exceeds it.
        # given the rate it would use without them (srtc.server.relay.Relay.rate_cap)
        self.relay_cap: Callable[[int], int | None] | None = None
        self.relay_capped: int | None = None  # what the relay's viewers allowed at the last frame
        self.encoded: bytes | None = None  # the last frame as libvpx coded it, before packetisation (the relay's)

    @property
    def size(self) -> tuple[int, int] | None:
        """The stream's resolution: the open context's (None before the first frame)."""
        return None if self.codec is None else (self.codec.width, self.codec.height)

    @property
    def target_bitrate(self) -> int:
        """What this frame is encoded at (aiortc's ``encode`` reopens when this moves off the context's)."""
        return self._target

    @target_bitrate.setter
    def target_bitrate(self, bps: int) -> None:
        self.requested = int(bps)

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        assert isinstance(frame, av.VideoFrame)  # a video encoder, as aiortc's own Vp8Encoder.encode asserts
        thread = threading.get_native_id()
        if self.nice and thread not in self._lowered:
            lower_this_thread(self.nice)  # before a context opens, so libvpx's threads inherit it
            self._lowered.add(thread)
        self._target = self._next_target(frame)
        self._monotonic(frame)
        if self._needs_context(frame):
            self.reopens += self.codec is not None
            self.codec = self._open(frame)
        self.encoded = None
        try:
            payloads, timestamp = super().encode(frame, force_keyframe)
        except (av.error.FFmpegError, ValueError) as exc:
            payloads, timestamp = self._recover(frame, exc)
        self._sent.add(sum(len(p) for p in payloads), time.monotonic())
        return payloads, timestamp

    def _monotonic(self, frame: av.VideoFrame) -> None:
        """Keep the stream's pts increasing, shifting the frame's forward if it went back.

        libvpx refuses a frame whose pts is not after the last one (``avcodec_send_frame()`` fails) and the
        viewer's jitter buffer would too: a source whose timestamps restart must not end the stream. The
        shift holds for the frames after it, so the spacing between frames is kept. (The frame is changed
        in place: the SR track's frames are its own; a re-encoded SR-off frame is only read by the SR track
        for its timing, which the shift does not concern.)"""
        if frame.pts is None:
            return
        pts = frame.pts + self._pts_shift
        if self._last_pts is not None and pts <= self._last_pts:
            step = max(1, round(1 / (float(frame.time_base or VIDEO_CLOCK) * MAX_FRAME_RATE)))
            self._pts_shift += self._last_pts + step - pts
            pts = self._last_pts + step
            self.pts_shifts += 1
        frame.pts = pts
        self._last_pts = pts

    def _recover(self, frame: av.VideoFrame, exc: Exception) -> tuple[list[bytes], int]:
        """An encode failed: open a fresh context and try this frame once more as a keyframe; if that fails
        too, send nothing for it. Either way the stream goes on (aiortc's sender would stop for good)."""
        self.errors += 1
        log.warning(
            "return encoder failed (%s: %s); reopening it with a keyframe (%d so far)",
            type(exc).__name__,
            exc,
            self.errors,
        )
        self.reopens += 1
        self.codec = self._open(frame)
        try:
            return super().encode(frame, True)
        except (av.error.FFmpegError, ValueError) as again:
            log.warning("return encoder failed again (%s): frame skipped", again)
            self.codec = None
            return [], 0

    def _packetize(self, buffer: bytes, picture_id: int) -> list[bytes]:  # type: ignore[override]
        """aiortc's packetisation, keeping the whole coded frame for viewers of a relayed stream."""
        self.encoded = buffer
        return Vp8Encoder._packetize(buffer, picture_id)

    def sent_bps(self) -> float:
        """What this stream sent over the last :data:`SENT_WINDOW_S` (0 before two frames)."""
        return self._sent.bps()

    def stats(self) -> dict:
        width, height = self.size or (0, 0)
        return {
            "width": width,
            "height": height,
            "target_kbps": round(self._target / 1000),
            "requested_kbps": None if self.requested is None else round(self.requested / 1000),
            "max_kbps": round(self.bounds(width, height).maximum / 1000) if self.size else None,
            "sent_kbps": round(self.sent_bps() / 1000),
            "congested": self.congested,
            "errors": self.errors,
            "pts_shifts": self.pts_shifts,
            "reopens": self.reopens,
            "nice": self.nice,
            "relay_cap_kbps": None if self.relay_capped is None else round(self.relay_capped / 1000),
        }

    def _next_target(self, frame: av.VideoFrame) -> int:
        """The REMB's request within this resolution's limits (its default before any REMB); a rise
        keeps the open context's bitrate until :data:`RAISE_HOLD_S` after it was opened, except the
        first REMB's over the start bitrate, which applies at once."""
        bounds = self.bounds(frame.width, frame.height)
        if self.ceiling is not None and self.ceiling() is not None:
            wanted = self._viewer_target(bounds)
        else:
            wanted = bounds.default if self.requested is None else bounds.clamp(self.requested)
        self.relay_capped = cap = self.relay_cap(wanted) if self.relay_cap is not None else None
        if cap is not None:
            wanted = min(wanted, max(bounds.minimum, cap))
        codec = self.codec
        if codec is None or self.size != (frame.width, frame.height):
            return wanted
        held = self._opened_on_request and time.monotonic() - self._opened_at < RAISE_HOLD_S
        assert codec.bit_rate is not None  # every context is opened with a bitrate (see _open)
        if wanted > codec.bit_rate and held:
            return codec.bit_rate
        return wanted

    def _viewer_target(self, bounds: RateLimits) -> int:
        """With a viewer link: its rate, unless the REMB reports congestion (a REMB below what this stream
        sends). A receiver's REMB follows what it receives, so a REMB above that is no limit; below it, the
        REMB applies at once and rules until it climbs back to the link's rate."""
        if self.requested is None:
            return bounds.maximum
        if self.requested < CONGESTION_SHARE * self.sent_bps():
            self.congested = True
        if self.congested:
            wanted = bounds.clamp(self.requested)
            self.congested = wanted < bounds.maximum
            return wanted
        return bounds.maximum

    def bounds(self, width: int, height: int) -> RateLimits:
        """This stream's range: the viewer link's share when there is a viewer setting (start and ceiling
        alike, so the encode is as transparent as the link allows from the first frame, with no ramp of
        reopenings), else the resolution's limits (:func:`srtc.server.return_rate.limits`)."""
        own = limits(width, height)
        cap = self.ceiling() if self.ceiling is not None else None
        if cap is None:
            return own
        cap = max(own.minimum, cap)
        return RateLimits(own.minimum, cap, cap)

    def _needs_context(self, frame: av.VideoFrame) -> bool:
        """aiortc's own rule for opening a new context (see ``Vp8Encoder.encode``)."""
        codec = self.codec
        if codec is None or frame.width != codec.width or frame.height != codec.height:
            return True
        assert codec.bit_rate is not None  # every context is opened with a bitrate (see _open)
        return abs(self.target_bitrate - codec.bit_rate) / codec.bit_rate > 0.1

    def _open(self, frame: av.VideoFrame) -> Any:
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height = frame.width, frame.height
        codec.bit_rate = self.target_bitrate
        codec.pix_fmt = "yuv420p"
        codec.gop_size = 3000
        codec.qmin, codec.qmax = 2, 56
        codec.options = {**realtime_options(self.target_bitrate), **OPTIONS}
        codec.thread_count = number_of_threads(frame.width * frame.height, multiprocessing.cpu_count())
        self._opened_at = time.monotonic()
        self._opened_on_request = self.requested is not None
        return codec


def realtime_options(bitrate_bps: int) -> dict[str, str]:
    """aiortc's libvpx settings for real-time VP8 at ``bitrate_bps`` (``aiortc.codecs.vpx.Vp8Encoder``), with
    its temporal denoiser ("noise-sensitivity" 4, aiortc's default) left to the caller."""
    bitrate = str(bitrate_bps)
    return {
        "bufsize": bitrate,
        "cpu-used": "-6",
        "deadline": "realtime",
        "lag-in-frames": "0",
        "minrate": bitrate,
        "maxrate": bitrate,
        "overshoot-pct": "15",
        "partitions": "0",
        "static-thresh": "1",
        "undershoot-pct": "100",
    }


def install(
    sender: Any,
    codec: Any,
    nice: int = 0,
    ceiling: Callable[[], int | None] | None = None,
    relay_cap: Callable[[int], int | None] | None = None,
) -> bool:
    """Give ``sender`` a :class:`ReturnVp8Encoder` before aiortc makes its own; False for other codecs."""
    if getattr(codec, "mimeType", "").lower() != "video/vp8":
        return False
    if getattr(sender, "_RTCRtpSender__encoder", None) is None:
        encoder = ReturnVp8Encoder(nice)
        encoder.ceiling = ceiling
        encoder.relay_cap = relay_cap
        sender._RTCRtpSender__encoder = encoder
    return True


class FrameGuard:
    """Counts the frames a return stream lost to an error, so one bad frame never ends the stream.

    aiortc's sender loop ends for good on any exception from fetching or encoding a frame (the stream then
    stays silent while the call looks connected). The guard turns such an error into one skipped frame and
    a keyframe request for the next, so the viewer's decoder resynchronises at once."""

    PAUSE_S = 0.02  # after an error, so a source that fails every time cannot spin the event loop

    def __init__(self) -> None:
        self.errors = 0
        self.last_error: str | None = None

    def stats(self) -> dict:
        return {"frame_errors": self.errors, "last_frame_error": self.last_error}


def use_return_encoder(
    sender: Any,
    nice: int = 0,
    ceiling: Callable[[], int | None] | None = None,
    relay_cap: Callable[[int], int | None] | None = None,
) -> FrameGuard:
    """Make ``sender`` encode VP8 with :class:`ReturnVp8Encoder` once its codec is known (its first frame),
    and survive a failing frame (:class:`FrameGuard`, returned); ``nice``: its encoding threads' priority below
    the process's (:mod:`srtc.server.priority`); ``ceiling``: the viewer link's share for this stream
    (:meth:`srtc.server.return_rate.ReturnBitrates.ceiling`); ``relay_cap``: the relay's rate for its other
    viewers (:meth:`srtc.server.relay.Relay.rate_cap`)."""
    inner = sender._next_encoded_frame
    guard = FrameGuard()

    async def next_encoded_frame(codec: Any) -> Any:
        if getattr(sender, "_RTCRtpSender__encoder", None) is None:  # the first frame, or a restarted stream
            install(sender, codec, nice, ceiling, relay_cap)
        try:
            return await inner(codec)
        except (asyncio.CancelledError, MediaStreamError):
            raise  # the call or the track ended: the sender stops, as it should
        except Exception as exc:
            guard.errors += 1
            guard.last_error = f"{type(exc).__name__}: {exc}"[:200]
            log.warning("return stream: frame lost to %s (%d so far); asking for a keyframe", guard.last_error,
                        guard.errors)  # fmt: skip
            sender._RTCRtpSender__force_keyframe = True
            await asyncio.sleep(guard.PAUSE_S)
            return None  # aiortc's loop skips a None frame and fetches the next

    sender._next_encoded_frame = next_encoded_frame
    return guard
