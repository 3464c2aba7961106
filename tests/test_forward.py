"""SR off forwarded as the sender encoded it: frames in order from a keyframe, keyframe requests passed
upstream without a storm, RTP timestamps unwrapped, and real VP8 frames that decode after the hand-over."""

from __future__ import annotations

import asyncio

import av
import numpy as np
import pytest

from srtc.server.forward import (
    KEYFRAME_REQUEST_INTERVAL_S,
    QUEUE_FRAMES,
    ForwardTrack,
    TimestampUnwrapper,
)

from .conftest import photo_frame


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def vp8_frames(count: int = 12) -> list[tuple[bytes, bool]]:
    """Real VP8 frames of a panned photograph (the first a keyframe), as an uplink sends them."""
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 320, 180, "yuv420p"
    encoder.bit_rate, encoder.gop_size = 400_000, 1000
    base = photo_frame(400, 180).to_ndarray(format="rgb24")
    out = []
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, 4 * i : 4 * i + 320]), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = i
        out += [(bytes(p), bool(p.is_keyframe)) for p in encoder.encode(frame)]
    out += [(bytes(p), bool(p.is_keyframe)) for p in encoder.encode(None)]
    return out


def test_timestamps_unwrap_across_the_32_bit_boundary():
    unwrap = TimestampUnwrapper()
    assert [unwrap(t) for t in (4294964000, 4294967000, 704, 3704)] == [0, 3000, 4000, 7000]
    assert unwrap(704) == 4000  # a late, older timestamp goes back, not forward by 2^32
    later = TimestampUnwrapper()
    assert later(1000) == 0 and later(500) == -500


async def test_forwarding_starts_at_a_keyframe_and_asks_for_one_until_it_comes():
    asks = []
    clock = Clock()
    track = ForwardTrack("vp8", lambda: asks.append(clock.now), clock=clock)
    track.push("VP8", b"delta-1", 3000, keyframe=False)
    clock.now += 0.1
    track.push("VP8", b"delta-2", 6000, keyframe=False)  # within the interval: no second request
    clock.now += KEYFRAME_REQUEST_INTERVAL_S
    track.push("VP8", b"delta-3", 9000, keyframe=False)
    assert len(asks) == 2 and track.dropped == 3 and track.keyframe_requests == 2
    track.push("VP8", b"key", 12000, keyframe=True)
    track.push("VP8", b"delta-4", 15000, keyframe=False)
    first, second = await track.recv(), await track.recv()
    assert bytes(first) == b"key" and bytes(second) == b"delta-4"
    assert second.pts - first.pts == 3000 and first.time_base == second.time_base
    assert track.stats()["frames_out"] == 2 and track.stats()["keyframes"] == 1


async def test_other_codecs_are_counted_not_sent_and_a_stalled_sender_restarts_at_a_keyframe():
    track = ForwardTrack("VP8", lambda: None, clock=Clock())
    track.push("H264", b"x", 0, keyframe=True)
    assert track.other_codec == 1 and track._queue.qsize() == 0
    track.push("VP8", b"key", 0, keyframe=True)
    for i in range(QUEUE_FRAMES + 3):
        track.push("VP8", b"d", 3000 * (i + 1), keyframe=False)
    assert track._queue.qsize() == 0 and track.dropped >= QUEUE_FRAMES  # flushed, waiting for a keyframe
    track.push("VP8", b"key2", 999_000, keyframe=True)
    assert bytes(await track.recv()) == b"key2"


async def test_a_stopped_track_ends():
    from aiortc.mediastreams import MediaStreamError

    track = ForwardTrack("VP8", lambda: None)
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(track.recv(), 1.0)


async def test_real_vp8_frames_survive_the_hand_over_and_decode():
    """What the return sender gets is the uplink's bitstream itself: a VP8 decoder reads every frame."""
    track = ForwardTrack("VP8", lambda: None)
    frames = vp8_frames()
    assert frames[0][1] and not any(k for _, k in frames[1:])
    for i, (data, key) in enumerate(frames):
        track.push("VP8", data, 3000 * i, keyframe=key)
    decoder = av.CodecContext.create("libvpx", "r")
    decoded = []
    for _ in frames:
        decoded += decoder.decode(await track.recv())
    assert len(decoded) == len(frames) and (decoded[0].width, decoded[0].height) == (320, 180)
    assert decoded[-1].to_ndarray(format="gray").std() > 20  # a real picture
