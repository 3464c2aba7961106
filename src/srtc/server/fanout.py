"""Receive side: read the decoded remote track as fast as it produces, keep only the newest frame.

aiortc's remote track queues every decoded frame without bound, so a consumer slower than the sender
would build seconds of latency. One reader task drains it and hands each frame to every subscriber's
one-frame slot; a frame replaced before anyone took it is counted as skipped, never queued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import cast

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from .budget import ArrivalLog
from .metrics import FreezeDetector, RateMeter

log = logging.getLogger(__name__)


@dataclass
class TimedFrame:
    """A decoded frame and when it reached the server's side of the decoder (monotonic seconds).

    ``first_packet`` and ``released`` (its first RTP packet, its hand-over to the decoder) are known
    when the receiver logs them (see :mod:`srtc.server.budget`), else None.
    """

    frame: av.VideoFrame
    arrived: float
    first_packet: float | None = None
    released: float | None = None


class LatestFrame:
    """A one-frame slot: ``put`` replaces, ``get`` waits for a frame newer than the last one taken."""

    def __init__(self) -> None:
        self._item: TimedFrame | None = None
        self._ready = asyncio.Event()
        self._ended = False
        self.received = 0
        self.skipped = 0
        self.fps = RateMeter()  # the rate frames arrive at: the SR stage's time budget per frame

    def put(self, item: TimedFrame) -> None:
        if self._item is not None:
            self.skipped += 1
        self._item = item
        self.received += 1
        self.fps.tick()
        self._ready.set()

    def end(self) -> None:
        self._ended = True
        self._ready.set()

    async def get(self) -> TimedFrame:
        while self._item is None:
            if self._ended:
                raise MediaStreamError("source ended")
            self._ready.clear()
            await self._ready.wait()
        item, self._item = self._item, None
        return item


class FrameFanout:
    """Drains one source track into any number of :class:`LatestFrame` slots."""

    def __init__(self, source: MediaStreamTrack, arrivals: ArrivalLog | None = None) -> None:
        self.source = source
        self.arrivals = arrivals
        self.frames = 0
        self.width = 0
        self.height = 0
        self.fps = RateMeter()
        self.freezes = FreezeDetector()  # on decoded frames: what the network and decoder delivered
        self._slots: list[LatestFrame] = []
        self._task: asyncio.Task[None] | None = None

    def subscribe(self) -> LatestFrame:
        slot = LatestFrame()
        self._slots.append(slot)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return slot

    def unsubscribe(self, slot: LatestFrame) -> None:
        """Stop feeding ``slot`` (a replaced track's) and end it."""
        if slot in self._slots:
            self._slots.remove(slot)
        slot.end()

    async def _run(self) -> None:
        try:
            while True:
                frame = cast(av.VideoFrame, await self.source.recv())  # the uplink is a video track
                item = TimedFrame(frame, time.monotonic())
                if self.arrivals is not None and (logged := self.arrivals.lookup(frame.pts)) is not None:
                    item.first_packet, item.released = logged
                self.frames += 1
                self.fps.tick()
                self.freezes.frame(item.arrived)
                self.width, self.height = frame.width, frame.height
                for slot in self._slots:
                    slot.put(item)
        except MediaStreamError:
            log.info("source track ended after %d frames", self.frames)
        finally:
            for slot in self._slots:
                slot.end()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for slot in self._slots:
            slot.end()
