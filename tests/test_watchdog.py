"""The return-stream watchdog's rule: restart a stream when a frame waited STALL_S for it and it sent nothing.

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


async def test_a_stream_is_stalled_only_when_a_frame_waited_and_nothing_was_sent():
    clock, offered = Clock(), {"n": 0}
    dog = Watchdog(clock=clock)
    sender = _sender()
    dog.watch("sr", sender, make_track=lambda: None, offered=lambda: offered["n"])
    offered["n"] += 1
    clock.now += 2 * STALL_S
    assert dog.stalled() == [], "a stream that never sent is not stopped: it has not started"
    await sender._next_encoded_frame("vp8")  # the first frame goes out
    for step in range(1, 5):  # frames keep coming, the stream keeps sending
        clock.now += 0.2
        offered["n"] += 6
        assert dog.stalled() == [], step
        await sender._next_encoded_frame("vp8")
    clock.now += 3.0  # nothing offered (a paused camera, a forward waiting for its keyframe): not stopped
    assert dog.stalled() == []
    offered["n"] += 1  # a frame arrives and is not taken
    assert dog.stalled() == [], "the wait starts when the frame is seen, not at the last send"
    clock.now += STALL_S * 0.9
    offered["n"] += 6
    assert dog.stalled() == [], "not yet: under the stall time"
    clock.now += STALL_S * 0.2
    assert [w.name for w in dog.stalled()] == ["sr"], "a frame waited longer than the stall time, nothing sent"
    await sender._next_encoded_frame("vp8")  # it went out after all: the wait is over
    assert dog.stalled() == []
    assert dog.stats() == {"sr": 0}


async def test_the_watchdog_task_ends_with_stop():
    dog = Watchdog()
    dog.start()
    await asyncio.sleep(0.25)
    dog.stop()
    await asyncio.sleep(0)
    assert dog._task is not None and dog._task.done()
