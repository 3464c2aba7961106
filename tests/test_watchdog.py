"""The return-stream watchdog's rule: restart a stream that sent nothing for STALL_S while input flowed.

The rule runs on an injected clock against a stand-in sender (only ``_next_encoded_frame`` is used by
the rule); restarting a real aiortc sender mid-call is tested over loopback in test_loopback.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from srtc.server.watchdog import STALL_S, Watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _sender():
    async def next_encoded_frame(codec):
        return SimpleNamespace(timestamp=3000, payloads=[b"x"])

    return SimpleNamespace(_next_encoded_frame=next_encoded_frame)


async def test_a_stream_is_stalled_only_when_input_flows_and_it_sent_nothing_for_the_stall_time():
    clock, frames = Clock(), {"n": 0}
    dog = Watchdog(lambda: frames["n"], clock=clock)
    sender = _sender()
    dog.watch("sr", sender, make_track=lambda: None)
    assert dog.stalled() == [], "a stream that never sent is not stopped: it has not started"
    await sender._next_encoded_frame("vp8")  # the first frame goes out at t=100
    for step in range(1, 5):  # input keeps coming, the stream keeps sending
        clock.now += 0.2
        frames["n"] += 6
        await sender._next_encoded_frame("vp8")
        assert dog.stalled() == [], step
    clock.now += STALL_S * 0.9
    frames["n"] += 6
    assert dog.stalled() == [], "not yet: under the stall time"
    clock.now += STALL_S * 0.2
    frames["n"] += 6
    assert [w.name for w in dog.stalled()] == ["sr"], "input flows, nothing sent for longer than the stall time"
    clock.now += 5.0  # the input stops too (the client paused its camera): nothing to send, nothing stopped
    assert dog.stalled() == []
    assert dog.stats() == {"sr": 0}


async def test_the_watchdog_task_ends_with_stop():
    dog = Watchdog(lambda: 0)
    dog.start()
    await asyncio.sleep(0.25)
    dog.stop()
    await asyncio.sleep(0)
    assert dog._task is not None and (dog._task.cancelled() or dog._task.done())
