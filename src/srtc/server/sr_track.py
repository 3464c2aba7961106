"""The tracks a session sends back: super-resolved frames, and the same frames as received.

The SR track takes the newest decoded frame, upscales it in a worker thread (onnxruntime releases the
GIL, so the event loop keeps serving signaling and RTP meanwhile) and hands it to aiortc's encoder.
It works one frame ahead: while the encoder compresses frame N, frame N+1 is being upscaled, so the
stage costs max(SR, encode) per frame rather than their sum. It starts that next upscale just late
enough to finish when the encoder asks (so the frame it takes is as fresh as possible), and never holds
more than that one frame, so a slow stage skips frames instead of queueing them. When the generator
cannot keep up even so, :class:`srtc.server.governor.LoadGovernor` sends bicubic on some frames.

Both tracks time every frame they send through each stage (:mod:`srtc.server.budget`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass

import av
from aiortc import MediaStreamTrack

from .budget import FrameTimes, StageTimes
from .engine import BicubicUpscaler, Upscaler
from .fanout import LatestFrame, TimedFrame
from .governor import BICUBIC, FAST, GENERATOR, LoadGovernor
from .metrics import FreezeDetector, RateMeter, RollingSamples

log = logging.getLogger(__name__)

DROP_WINDOW = 60  # frames over which the SR stage's drop rate is measured (2 s at 30 fps)


class SlotTrack(MediaStreamTrack):
    """A video track fed from a :class:`LatestFrame` slot, with the per-frame figures both tracks report."""

    kind = "video"

    def __init__(self, slot: LatestFrame) -> None:
        super().__init__()
        self.slot = slot
        self.frames_out = 0
        self.width = 0
        self.height = 0
        self.fps = RateMeter()
        self.freezes = FreezeDetector()  # on frames handed to the encoder: what the viewer gets
        self.latency_ms = RollingSamples()  # arrival of the decoded frame -> handed to the encoder
        self.budget = StageTimes()
        self._in_encoder: FrameTimes | None = None  # the points in time of the frame aiortc is encoding / sending

    async def recv(self) -> av.VideoFrame:
        self._sent()
        item = await self.slot.get()
        started = time.monotonic()
        frame = item.frame
        self._count(frame, item, started, started)
        return frame

    def encoded(self, at: float) -> None:
        """aiortc's encoder returned the payloads of the frame handed last
        (see :func:`srtc.server.budget.time_encoding`)."""
        if self._in_encoder is not None and "encoded" not in self._in_encoder:
            self._in_encoder["encoded"] = at

    def _sent(self) -> None:
        """The sender asks for a frame only after sending every packet of the previous one: close its record."""
        times, self._in_encoder = self._in_encoder, None
        if times is not None and "encoded" in times:
            times["sent"] = time.monotonic()
            self.budget.frame(times)

    def _count(self, frame: av.VideoFrame, item: TimedFrame, started: float, done: float) -> None:
        handed = time.monotonic()
        self._in_encoder = {
            "first_packet": item.first_packet,
            "released": item.released,
            "arrived": item.arrived,
            "started": started,
            "done": done,
            "handed": handed,
        }
        self.frames_out += 1
        self.width, self.height = frame.width, frame.height
        self.fps.tick()
        now = time.monotonic()
        self.freezes.frame(now)
        self.latency_ms.add((now - item.arrived) * 1000.0)

    def stats(self) -> dict:
        return {
            "frames_out": self.frames_out,
            "skipped": self.slot.skipped,
            "fps": self.fps.rate(),
            "width": self.width,
            "height": self.height,
            "latency_ms": self.latency_ms.summary(),
            "freezes": self.freezes.stats(),
            "budget_ms": self.budget.summary(),
        }


class RawTrack(SlotTrack):
    """SR off, as received: the page's left-hand side, so SR can be judged against what arrived."""


@dataclass
class _Upscaled:
    item: TimedFrame
    frame: av.VideoFrame
    started: float
    done: float


def _timed(upscale, frame: av.VideoFrame) -> tuple[av.VideoFrame, float, float]:
    """``upscale(frame)`` with its start and end on the worker thread's clock (``time.monotonic``)."""
    started = time.monotonic()
    out = upscale(frame)
    return out, started, time.monotonic()


class SuperResolutionTrack(SlotTrack):
    """Every frame it sends is upscaled 2x: by the generator when SR is on (bicubic on the frames the
    governor gives up under load), by bicubic when it is off."""

    def __init__(
        self,
        slot: LatestFrame,
        upscaler: Upscaler,
        executor: Executor,
        enabled: bool = True,
        governor: LoadGovernor | None = None,
        baseline: LatestFrame | None = None,
        fast: Upscaler | None = None,
    ) -> None:
        """``baseline``: the raw track's slot, whose drops (same input, no SR) are not the SR stage's doing.
        ``fast``: a faster model (the int8 build) the governor steps down to before bicubic."""
        super().__init__(slot)
        self.upscaler = upscaler
        self.fast = fast
        self.enabled = enabled
        self.errors = 0
        self.governor = governor or LoadGovernor(fast=fast is not None)
        self.sr_ms = RollingSamples()  # the upscale alone (generator or bicubic), in the worker thread
        self._bicubic = BicubicUpscaler()
        self._executor = executor
        self._ahead: asyncio.Future[_Upscaled] | None = None
        self._returned_at: float | None = None
        self._consumer_ms = RollingSamples(30)  # how long the encoder takes between two recv() calls
        self.baseline = baseline
        self._counts: deque[tuple[int, int, int]] = deque(maxlen=DROP_WINDOW)  # (received, skipped, baseline skipped)

    async def recv(self) -> av.VideoFrame:
        self._sent()
        if self._returned_at is not None:
            self._consumer_ms.add((time.monotonic() - self._returned_at) * 1000.0)
        if self._ahead is None:
            self._ahead = asyncio.ensure_future(self._next(delay_s=0.0, path=self._choose()))
        try:
            up = await self._ahead
        finally:
            self._ahead = None
        if self.readyState == "live":
            # Upscale the next frame while this one is encoded, timed to finish when the encoder asks.
            path = self._choose()
            self._ahead = asyncio.ensure_future(self._next(self._lead_delay_s(path), path))
        self._count(up.frame, up.item, up.started, up.done)
        self._returned_at = time.monotonic()
        return up.frame

    def stop(self) -> None:
        if self._ahead is not None:
            self._ahead.cancel()
            self._ahead = None
        super().stop()

    def _choose(self) -> str:
        """The next frame's path: bicubic when SR is off, else what the governor allows."""
        return self.governor.choose() if self.enabled else BICUBIC

    async def _next(self, delay_s: float, path: str) -> _Upscaled:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        item = await self.slot.get()
        frame, started, done = await self.process(item, path)
        if self.enabled:
            self.governor.observe(path, (done - started) * 1000.0, self.slot.fps.rate(), self._drop_rate())
        return _Upscaled(item, frame, started, done)

    def _drop_rate(self) -> float:
        """Share of the input this stage dropped over its last frames, beyond what the raw track dropped."""
        base = self.baseline.skipped if self.baseline is not None else 0
        self._counts.append((self.slot.received, self.slot.skipped, base))
        if len(self._counts) < 2:
            return 0.0
        (r0, s0, b0), (r1, s1, b1) = self._counts[0], self._counts[-1]
        if r1 <= r0:
            return 0.0
        return max(0.0, ((s1 - s0) - (b1 - b0)) / (r1 - r0))

    def _lead_delay_s(self, path: str) -> float:
        """How long to wait before taking the next frame: the encoder's time minus our own, if positive."""
        own = self.governor.typical_ms(path)
        if own is None:  # this path has not run yet: go by the stage's time so far
            own = self.sr_ms.median()
        consumer = self._consumer_ms.median()
        if consumer is None or own is None:
            return 0.0
        return max(0.0, consumer - own - 2.0) / 1000.0  # 2 ms of margin for scheduling jitter

    async def process(self, item: TimedFrame, path: str = GENERATOR) -> tuple[av.VideoFrame, float, float]:
        """One frame upscaled on ``path`` (generator, fast model or bicubic), and when the worker thread
        started and finished it.

        Timed in the worker, not around the ``await``: the event loop may get back to this coroutine
        some milliseconds after the worker is done (it is also handling RTP, RTCP and the encoders'
        hand-offs), and that delay is waiting, not SR; :mod:`srtc.server.budget` counts it under ``wait``."""
        upscaler = {GENERATOR: self.upscaler, FAST: self.fast or self.upscaler, BICUBIC: self._bicubic}[path]
        loop = asyncio.get_running_loop()
        try:
            frame, started, done = await loop.run_in_executor(self._executor, _timed, upscaler.upscale, item.frame)
        except Exception:
            # One bad frame must not end the call: log it, count it, and send bicubic instead.
            self.errors += 1
            log.exception("upscaling failed (%d so far); sending bicubic for this frame", self.errors)
            frame, started, done = await loop.run_in_executor(self._executor, _timed, self._bicubic.upscale, item.frame)
        self.sr_ms.add((done - started) * 1000.0)
        return frame, started, done

    def stats(self) -> dict:
        stats = super().stats()
        stats.update(
            sr_enabled=self.enabled,
            upscaler=self.upscaler.name if self.enabled else self._bicubic.name,
            fast_upscaler=self.fast.name if self.enabled and self.fast is not None else None,
            sr_ms=self.sr_ms.summary(),
            errors=self.errors,
            governor=self.governor.stats() if self.enabled else None,
        )
        return stats
