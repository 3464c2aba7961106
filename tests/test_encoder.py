"""The return streams' VP8 encoder: aiortc's packetisation with libvpx settings for clean, upscaled frames."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import av
import numpy as np
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from server.encoder import OPTIONS, ReturnVp8Encoder, install, measure, use_return_encoder

from .conftest import load_photo_rgb


def panning_frames(count: int = 24) -> list[av.VideoFrame]:
    """A real photograph panned 4 px a frame at 1280x720: what the SR track hands the encoder."""
    wide = load_photo_rgb(1280 + 4 * count, 720, index=1)
    frames = []
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(wide[:, 4 * i: 4 * i + 1280]), format="rgb24")
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
