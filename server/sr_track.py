"""The tracks a session sends back: super-resolved frames, and the same frames as received.

The SR track takes the newest decoded frame, upscales it in a worker thread (onnxruntime releases the
GIL, so the event loop keeps serving signaling and RTP meanwhile) and hands it to aiortc's encoder.
It works one frame ahead: while the encoder compresses frame N, frame N+1 is being upscaled, so the
stage costs max(SR, encode) per frame rather than their sum. It starts that next upscale just late
enough to finish when the encoder asks (so the frame it takes is as fresh as possible), and never holds
more than that one frame, so a slow stage skips frames instead of queueing them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor

import av
from aiortc import MediaStreamTrack

from .engine import BicubicUpscaler, OnnxUpscaler
from .fanout import LatestFrame, TimedFrame
from .metrics import FreezeDetector, RateMeter, RollingSamples

log = logging.getLogger(__name__)


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

    async def recv(self) -> av.VideoFrame:
        item = await self.slot.get()
        frame = await self.process(item)
        self._count(frame, item)
        return frame

    async def process(self, item: TimedFrame) -> av.VideoFrame:
        return item.frame

    def _count(self, frame: av.VideoFrame, item: TimedFrame) -> None:
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
        }


class RawTrack(SlotTrack):
    """SR off, as received: the page's left-hand side, so SR can be judged against what arrived."""


class SuperResolutionTrack(SlotTrack):
    """Every frame it sends is upscaled 2x: by the generator when SR is on, by bicubic when it is off."""

    def __init__(self, slot: LatestFrame, upscaler: OnnxUpscaler, executor: Executor, enabled: bool = True) -> None:
        super().__init__(slot)
        self.upscaler = upscaler
        self.enabled = enabled
        self.errors = 0
        self.sr_ms = RollingSamples()  # the upscale alone, in the worker thread
        self._bicubic = BicubicUpscaler()
        self._executor = executor
        self._ahead: asyncio.Future[tuple[TimedFrame, av.VideoFrame]] | None = None
        self._returned_at: float | None = None
        self._consumer_ms = RollingSamples(30)  # how long the encoder takes between two recv() calls

    async def recv(self) -> av.VideoFrame:
        if self._returned_at is not None:
            self._consumer_ms.add((time.monotonic() - self._returned_at) * 1000.0)
        if self._ahead is None:
            self._ahead = asyncio.ensure_future(self._next(delay_s=0.0))
        try:
            item, frame = await self._ahead
        finally:
            self._ahead = None
        if self.readyState == "live":
            # Upscale the next frame while this one is encoded, timed to finish when the encoder asks.
            self._ahead = asyncio.ensure_future(self._next(delay_s=self._lead_delay_s()))
        self._count(frame, item)
        self._returned_at = time.monotonic()
        return frame

    def stop(self) -> None:
        if self._ahead is not None:
            self._ahead.cancel()
            self._ahead = None
        super().stop()

    async def _next(self, delay_s: float) -> tuple[TimedFrame, av.VideoFrame]:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        item = await self.slot.get()
        return item, await self.process(item)

    def _lead_delay_s(self) -> float:
        """How long to wait before taking the next frame: the encoder's time minus our own, if positive."""
        consumer, own = self._consumer_ms.summary()["p50"], self.sr_ms.summary()["p50"]
        if consumer is None or own is None:
            return 0.0
        return max(0.0, consumer - own - 2.0) / 1000.0  # 2 ms of margin for scheduling jitter

    async def process(self, item: TimedFrame) -> av.VideoFrame:
        upscaler = self.upscaler if self.enabled else self._bicubic
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            frame = await loop.run_in_executor(self._executor, upscaler.upscale, item.frame)
        except Exception:
            # One bad frame must not end the call: log it, count it, and send bicubic instead.
            self.errors += 1
            log.exception("upscaling failed (%d so far); sending bicubic for this frame", self.errors)
            frame = await loop.run_in_executor(self._executor, self._bicubic.upscale, item.frame)
        self.sr_ms.add((time.monotonic() - started) * 1000.0)
        return frame

    def stats(self) -> dict:
        stats = super().stats()
        stats.update(
            sr_enabled=self.enabled,
            upscaler=self.upscaler.name if self.enabled else self._bicubic.name,
            sr_ms=self.sr_ms.summary(),
            errors=self.errors,
        )
        return stats
