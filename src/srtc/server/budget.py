"""Where a frame's latency goes: receive and jitter buffer, decode, wait, SR, encode, send.

A frame is timed at eight points, all on ``time.monotonic()``:

1. its first RTP packet reaches the receiver (the resilient receiver notes it per RTP timestamp),
2. it is complete and handed to the decoder thread (``receive`` = 2 - 1: the jitter buffer, NACK waits),
3. its decoded picture reaches the fanout (``decode`` = 3 - 2),
4. the SR stage starts on it, 5. the upscale ends (``sr`` = 5 - 4; nothing on the raw track),
6. the stage hands it to aiortc's encoder (``wait`` = (4 - 3) + (6 - 5): the one-frame slot, the
   pipelining lead, and an upscaled frame waiting for the encoder to be free),
7. the encoder returns its payloads (``encode`` = 7 - 6), and its last packet is on the wire
   (``send`` = the sender asking for the next frame - 7: packetising and the transport's send).

Points 1 and 2 exist only with the resilient receiver (stock aiortc's jitter buffer is not
instrumented); those stages then report nothing. ``total`` runs from 1 (or 3 without it) to the send.

The decoded picture is matched to its timings by ``pts``: aiortc's decoders stamp each decoded frame
with the (mapped) timestamp of the encoded frame the receiver queued, so no frame carries extra state.
Encode time is read by wrapping one sender's ``_next_encoded_frame`` on that instance (aiortc 1.16.0,
the version pinned in pyproject.toml: ``_run_rtp`` awaits it, then sends every payload before asking
again); nothing else of aiortc's changes.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypedDict

from .metrics import RollingSamples

STAGES = ("receive", "decode", "wait", "sr", "encode", "send", "total")


class ArrivalLog:
    """Receive-side times of recent frames, by the pts their decoded picture will carry.

    Bounded: frames that never decode (skipped, dropped) must not accumulate.
    """

    def __init__(self, size: int = 128) -> None:
        self._times: OrderedDict[int, tuple[float, float]] = OrderedDict()
        self._size = size

    def released(self, pts: int, first_packet: float, released: float) -> None:
        """The frame stamped ``pts`` was handed to the decoder at ``released``; its first packet came at
        ``first_packet``."""
        self._times[pts] = (first_packet, released)
        self._times.move_to_end(pts)
        while len(self._times) > self._size:
            self._times.popitem(last=False)

    def lookup(self, pts: int | None) -> tuple[float, float] | None:
        """(first packet, released) of a decoded frame, or None when it was not logged."""
        return None if pts is None else self._times.get(pts)


class FrameTimes(TypedDict, total=False):
    """One frame's points in time (monotonic seconds), as :meth:`StageTimes.frame` takes them.

    ``first_packet`` and ``released`` are None when the receiver did not log the frame; ``encoded`` and
    ``sent`` are added as the frame goes out.
    """

    first_packet: float | None
    released: float | None
    arrived: float
    started: float
    done: float
    handed: float
    encoded: float
    sent: float


class StageTimes:
    """Per-stage samples (ms) of the frames one track has sent; :meth:`summary` gives p50/p95 each."""

    def __init__(self, size: int = 300) -> None:
        self.samples = {stage: RollingSamples(size) for stage in STAGES}

    def frame(self, times: FrameTimes) -> None:
        """Record one frame from its points in time (seconds); missing points skip their stages."""
        first, released, arrived = times.get("first_packet"), times.get("released"), times["arrived"]
        started, done, handed = times["started"], times["done"], times["handed"]
        encoded, sent = times["encoded"], times["sent"]
        if first is not None and released is not None:
            self._add("receive", released - first)
            self._add("decode", arrived - released)
        self._add("wait", max(0.0, started - arrived) + max(0.0, handed - done))
        self._add("sr", done - started)
        self._add("encode", encoded - handed)
        self._add("send", sent - encoded)
        self._add("total", sent - (first if first is not None else arrived))

    def summary(self) -> dict[str, dict[str, float | None]]:
        out = {}
        for stage, samples in self.samples.items():
            s = samples.summary()
            out[stage] = {"p50": s["p50"], "p95": s["p95"]}
        return out

    def _add(self, stage: str, seconds: float) -> None:
        self.samples[stage].add(max(0.0, seconds) * 1000.0)


def time_encoding(sender: Any, on_encoded: Callable[[float], None]) -> None:
    """Call ``on_encoded(monotonic time)`` each time ``sender`` has an encoded frame to send.

    Wraps ``_next_encoded_frame`` on this one sender instance (see the module docstring): it returns
    after the track's ``recv()`` and the encode, and ``_run_rtp`` sends the payloads right after.
    """
    inner = sender._next_encoded_frame

    async def timed(codec: Any) -> Any:
        encoded = await inner(codec)
        if encoded is not None:
            on_encoded(time.monotonic())
        return encoded

    sender._next_encoded_frame = timed
