"""The return streams' VP8 encoder: aiortc's packetisation with libvpx settings for clean, upscaled frames."""

from __future__ import annotations

import asyncio
import threading
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from srtc.server.encoder import OPTIONS, ReturnVp8Encoder, install, use_return_encoder
from srtc.server.priority import (
    lower_this_thread,
    per_thread_nice,
    process_nice,
    thread_nice,
)
from srtc.tools.encoder_bench import measure

from .conftest import load_photo_rgb


def panning_frames(count: int = 24) -> list[av.VideoFrame]:
    """A real photograph panned 4 px a frame at 1280x720: what the SR track hands the encoder."""
    wide = load_photo_rgb(1280 + 4 * count, 720, index=1)
    frames = []
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(wide[:, 4 * i : 4 * i + 1280]), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts, frame.time_base = i * 3000, Fraction(1, 90000)
        frames.append(frame)
    return frames


def test_return_encoder_uses_its_settings_and_reopens_on_a_bitrate_change():
    frames = panning_frames(6)
    encoder = ReturnVp8Encoder()
    opened = encoder._open(frames[0])
    assert all(opened.options.get(k) == v for k, v in OPTIONS.items()), opened.options
    payloads, timestamp = encoder.encode(frames[0])
    assert payloads and timestamp == 0
    first = encoder.codec
    encoder.encode(frames[1])
    assert encoder.codec is first  # same size and bitrate: aiortc's encode reused our context
    encoder.target_bitrate = 1_200_000  # REMB moved the target by more than 10%
    encoder.encode(frames[2])
    assert encoder.codec is not first and encoder.codec.bit_rate == 1_200_000


def test_return_encoder_is_at_least_as_faithful_as_aiortcs():
    frames = panning_frames()
    ours, stock = measure(ReturnVp8Encoder(), frames)["psnr_y"], measure(Vp8Encoder(), frames)["psnr_y"]
    assert ours > 25.0 and ours >= stock - 0.1, (ours, stock)


class FakeSender:
    def __init__(self) -> None:
        self._RTCRtpSender__encoder = None
        self.calls = 0

    async def _next_encoded_frame(self, codec):
        self.calls += 1
        return "encoded"


def codec(mime: str) -> RTCRtpCodecParameters:
    return RTCRtpCodecParameters(mimeType=mime, clockRate=90000, payloadType=96)


def test_installed_for_vp8_only_and_before_aiortc_makes_its_own():
    vp8, h264 = FakeSender(), FakeSender()
    assert install(vp8, codec("video/VP8")) and isinstance(vp8._RTCRtpSender__encoder, ReturnVp8Encoder)
    assert not install(h264, codec("video/H264")) and h264._RTCRtpSender__encoder is None


async def test_the_sender_hook_installs_on_the_first_frame_and_passes_frames_through():
    sender = FakeSender()
    use_return_encoder(sender)
    assert sender._RTCRtpSender__encoder is None  # the codec is not known before the first frame
    assert await sender._next_encoded_frame(codec("video/VP8")) == "encoded"
    installed = sender._RTCRtpSender__encoder
    assert isinstance(installed, ReturnVp8Encoder)
    await asyncio.gather(*(sender._next_encoded_frame(codec("video/VP8")) for _ in range(3)))
    assert sender._RTCRtpSender__encoder is installed and sender.calls == 4


def _in_new_thread(fn):
    """``fn()``'s result, run in a fresh thread (which starts at the process's nice value)."""
    result = []
    worker = threading.Thread(target=lambda: result.append(fn()))
    worker.start()
    worker.join()
    return result[0]


@pytest.mark.skipif(not per_thread_nice(), reason="per-thread nice values are Linux only")
def test_lowering_a_thread_is_relative_to_the_process_and_leaves_the_others():
    base = process_nice()
    if base + 4 > 19:
        pytest.skip(f"the test process already runs at nice {base}")
    first, again = _in_new_thread(lambda: (lower_this_thread(4), lower_this_thread(4) and thread_nice()))
    assert first == base + 4 and again == base + 4  # twice is still 4 below the process, not 8
    assert thread_nice() == base == process_nice()  # the calling thread and the process are untouched
    assert _in_new_thread(lambda: lower_this_thread(0)) is None


@pytest.mark.skipif(not per_thread_nice(), reason="per-thread nice values are Linux only")
def test_the_return_encoder_lowers_the_threads_that_encode_and_their_children():
    base = process_nice()
    if base + 3 > 19:
        pytest.skip(f"the test process already runs at nice {base}")
    frames = panning_frames(2)
    encoder = ReturnVp8Encoder(nice=3)

    def encode_then_spawn():
        payloads, _ = encoder.encode(frames[0])
        child = _in_new_thread(thread_nice)  # a thread this one starts, as libvpx starts its workers
        return len(b"".join(payloads)), thread_nice(), child

    size, own, child = _in_new_thread(encode_then_spawn)
    assert size > 1000 and own == base + 3 and child == base + 3
    assert encoder.stats()["nice"] == 3 and thread_nice() == base
    assert _in_new_thread(lambda: (ReturnVp8Encoder().encode(frames[1]), thread_nice())[1]) == base


def test_a_source_whose_timestamps_go_back_does_not_end_the_stream():
    """libvpx refuses a pts that is not after the last (``avcodec_send_frame()`` fails) and aiortc's sender would
    stop for good; the return encoder shifts such frames forward instead, keeping their spacing."""
    frames = panning_frames(8)
    encoder = ReturnVp8Encoder()
    stamps = []
    for i, frame in enumerate(frames):
        frame.pts = 3000 * (i + 100) if i < 4 else 3000 * (i - 4)  # the source restarts its clock at frame 4
        payloads, timestamp = encoder.encode(frame)
        assert payloads, i
        stamps.append(timestamp)
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert all(s > 0 for s in steps), stamps  # the viewer sees time go on
    assert all(abs(s - 3000) <= 1 for s in steps), steps  # and the frames keep their spacing
    assert encoder.stats()["pts_shifts"] == 1 and encoder.stats()["errors"] == 0


def test_an_encoder_failure_reopens_with_a_keyframe_and_the_stream_goes_on(monkeypatch):
    """Fault injection: libvpx raising mid-stream costs that frame's context, not the stream."""
    from aiortc.codecs.vpx import VpxPayloadDescriptor

    frames = panning_frames(6)
    encoder = ReturnVp8Encoder()
    encoder.encode(frames[0])
    encoder.encode(frames[1])
    real = Vp8Encoder.encode
    calls = {"n": 0}

    def failing_once(self, frame, force_keyframe=False):
        calls["n"] += 1
        if calls["n"] == 1:
            raise av.error.InvalidDataError(1094995529, "avcodec_send_frame()")
        return real(self, frame, force_keyframe)

    monkeypatch.setattr(Vp8Encoder, "encode", failing_once)
    payloads, _ = encoder.encode(frames[2])
    assert payloads and encoder.stats()["errors"] == 1 and encoder.reopens == 1
    _, data = VpxPayloadDescriptor.parse(payloads[0])
    assert data[0] & 1 == 0  # the first frame of the fresh context is a keyframe (VP8: bit 0 clear)
    for frame in frames[3:]:
        assert encoder.encode(frame)[0]
