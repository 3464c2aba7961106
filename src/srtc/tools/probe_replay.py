"""The probe's uplink encoded once, before the run, and replayed at the frame rate.

Encoding 640x360 VP8 live costs the probe a fifth of a core or more, on the same two cores the server
is measured on. :class:`ReplayTrack` sends the same numbered frames as
:class:`~srtc.tools.probe_source.NumberedTrack`, encoded ahead of the run by libvpx with aiortc's own
real-time settings at one bitrate, as ``av.Packet``s that aiortc's sender only packetises.

A pre-encoded stream cannot answer a keyframe request: its next frame refers to the one before. So
the first PLI or FIR from the server switches the track to live encoding (its first live frame a
keyframe), and the report says when: for the rest of the run when the stream has no keyframe after
its first, else only until its next pre-encoded keyframe (``pre_encode(keyframe_every=...)``), where
the replay resumes: the server's viewers ask for keyframes whenever one joins, and a few live frames
per request cost the probe little. On a clean link without viewers no request comes after the start;
for loss experiments, use the live uplink.
"""

from __future__ import annotations

import asyncio
import bisect
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


def is_vp8_keyframe(frame: bytes) -> bool:
    """VP8's frame tag (RFC 6386, 9.1): bit 0 of the first byte is 0 for a key frame."""
    return bool(frame) and not frame[0] & 0x01


def encode_uplink(source: Source, fps: float, count: int, kbps: float, keyframe_every: int = 0) -> Iterator[bytes]:
    """Frames 0..count-1 as the live track would show them at ``fps``, encoded as one VP8 stream (a keyframe
    on every ``keyframe_every``-th frame when not 0, else only the first)."""
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
        if keyframe_every and number % keyframe_every == 0:
            frame.pict_type = av.video.frame.PictureType.I
        for packet in codec.encode(frame):
            yield bytes(packet)
    for packet in codec.encode(None):  # lag-in-frames 0: nothing is held back, but flush anyway
        yield bytes(packet)


def pre_encode(source: Source, fps: float, duration_s: float, kbps: float, keyframe_every: int = 0) -> list[bytes]:
    """The whole run's uplink frames, encoded (shared by every client of one probe run); ``keyframe_every``:
    see :func:`encode_uplink` (where a replay interrupted by a keyframe request resumes)."""
    started = time.process_time()
    encoded = list(encode_uplink(source, fps, int(round(duration_s * fps)), kbps, keyframe_every))
    log.info("uplink pre-encoded: %d frames at %g kbps in %.1f s of CPU", len(encoded), kbps,
             time.process_time() - started)  # fmt: skip
    return encoded


class ReplayTrack(NumberedTrack):
    """The numbered uplink from :func:`pre_encode`'s frames; live from a keyframe request on, until the
    next pre-encoded keyframe if there is one (else for the rest of the run)."""

    def __init__(self, source: Source, fps: float, duration_s: float, encoded: list[bytes]) -> None:
        super().__init__(source, fps, duration_s)
        self.fps = fps
        self.encoded = encoded
        self.live_from_s: float | None = None  # when a keyframe request first interrupted the replay
        self.keyframe_requests = 0
        self.live_frames = 0  # frames encoded live (after requests, or past the end of the pre-encoded ones)
        self._keyframes = [i for i, data in enumerate(encoded) if is_vp8_keyframe(data)]
        self._live_until = 0  # frame count where the replay resumes (len(encoded) or more: never)
        self._sent_packet = False  # the last frame sent was replayed: a live frame after it must be a keyframe

    def request_keyframe(self) -> None:
        """The server asked for a keyframe: the replay cannot make one, so encode live until the next
        pre-encoded keyframe (unless that is the very next frame)."""
        self.keyframe_requests += 1
        if self.count < self._live_until:
            return  # already live, and the live encoder answers the request itself
        after = bisect.bisect_left(self._keyframes, self.count)
        resume = self._keyframes[after] if after < len(self._keyframes) else len(self.encoded)
        if resume == self.count:
            return  # the next replayed frame is a keyframe
        self._live_until = resume
        if self.live_from_s is None:
            self.live_from_s = time.monotonic() - self.first_time if self.first_time is not None else 0.0
            until = f"until frame {resume}" if resume < len(self.encoded) else "from here on"
            log.info("keyframe requested %.1f s in: the uplink is encoded live %s", self.live_from_s, until)

    def replaying(self) -> bool:
        """Whether the next frame comes from the pre-encoded ones."""
        return self.count < len(self.encoded) and self.count >= self._live_until

    async def recv(self) -> Any:  # av.Packet while replaying, av.VideoFrame while live
        if not self.replaying():
            frame = await super().recv()
            self.live_frames += 1
            if self._sent_packet:  # the live encoder's last frame is not the one the viewer has: start afresh
                frame.pict_type = av.video.frame.PictureType.I
                self._sent_packet = False
            return frame
        now = time.monotonic()
        if self._next is None:
            self._next = now
        wait = self._next - now
        if wait > 0:
            await asyncio.sleep(wait)  # every frame is sent, late or not: the next one refers to it
        self._next += self.period
        self._sent_packet = True
        return self._packet()

    def _packet(self) -> av.Packet:
        now = time.monotonic()
        if self.first_time is None:
            self.first_time = now
        number = self.count % framecode.MODULUS
        packet = av.Packet(self.encoded[self.count])
        packet.pts = self.pts_of(now - self.first_time)
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
