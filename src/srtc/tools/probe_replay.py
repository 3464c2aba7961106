"""The probe's uplink encoded once, before the run, and replayed at the frame rate.

Encoding 640x360 VP8 live costs the probe a fifth of a core or more, on the same two cores the server
is measured on. :class:`ReplayTrack` sends the same numbered frames as
:class:`~srtc.tools.probe_source.NumberedTrack`, encoded ahead of the run by libvpx with aiortc's own
real-time settings at one bitrate, as ``av.Packet``s that aiortc's sender only packetises.

A pre-encoded stream cannot answer a keyframe request: its next frame refers to the one before. So
the first PLI or FIR from the server switches the track to live encoding for the rest of the run
(aiortc's encoder opens with a keyframe), and the report says when. On a clean link that never
happens after the start; for loss experiments, use the live uplink.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av

from srtc.server.encoder import realtime_options

from . import framecode
from .probe_source import CLOCK_RATE, SENT_H, SENT_W, NumberedTrack, SentFrame, Source

log = logging.getLogger("server.probe")


def encode_uplink(source: Source, fps: float, count: int, kbps: float) -> Iterator[bytes]:
    """Frames 0..count-1 as the live track would show them at ``fps``, encoded as one VP8 stream."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = SENT_W, SENT_H
    codec.pix_fmt = "yuv420p"
    codec.bit_rate = int(kbps * 1000)
    codec.framerate = Fraction(round(fps * 1000), 1000)
    codec.time_base = Fraction(1, CLOCK_RATE)
    codec.gop_size = 3000
    codec.qmin, codec.qmax = 2, 56
    codec.options = {**realtime_options(codec.bit_rate), "noise-sensitivity": "4"}  # as aiortc's sender does
    for number in range(count):
        yuv = source.sent[source.index_for(number / fps)].copy()
        framecode.embed(yuv[:SENT_H], number % framecode.MODULUS)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = round(number * CLOCK_RATE / fps)
        frame.time_base = Fraction(1, CLOCK_RATE)
        for packet in codec.encode(frame):
            yield bytes(packet)
    for packet in codec.encode(None):  # lag-in-frames 0: nothing is held back, but flush anyway
        yield bytes(packet)


def pre_encode(source: Source, fps: float, duration_s: float, kbps: float) -> list[bytes]:
    """The whole run's uplink frames, encoded (shared by every client of one probe run)."""
    started = time.process_time()
    encoded = list(encode_uplink(source, fps, int(round(duration_s * fps)), kbps))
    log.info("uplink pre-encoded: %d frames at %g kbps in %.1f s of CPU", len(encoded), kbps,
             time.process_time() - started)  # fmt: skip
    return encoded


class ReplayTrack(NumberedTrack):
    """The numbered uplink from :func:`pre_encode`'s frames; live from the first keyframe request on."""

    def __init__(self, source: Source, fps: float, duration_s: float, encoded: list[bytes]) -> None:
        super().__init__(source, fps, duration_s)
        self.fps = fps
        self.encoded = encoded
        self.live_from_s: float | None = None  # when a keyframe request ended the replay

    def request_keyframe(self) -> None:
        """The server asked for a keyframe: the replay cannot make one, so encode live from now on."""
        if self.live_from_s is None:
            self.live_from_s = time.monotonic() - self.first_time if self.first_time is not None else 0.0
            log.info("keyframe requested %.1f s in: the uplink is encoded live from here", self.live_from_s)

    async def recv(self) -> Any:  # av.Packet while replaying, av.VideoFrame once live
        if self.live_from_s is not None or self.count >= len(self.encoded):
            return await super().recv()
        now = time.monotonic()
        if self._next is None:
            self._next = now
        wait = self._next - now
        if wait > 0:
            await asyncio.sleep(wait)  # every frame is sent, late or not: the next one refers to it
        self._next += self.period
        return self._packet()

    def _packet(self) -> av.Packet:
        now = time.monotonic()
        if self.first_time is None:
            self.first_time = now
        number = self.count % framecode.MODULUS
        packet = av.Packet(self.encoded[self.count])
        packet.pts = int(round((now - self.first_time) * CLOCK_RATE))
        packet.time_base = Fraction(1, CLOCK_RATE)
        self.sent[number] = SentFrame(now, self.source.index_for(self.count / self.fps))
        self.count += 1
        self.last_time = now
        if self.count >= len(self.encoded):
            self.done.set()
        return packet


def follow_keyframe_requests(sender: Any, track: ReplayTrack) -> None:
    """Route the server's PLIs and FIRs for the uplink to ``track`` as well as to aiortc's own handler."""
    inner = sender._send_keyframe

    def send_keyframe() -> None:
        track.request_keyframe()
        inner()

    sender._send_keyframe = send_keyframe
