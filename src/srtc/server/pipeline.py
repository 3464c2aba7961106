"""The receive-upscale-encode path with no peer connection of its own: a decoded video track in, the SR-on
stream out on any aiortc sender.

A :class:`srtc.server.session.Session` wires it between the two directions of one client's peer
connection; the SR worker (:mod:`srtc.server.worker`) between a subscription to a publisher in a Janus
room and a publication back into it. Both send with :func:`send_encoded` (the return VP8 encoder, its
frame guard, its rate and the latency budget's encode and send stages) and drain a baseline slot with
:func:`drain`, so the two paths behave the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiortc import MediaStreamTrack, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError

from .budget import ArrivalLog, time_encoding
from .encoder import FrameGuard, use_return_encoder
from .engine import Upscaler
from .fanout import FrameFanout, LatestFrame
from .forward import ForwardTrack
from .governor import GovernorPolicy, LoadGovernor
from .memory import release_freed_memory
from .return_rate import ReturnBitrates
from .sr_track import SlotTrack, SuperResolutionTrack
from .watchdog import Watchdog

log = logging.getLogger(__name__)


async def drain(slot: LatestFrame) -> None:
    """Take every frame from ``slot`` as it comes: its skips are then the input's bursts alone, the
    baseline the SR stage's own drops are measured against."""
    try:
        while True:
            await slot.get()
    except MediaStreamError:
        pass  # the uplink ended


def send_encoded(
    transceiver: RTCRtpTransceiver,
    track: SlotTrack,
    keep_receiving: bool,
    rates: ReturnBitrates,
    name: str,
    nice: int = 0,
    relay_cap: Callable[[int], int | None] | None = None,
) -> FrameGuard:
    """Send ``track`` on ``transceiver`` through the return VP8 encoder; the guard counts the frames lost."""
    transceiver.sender.replaceTrack(track)
    # VP8 without the denoiser, within the viewer link's share (or the resolution's limits without one);
    # a frame that fails is skipped with a keyframe request, never the end of the stream
    guard = use_return_encoder(transceiver.sender, nice, ceiling=lambda: rates.ceiling(name), relay_cap=relay_cap)
    rates.add(name, transceiver.sender)  # its share of the client's REMB
    # the encode and send stages of the latency budget, on whichever track the sender has now (see watchdog)
    time_encoding(transceiver.sender, lambda at: _encoded(transceiver.sender, at))
    transceiver.direction = "sendrecv" if keep_receiving else "sendonly"
    return guard


def _encoded(sender: Any, at: float) -> None:
    track = sender.track
    if isinstance(track, SlotTrack):
        track.encoded(at)


def offered(track: SlotTrack | ForwardTrack | None) -> int:
    """Frames handed to a return track so far: its input slot's, or what the forward queued to send."""
    if isinstance(track, ForwardTrack):
        return track.queued
    return track.slot.received if track is not None else 0


class SrPipeline:
    """One decoded source, super-resolved once and encoded once: source -> fanout -> SR track (with its
    governor) -> the return encoder of the sender :meth:`send_on` is given; a stopped stream is restarted
    by the watchdog, as a session's is."""

    def __init__(
        self,
        source: MediaStreamTrack,
        upscaler: Upscaler,
        name: str,
        fast: Upscaler | None = None,
        governor: GovernorPolicy | None = None,
        arrivals: ArrivalLog | None = None,
    ) -> None:
        self.name = name
        self.upscaler = upscaler
        self.fast = fast
        self.governor_policy = governor or GovernorPolicy()
        self.fanout = FrameFanout(source, arrivals)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sr-{name}")
        self.baseline = self.fanout.subscribe()  # a consumer that never lags: the input's own drops
        self._pacer = asyncio.ensure_future(drain(self.baseline))
        self.sr_track = self._new_track()
        self.guard: FrameGuard | None = None
        self.rates: ReturnBitrates | None = None
        self.streams_watch = Watchdog()

    def send_on(self, transceiver: RTCRtpTransceiver, rates: ReturnBitrates, nice: int = 0) -> None:
        """Make ``transceiver`` send the SR-on stream (send only), restarted if it stops."""
        self.rates = rates
        self.guard = send_encoded(transceiver, self.sr_track, keep_receiving=False, rates=rates, name="sr", nice=nice)
        self.streams_watch.watch("sr", transceiver.sender, self._restart, lambda: offered(self.sr_track))
        self.streams_watch.start()

    def _new_track(self) -> SuperResolutionTrack:
        return SuperResolutionTrack(
            self.fanout.subscribe(),
            self.upscaler,
            self._executor,
            True,
            LoadGovernor(self.governor_policy, fast=self.fast is not None),
            baseline=self.baseline,
            fast=self.fast,
        )

    def _restart(self) -> SuperResolutionTrack:
        old, self.sr_track = self.sr_track, self._new_track()
        old.stop()
        self.fanout.unsubscribe(old.slot)
        return self.sr_track

    def stats(self) -> dict:
        sr = self.sr_track.stats()
        fanout = self.fanout
        return {
            "frames_in": fanout.frames,
            "fps_in": fanout.fps.rate(),
            "input": {"width": fanout.width, "height": fanout.height},
            "frames_out": sr.get("frames_out", 0),
            "fps_out": sr.get("fps", 0.0),
            "output": {"width": sr.get("width", 0), "height": sr.get("height", 0)},
            "skipped": sr.get("skipped", 0),
            "upscaler": sr.get("upscaler"),
            "sr_ms": sr.get("sr_ms"),
            "latency_ms": sr.get("latency_ms"),
            "governor": sr.get("governor"),
            "budget_ms": sr.get("budget_ms"),
            "return_bitrate": self.rates.stats() if self.rates is not None else {},
            "return_errors": self.guard.stats() if self.guard is not None else None,
            "return_restarts": self.streams_watch.stats(),
        }

    async def stop(self) -> None:
        self.streams_watch.stop()
        self.sr_track.stop()
        self._pacer.cancel()
        await self.fanout.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)
        release_freed_memory()
