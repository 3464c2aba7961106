"""SR off as a viewer would get it without this server: the sender's own encoded frames, forwarded.

An SFU forwards what the sender encoded; it does not decode and re-encode it. Doing the same here makes
the SR-off stream the honest baseline (no second generation loss that no relay would add) and costs
no encoder time, which the SR-on stream's encode gets instead.

The resilient receiver (:mod:`srtc.server.receiver`) already assembles complete frames whose reference chain
is intact (a keyframe, or the successor of the last frame it released); :class:`ForwardTrack` takes the
same frames and hands them to aiortc's sender as ``av.Packet``s, which aiortc repacketises (its
encoder's ``pack``) instead of encoding. A forwarded stream starts at a keyframe, and a keyframe request
from the viewer (PLI or FIR) is passed on to the sender, rate-limited, since only the sender can make one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from fractions import Fraction

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from .metrics import ByteRate, FreezeDetector, RateMeter

log = logging.getLogger(__name__)

RTP_VIDEO_CLOCK = Fraction(1, 90000)
QUEUE_FRAMES = 30  # one second at 30 fps: beyond it the sender has stalled, and old frames are worthless
KBPS_WINDOW_S = 2.0
KEYFRAME_REQUEST_INTERVAL_S = 0.5  # at most this often upstream, so a storm of viewer PLIs costs one keyframe


class TimestampUnwrapper:
    """RTP's 32-bit timestamps as a monotonic count, so aiortc's timebase conversion never sees a wrap."""

    def __init__(self) -> None:
        self._last: int | None = None
        self._value = 0

    def __call__(self, timestamp: int) -> int:
        if self._last is not None:
            delta = (timestamp - self._last) & 0xFFFFFFFF
            self._value += delta - (1 << 32) if delta >= 1 << 31 else delta
        self._last = timestamp
        return self._value


class KeyframeRequests:
    """A keyframe request passed on at most once per ``interval_s``: many asks (a viewer's PLIs, many viewers)
    cost one keyframe. ``asked`` counts every ask, ``granted`` those passed on."""

    def __init__(
        self,
        request: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = KEYFRAME_REQUEST_INTERVAL_S,
    ) -> None:
        self._request = request
        self._clock = clock
        self._interval_s = interval_s
        self._last = -float("inf")
        self.asked = 0
        self.granted = 0

    def __call__(self) -> None:
        self.asked += 1
        now = self._clock()
        if now - self._last < self._interval_s:
            return
        self._last = now
        self.granted += 1
        try:
            self._request()
        except Exception as exc:  # a failed request must not stop the stream; the next one may succeed
            log.debug("keyframe request failed: %s", exc)


class ForwardTrack(MediaStreamTrack):
    """The uplink's encoded frames for one return sender, in order, starting at a keyframe.

    ``codec``: the codec the return sender negotiated (``"VP8"``, ``"H264"``); frames in another codec
    cannot be forwarded and are counted, not sent. ``request_keyframe`` asks the sender for a keyframe.
    """

    kind = "video"

    def __init__(
        self,
        codec: str,
        request_keyframe: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.codec = codec.upper()
        self._keyframes = KeyframeRequests(request_keyframe, clock)
        self._clock = clock
        self._queue: asyncio.Queue[av.Packet] = asyncio.Queue()
        self._unwrap = TimestampUnwrapper()
        self._waiting_for_keyframe = True
        self.frames_in = 0
        self.queued = 0  # frames put in the queue to be sent (the watchdog's measure of "something to send")
        self.frames_out = 0
        self.keyframes = 0
        self.dropped = 0  # frames not forwarded: before the first keyframe, or after the queue overflowed
        self.other_codec = 0
        self.bytes_out = 0
        self.fps = RateMeter()
        self._rate = ByteRate(KBPS_WINDOW_S)
        self.freezes = FreezeDetector()

    def push(self, codec: str, data: bytes, timestamp: int, keyframe: bool) -> None:
        """A complete frame the receiver released (called on the event loop, in decode order)."""
        if self.readyState != "live":
            return
        self.frames_in += 1
        if codec.upper() != self.codec:
            self.other_codec += 1
            return
        if self._queue.qsize() >= QUEUE_FRAMES:
            self.dropped += self._drain()  # the sender stalled: start again from a fresh keyframe
            self._waiting_for_keyframe = True
        if self._waiting_for_keyframe and not keyframe:
            self.dropped += 1
            self.request_keyframe()
            return
        self._waiting_for_keyframe = False
        self.keyframes += keyframe
        packet = av.Packet(data)
        packet.pts = self._unwrap(timestamp)
        packet.time_base = RTP_VIDEO_CLOCK
        self._queue.put_nowait(packet)
        self.queued += 1

    def request_keyframe(self) -> None:
        """Ask the sender for a keyframe (the viewer lost the picture, or the forward is (re)starting)."""
        self._keyframes()

    @property
    def keyframe_requests(self) -> int:
        """Keyframe requests passed upstream."""
        return self._keyframes.granted

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self._queue.get()
        if self.readyState != "live":
            raise MediaStreamError
        self.frames_out += 1
        self.bytes_out += packet.size
        self.fps.tick()
        now = self._clock()
        self._rate.add(packet.size, now)
        self.freezes.frame(now)
        return packet

    def stop(self) -> None:
        self._drain()
        super().stop()

    def _drain(self) -> int:
        count = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            count += 1
        return count

    def bitrate_bps(self) -> float:
        """What the forwarded stream sends, over the last :data:`KBPS_WINDOW_S` (0 before two frames)."""
        return self._rate.bps()

    def stats(self) -> dict:
        return {
            "mode": "forwarded",
            "codec": self.codec,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "fps": self.fps.rate(),
            "kbps": round(self.bitrate_bps() / 1000.0, 1),
            "keyframes": self.keyframes,
            "dropped": self.dropped,
            "other_codec": self.other_codec,
            "keyframe_requests": self.keyframe_requests,
            "freezes": self.freezes.stats(),
        }
