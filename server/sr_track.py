"""The tracks a session sends back: super-resolved frames, and the same frames as received.

The SR track takes the newest decoded frame, upscales it in a worker thread (onnxruntime releases the
GIL, so the event loop keeps serving signaling and RTP meanwhile) and hands it to aiortc's encoder.
Because it pulls only when the encoder is ready, a slow stage skips frames instead of queueing them.
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
from .metrics import RateMeter, RollingSamples

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
        self.latency_ms.add((time.monotonic() - item.arrived) * 1000.0)

    def stats(self) -> dict:
        return {
            "frames_out": self.frames_out,
            "skipped": self.slot.skipped,
            "fps": self.fps.rate(),
            "width": self.width,
            "height": self.height,
            "latency_ms": self.latency_ms.summary(),
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
