"""One sender's stream, watched by many: super-resolved once, encoded once, the same bytes to every viewer.

A sending client's session already runs the generator and the 720p encode for its own SR-on stream.
Viewers are handed that encode's output: :func:`tap` takes each frame as libvpx coded it (before
aiortc packetises it for the sender) and the :class:`Relay` gives it to every viewer's
:class:`srtc.server.forward.ForwardTrack`, whose sender packetises it again with its own sequence
numbers, SSRC and SRTP keys. SR off goes the same way from the resilient receiver's assembled
frames: the sender's own encode, forwarded. A viewer therefore costs packetisation and SRTP, not an
encode, and joining or leaving changes nothing for the others.

Keyframes: any viewer's keyframe request (PLI or FIR, or a new viewer waiting for its first picture)
asks the one shared encoder (SR on) or the sender (SR off) for a keyframe, at most once per
:data:`KEYFRAME_INTERVAL_S` per stream, so many viewers' requests cost one keyframe, not a storm.

Rate (encode once has one rate for all): the SR-on encode follows the slowest *congested* viewer, but
never below a floor. A viewer is congested when its REMB (its share of it: the forwarded SR-off rate
comes off) stays under :data:`CONGESTION_SHARE` of what it receives for :data:`CONGESTION_HOLD_S`; it
then limits the encode until its REMB climbs back to what the encode would use without viewers. The
floor (``floor_bps``, default 1.5 Mbps, where a 720p VP8 encode still keeps the generator's gain) keeps
one poor link from taking the picture of all the others down with it: a viewer below the floor gets the
floor's rate and its losses, repaired by NACK and keyframes. The sender's own REMB and viewer link limit
the encode as before.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

from .forward import KeyframeRequests

log = logging.getLogger(__name__)

KEYFRAME_INTERVAL_S = 0.5  # at most two keyframes a second per stream, whatever the number of viewers
CONGESTION_SHARE = 0.85  # a viewer's REMB under this share of what it receives is congestion
# ... when it stays there this long: one low REMB (a receiver's estimate dips on a burst of late packets,
# or on its own busy CPU) would otherwise cost every viewer a reopened encoder, a keyframe and bits
CONGESTION_HOLD_S = 2.0


class Watcher(Protocol):
    """What the relay needs of a viewer (:class:`srtc.server.viewer.Viewer`)."""

    def push_sr(self, data: bytes, timestamp: int, keyframe: bool) -> None: ...

    def push_raw(self, codec: str, data: bytes, timestamp: int, keyframe: bool) -> None: ...

    def sr_estimate_bps(self) -> float | None: ...

    def sr_received_bps(self) -> float: ...

    def end_stream(self) -> None: ...


class Relay:
    """The viewers of one sending session's stream, and what they share: its frames, keyframes and rate.

    ``sr_codec``/``raw_codec``: the codecs of the SR-on encode and of the uplink (None: that stream cannot
    be relayed). ``request_sr_keyframe``/``request_raw_keyframe``: ask the shared encoder, or the sender,
    for a keyframe. ``figures()``: the stream's public figures (resolution, fps, model, SR setting).
    """

    def __init__(
        self,
        sr_codec: str | None,
        raw_codec: str | None,
        request_sr_keyframe: Callable[[], None],
        request_raw_keyframe: Callable[[], None] | None,
        figures: Callable[[], dict],
        floor_bps: int = 1_500_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = secrets.token_urlsafe(12)  # unguessable: whoever has it may watch
        self.sr_codec = sr_codec.upper() if sr_codec else None
        self.raw_codec = raw_codec.upper() if raw_codec else None
        self.floor_bps = floor_bps
        self.created = clock()
        self.viewers: list[Watcher] = []
        self.ended = False
        self._figures = figures
        self._clock = clock
        self._keyframes = {
            "sr": KeyframeRequests(request_sr_keyframe, clock, KEYFRAME_INTERVAL_S),
            "raw": KeyframeRequests(request_raw_keyframe, clock, KEYFRAME_INTERVAL_S) if request_raw_keyframe else None,
        }
        self._limiting: set[int] = set()  # ids of the viewers whose congestion sets the rate
        self._below_since: dict[int, float] = {}  # since when a viewer's REMB has been under its share
        self.cap_bps: int | None = None  # the last rate the viewers set (None: they set none)
        self.sr_frames = 0
        self.raw_frames = 0

    def add(self, viewer: Watcher) -> None:
        self.viewers.append(viewer)
        log.info("stream %s: a viewer joined (%d watching)", self.id, len(self.viewers))

    def remove(self, viewer: Watcher) -> None:
        if viewer in self.viewers:
            self.viewers.remove(viewer)
            self._limiting.discard(id(viewer))
            self._below_since.pop(id(viewer), None)
            log.info("stream %s: a viewer left (%d watching)", self.id, len(self.viewers))

    def publish_sr(self, data: bytes, timestamp: int, keyframe: bool) -> None:
        """A frame of the SR-on encode, as coded (``timestamp``: the encoder's, in the 90 kHz clock)."""
        self.sr_frames += 1
        for viewer in list(self.viewers):
            viewer.push_sr(data, timestamp, keyframe)

    def publish_raw(self, codec: str, data: bytes, timestamp: int, keyframe: bool) -> None:
        """A frame of the uplink as the sender coded it (its RTP timestamp), complete and in decode order."""
        self.raw_frames += 1
        for viewer in list(self.viewers):
            viewer.push_raw(codec, data, timestamp, keyframe)

    def request_keyframe(self, stream: str) -> None:
        """A viewer needs a keyframe of ``stream`` ("sr" or "raw"); rate-limited per stream."""
        limited = self._keyframes.get(stream)
        if limited is not None:
            limited()

    def rate_cap(self, wanted_bps: int) -> int | None:
        """The SR-on encode's rate as its viewers allow (see the module docstring), or None for no limit.

        ``wanted_bps``: what the encode would use without viewers; a limiting viewer whose REMB is back at
        it stops limiting."""
        caps: list[float] = []
        now = self._clock()
        for viewer in self.viewers:
            key, estimate = id(viewer), viewer.sr_estimate_bps()
            if estimate is None or estimate >= wanted_bps:
                self._limiting.discard(key)
                self._below_since.pop(key, None)
                continue
            if estimate < CONGESTION_SHARE * viewer.sr_received_bps():
                since = self._below_since.setdefault(key, now)
                if now - since >= CONGESTION_HOLD_S:
                    self._limiting.add(key)
            elif key not in self._limiting:
                self._below_since.pop(key, None)
            if key in self._limiting:
                caps.append(estimate)
        self.cap_bps = int(max(self.floor_bps, min(caps))) if caps else None
        return self.cap_bps

    def end(self) -> None:
        """The sender left: every viewer's tracks end and their calls close."""
        self.ended = True
        for viewer in list(self.viewers):
            viewer.end_stream()
        log.info("stream %s: ended (%d viewers told)", self.id, len(self.viewers))

    def listing(self) -> dict:
        """What a viewer may know of the stream before watching it (``GET /streams``)."""
        return {
            "id": self.id,
            **self._figures(),
            "viewers": len(self.viewers),
            "age_s": round(self._clock() - self.created, 1),
        }

    def stats(self) -> dict:
        """The relay's own counters, for the sending session's figures."""
        return {
            "id": self.id,
            "viewers": len(self.viewers),
            "sr_codec": self.sr_codec,
            "raw_codec": self.raw_codec,
            "sr_frames": self.sr_frames,
            "raw_frames": self.raw_frames,
            "keyframes": {name: k.granted for name, k in self._keyframes.items() if k is not None},
            "keyframe_requests": {name: k.asked for name, k in self._keyframes.items() if k is not None},
            "cap_kbps": None if self.cap_bps is None else round(self.cap_bps / 1000),
            "limiting_viewers": len(self._limiting),
        }


def tap(sender: Any, publish: Callable[[bytes, int, bool], None]) -> None:
    """Hand ``publish(coded frame, timestamp, keyframe)`` each frame ``sender``'s VP8 encode produces.

    Wraps ``_next_encoded_frame`` on this one sender instance (aiortc == 1.16.0, pinned): it returns after
    the encode, whose :class:`srtc.server.encoder.ReturnVp8Encoder` keeps the frame it coded. Other
    encoders keep nothing, and nothing is published."""
    inner = sender._next_encoded_frame

    async def tapped(codec: Any) -> Any:
        encoded = await inner(codec)
        coded = getattr(getattr(sender, "_RTCRtpSender__encoder", None), "encoded", None)
        if encoded is not None and coded:
            publish(coded, encoded.timestamp, is_vp8_keyframe(coded))
        return encoded

    sender._next_encoded_frame = tapped


def is_vp8_keyframe(frame: bytes) -> bool:
    """VP8's frame tag (RFC 6386, 9.1): bit 0 of the first byte is 0 for a key frame."""
    return bool(frame) and not frame[0] & 0x01
