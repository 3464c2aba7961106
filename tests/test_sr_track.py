"""The SR track behind a consumer slower than the source: the newest frame wins, skips are counted."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from srtc.server.fanout import FrameFanout
from srtc.server.sr_track import RawTrack, SuperResolutionTrack

from .conftest import photo_frame


class FastSource(MediaStreamTrack):
    """Real frames at a fixed pace, far faster than the consumer takes them; pts counts frames."""

    kind = "video"

    def __init__(self, total: int, interval_s: float) -> None:
        super().__init__()
        frames = [photo_frame(320, 180, index=i) for i in range(4)]
        self.planes, self.time_base = [f.to_ndarray() for f in frames], frames[0].time_base
        self.total, self.interval_s, self.sent = total, interval_s, 0

    async def recv(self) -> av.VideoFrame:
        if self.sent >= self.total:
            raise MediaStreamError
        await asyncio.sleep(self.interval_s)
        # A fresh frame object per send (``reformat()`` with nothing to change returns the same object, so a
        # later send would rewrite the pts of a frame the stage still holds: a duplicate pts under load).
        frame = av.VideoFrame.from_ndarray(self.planes[self.sent % 4], format="yuv420p")
        frame.pts, frame.time_base = self.sent, self.time_base
        self.sent += 1
        return frame


async def test_slow_consumer_gets_newest_frames_and_skips_are_counted(upscaler):
    source = FastSource(total=120, interval_s=0.005)
    fanout = FrameFanout(source)
    with ThreadPoolExecutor(1) as executor:
        sr = SuperResolutionTrack(fanout.subscribe(), upscaler, executor)
        raw = RawTrack(fanout.subscribe())
        seen = []
        for step in range(8):
            frame = await sr.recv()
            seen.append(frame.pts)
            assert (frame.width, frame.height) == (640, 360)
            lag = source.sent - 1 - frame.pts
            # Once it has timed the consumer, the stage starts each upscale late enough to take a fresh frame.
            if step >= 2:
                assert lag <= 4, f"SR sent frame {frame.pts} while the source was at {source.sent - 1}"
            await asyncio.sleep(0.06)  # the consumer is ~12x slower than the source
        sr.stop()
        await fanout.stop()
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert sr.slot.skipped >= source.sent - len(seen) - 2
    assert sr.slot.received == fanout.frames
    stats = sr.stats()
    assert stats["frames_out"] == 8 and stats["skipped"] == sr.slot.skipped and stats["sr_ms"]["p50"] > 0
    # The raw twin was never read, so all it ever held was the newest frame.
    assert raw.slot.skipped == fanout.frames - 1


async def test_sr_off_sends_bicubic_at_the_same_size(upscaler):
    source = FastSource(total=3, interval_s=0.001)
    fanout = FrameFanout(source)
    with ThreadPoolExecutor(1) as executor:
        sr = SuperResolutionTrack(fanout.subscribe(), upscaler, executor, enabled=False)
        frame = await sr.recv()
        assert (frame.width, frame.height) == (640, 360)
        assert sr.stats()["upscaler"] == "bicubic"
        sr.stop()
        await fanout.stop()


async def test_the_track_ends_when_the_source_ends(upscaler):
    source = FastSource(total=2, interval_s=0.001)
    fanout = FrameFanout(source)
    raw = RawTrack(fanout.subscribe())
    await asyncio.sleep(0.05)
    await raw.recv()  # the newest of the two
    try:
        await asyncio.wait_for(raw.recv(), timeout=2)
    except MediaStreamError:
        pass
    else:
        raise AssertionError("recv() after the source ended should raise MediaStreamError")


async def test_sr_time_is_the_worker_s_not_the_event_loop_s_delay_in_resuming(upscaler):
    """A busy event loop delays the coroutine after the upscale ends: that is waiting, not SR."""
    import time

    class SlowUpscaler:
        name = "slow"

        def upscale(self, frame: av.VideoFrame) -> av.VideoFrame:
            time.sleep(0.02)  # the stage's own work: 20 ms
            return upscaler.upscale(frame)

    source = FastSource(total=4, interval_s=0.001)
    fanout = FrameFanout(source)
    with ThreadPoolExecutor(1) as executor:
        sr = SuperResolutionTrack(fanout.subscribe(), SlowUpscaler(), executor)

        async def hog_the_loop() -> None:
            await asyncio.sleep(0.005)  # the upscale has started in the worker
            time.sleep(0.2)  # then the loop is busy elsewhere for 200 ms, long after the worker is done

        hog = asyncio.ensure_future(hog_the_loop())
        await sr.recv()
        await hog
        sr.stop()
        await fanout.stop()
    sr_ms = sr.sr_ms.summary()
    assert 18 < sr_ms["p50"] <= sr_ms["max"] < 150  # the upscale itself, not the 200 ms stall


class FailingUpscaler:
    """The generator raising on chosen calls mid-stream, as an onnxruntime error on a bad frame would."""

    def __init__(self, inner, fail_on: set[int]) -> None:
        self.inner, self.name, self.fail_on, self.calls = inner, inner.name, fail_on, 0

    def upscale_luma(self, y):
        return self.inner.upscale_luma(y)

    def upscale(self, frame: av.VideoFrame) -> av.VideoFrame:
        self.calls += 1
        if self.calls in self.fail_on:
            raise RuntimeError("injected generator failure")
        return self.inner.upscale(frame)


async def test_a_generator_error_mid_stream_costs_that_frame_not_the_stream(upscaler):
    """Each failing call is answered with bicubic for that frame; the frames before and after are the
    generator's, in order, at the same size, and every failure is counted."""
    source = FastSource(total=60, interval_s=0.01)
    fanout = FrameFanout(source)
    failing = FailingUpscaler(upscaler, fail_on={3, 4, 9})
    with ThreadPoolExecutor(1) as executor:
        sr = SuperResolutionTrack(fanout.subscribe(), failing, executor)
        frames = []
        for _ in range(14):
            frames.append(await asyncio.wait_for(sr.recv(), timeout=2.0))
        stats = sr.stats()
        sr.stop()
        await fanout.stop()
    assert all((f.width, f.height) == (640, 360) for f in frames)
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    assert failing.calls >= 12 and stats["errors"] == 3 and stats["upscaler"] == upscaler.name
