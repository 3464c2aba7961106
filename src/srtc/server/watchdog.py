"""A return stream that stops while its input still flows is restarted within a second, and counted.

Every return stream is one aiortc ``RTCRtpSender`` loop: fetch a frame from the track, encode it,
send its packets. :class:`srtc.server.encoder.FrameGuard` keeps one failing frame from ending that
loop, but nothing inside the loop can notice the loop itself stopping: an exception outside the
guarded call, a track that ends by mistake, or a ``recv()`` that never returns. The call then looks
connected while the viewer's picture is frozen for good. The watchdog looks from outside: when a
frame has been waiting for a stream's track for :data:`STALL_S` and the stream has sent nothing since,
it cancels that stream's loop, gives the sender a fresh track and starts the loop again. "Waiting" is
each track's own measure (a new frame in the SR track's input slot, a frame in the forward queue), so
a stream with nothing to send (a paused camera, a forward waiting for its keyframe) is never taken for
a stopped one.
The new loop continues the old one's RTP sequence numbers and timestamps, so to the viewer the
restart is a short gap followed by a keyframe from a fresh encoder, not a new stream (a receiver
would take a random jump backwards in sequence numbers for old, duplicate packets).

aiortc internals relied on (aiortc == 1.16.0, pinned): ``RTCRtpSender._run_rtp(codec)`` is the loop,
held in ``_RTCRtpSender__rtp_task`` and signalling its end with ``_RTCRtpSender__rtp_exited`` (which
``stop()`` awaits); on exit it stops its track and drops its encoder. ``_next_encoded_frame(codec)``
is what the loop awaits per frame. The loop draws its first sequence number and timestamp origin
from ``aiortc.rtcrtpsender.random_sequence_number`` and ``random32`` before its first ``await``; the
last packet sent is in ``_RTCRtpSender__rtp_history`` and its timestamp in ``__rtp_timestamp``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiortc.rtcrtpsender as aiortc_sender
from aiortc import MediaStreamTrack

log = logging.getLogger(__name__)

STALL_S = 0.5  # a frame waited this long and nothing was sent: the stream has stopped
CHECK_S = 0.1  # how often the streams are looked at: a stop is acted on within STALL_S + CHECK_S
_S = "_RTCRtpSender__"


class StreamWatch:
    """One return stream: when it last sent a frame, and how to give it a fresh track."""

    def __init__(
        self,
        name: str,
        sender: Any,
        make_track: Callable[[], MediaStreamTrack],
        offered: Callable[[], int],
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self.sender = sender
        self.make_track = make_track
        self.offered = offered  # frames handed to the stream's current track so far (grows; restarts at a restart)
        self.last_sent: float | None = None  # None until its first frame: a stream that never started is not "stopped"
        self.restarts = 0
        self._offered_at_send = 0  # ``offered()`` when the last frame went out
        self._waiting_since: float | None = None  # when a frame offered after that was first seen
        self._codec: Any = None
        self._frame_timestamp: int | None = None  # the encoder's timestamp of the last frame (before the origin)
        self._clock = clock
        inner = sender._next_encoded_frame

        async def counted(codec: Any) -> Any:
            self._codec = codec
            encoded = await inner(codec)
            if encoded is not None:
                self.sent()
                self._frame_timestamp = encoded.timestamp
            return encoded

        sender._next_encoded_frame = counted

    def sent(self) -> None:
        """A frame went out (or the stream was just restarted): nothing is waiting any more."""
        self.last_sent = self._clock()
        self._offered_at_send = self.offered()
        self._waiting_since = None

    def stalled(self, now: float, stall_s: float) -> bool:
        """A frame has waited ``stall_s`` for this stream and nothing was sent since; call it periodically."""
        if self.last_sent is None:
            return False
        if self.offered() == self._offered_at_send:
            self._waiting_since = None  # nothing new to send
            return False
        if self._waiting_since is None:
            self._waiting_since = now
        return now - self._waiting_since >= stall_s

    async def restart(self) -> None:
        """End the stream's loop (stopping its old track), hand it a fresh track, and start the loop again."""
        sender = self.sender
        if sender.transport.state != "connected" or self._codec is None:
            return  # the call is ending (aiortc's stop() owns the loop now), or the stream never sent
        task = getattr(sender, _S + "rtp_task", None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        sender.replaceTrack(self.make_track())
        getattr(sender, _S + "rtp_exited").clear()
        resumed = _resume(sender, self._codec, self._continuation())
        setattr(sender, _S + "rtp_task", asyncio.ensure_future(resumed))
        self.restarts += 1
        self.sent()  # the fresh track's count starts over, and the fresh loop gets STALL_S for its first frame

    def _continuation(self) -> tuple[int, int] | None:
        """(next sequence number, timestamp origin) that continue what the loop sent; None if unknown."""
        last_timestamp = getattr(self.sender, _S + "rtp_timestamp", None)
        history = getattr(self.sender, _S + "rtp_history", {})
        ends = [p.sequence_number for p in history.values() if p.timestamp == last_timestamp and p.marker]
        if not ends or self._frame_timestamp is None or last_timestamp is None:
            return None
        return (ends[0] + 1) & 0xFFFF, (last_timestamp - self._frame_timestamp) & 0xFFFFFFFF


async def _resume(sender: Any, codec: Any, continuation: tuple[int, int] | None) -> None:
    """Run the sender's loop again, starting from ``continuation`` instead of fresh random numbers.

    The loop draws both numbers synchronously when it starts, which is inside this very step: the
    stand-ins below are in place only from here to that draw, and each puts the real function back."""
    if continuation is not None:
        sequence, origin = continuation
        real_sequence, real_random32 = aiortc_sender.random_sequence_number, aiortc_sender.random32

        def first_sequence() -> int:
            aiortc_sender.random_sequence_number = real_sequence
            return sequence

        def first_origin() -> int:
            aiortc_sender.random32 = real_random32
            return origin

        aiortc_sender.random_sequence_number, aiortc_sender.random32 = first_sequence, first_origin
    await sender._run_rtp(codec)


class Watchdog:
    """Watches a session's return streams against its input; see the module docstring."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, stall_s: float = STALL_S) -> None:
        self._clock = clock
        self.stall_s = stall_s
        self.streams: dict[str, StreamWatch] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(
        self, name: str, sender: Any, make_track: Callable[[], MediaStreamTrack], offered: Callable[[], int]
    ) -> StreamWatch:
        """Watch ``sender``'s stream: ``offered()`` counts the frames handed to its current track, and
        ``make_track()`` builds the replacement track on a restart."""
        watch = self.streams[name] = StreamWatch(name, sender, make_track, offered, self._clock)
        return watch

    def stalled(self) -> list[StreamWatch]:
        """The streams for which a frame has waited ``stall_s`` with nothing sent since."""
        now = self._clock()
        return [w for w in self.streams.values() if w.stalled(now, self.stall_s)]

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def stats(self) -> dict[str, int]:
        return {name: w.restarts for name, w in self.streams.items()}

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(CHECK_S)
                for watch in self.stalled():
                    idle_ms = (self._clock() - (watch.last_sent or 0.0)) * 1000.0
                    log.warning("return stream %s: a frame waited, nothing sent for %.0f ms: restarting it",
                                watch.name, idle_ms)  # fmt: skip
                    await watch.restart()
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug here must not pass unnoticed, nor take the session down
            log.exception("return stream watchdog failed")
