"""The frame-number code must survive what the real path does to a frame: VP8 at a low bitrate and 2x scaling."""

from __future__ import annotations

from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from srtc.shared import SHARED
from srtc.tools import framecode

SET14 = SHARED / "data" / "benchmarks" / "Set14"


def _photo_bgr() -> np.ndarray:
    """A real photograph (Set14) when the shared data is there, else a synthetic textured image."""
    for name in ("baboon.png", "lenna.png", "monarch.png"):
        img = cv2.imread(str(SET14 / name), cv2.IMREAD_COLOR)
        if img is not None:
            return cv2.resize(img, (1280, 720), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(7)
    noise = rng.normal(128, 60, (720, 1280, 3)).astype(np.float32)
    texture = cv2.GaussianBlur(noise, (0, 0), 3)
    ramp = np.linspace(-60, 60, 1280, dtype=np.float32)[None, :, None]
    return np.clip(texture + ramp, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return _photo_bgr()


def _yuv360(bgr720: np.ndarray, shift: int = 0) -> np.ndarray:
    """640x360 yuv420p (as one (540, 640) array) of the photo, optionally panned by ``shift`` px."""
    frame = np.roll(bgr720, shift, axis=1) if shift else bgr720
    small = cv2.resize(frame, (640, 360), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2YUV_I420)


def test_content_is_real(photo: np.ndarray) -> None:
    assert photo.shape == (720, 1280, 3)
    assert float(photo.std()) > 20.0


@pytest.mark.parametrize("number", [0, 1, 255, 256, 4660, 65534, 65535])
def test_bits_round_trip(number: int) -> None:
    bits = framecode.encode_bits(number)
    assert len(bits) == 24
    assert framecode.decode_bits(bits) == number


def test_numbers_wrap_at_2_16(photo: np.ndarray) -> None:
    y = _yuv360(photo)[:360].copy()
    framecode.embed(y, 65536 + 12)
    assert framecode.read(y) == 12


@pytest.mark.parametrize("number", [0, 7, 12345, 65535])
def test_round_trip_on_photo_360p(photo: np.ndarray, number: int) -> None:
    y = _yuv360(photo)[:360].copy()
    framecode.embed(y, number)
    assert framecode.read(y) == number
    assert framecode.read(y, scale=1.0) == number


def test_round_trip_on_photo_720p(photo: np.ndarray) -> None:
    y = cv2.cvtColor(photo, cv2.COLOR_BGR2YUV_I420)[:720].copy()
    framecode.embed(y, 4242)
    assert framecode.read(y) == 4242


def test_survives_bicubic_2x(photo: np.ndarray) -> None:
    y = _yuv360(photo)[:360].copy()
    framecode.embed(y, 31337)
    up = cv2.resize(y, (1280, 720), interpolation=cv2.INTER_CUBIC)
    assert framecode.read(up) == 31337
    assert framecode.read(up, scale=2.0) == 31337


def test_embed_touches_only_the_region(photo: np.ndarray) -> None:
    y = _yuv360(photo)[:360].copy()
    before = y.copy()
    framecode.embed(y, 999)
    x0, y0, x1, y1 = framecode.region(640, 360)
    changed = np.argwhere(y != before)
    assert changed.size > 0
    assert changed[:, 0].min() >= y0 and changed[:, 0].max() < y1
    assert changed[:, 1].min() >= x0 and changed[:, 1].max() < x1


def test_region_scales_with_width() -> None:
    assert framecode.region(640, 360) == (0, 0, 128, 48)
    assert framecode.region(1280, 720) == (0, 0, 256, 96)
    assert framecode.region(1280, 720, margin=8) == (0, 0, 272, 112)


def _vp8_round_trip(frames: list[np.ndarray], bitrate: int) -> list[np.ndarray]:
    """Encode yuv420p frames with libvpx (real-time settings, like aiortc) and decode them back to luma."""
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt = 640, 360, "yuv420p"
    enc.bit_rate = bitrate
    enc.time_base = Fraction(1, 30)
    enc.framerate = Fraction(30, 1)
    enc.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    dec = av.CodecContext.create("libvpx", "r")
    out: list[np.ndarray] = []

    def drain(packets: list[av.Packet]) -> None:
        for packet in packets:
            for decoded in dec.decode(packet):
                out.append(decoded.to_ndarray(format="yuv420p")[:360].copy())

    for pts, yuv in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = pts
        drain(enc.encode(frame))
    drain(enc.encode(None))
    return out


def test_survives_vp8_at_300kbps_and_bicubic_2x(photo: np.ndarray) -> None:
    numbers = [1000 + 37 * i for i in range(30)]
    frames = []
    for i, number in enumerate(numbers):
        yuv = _yuv360(photo, shift=9 * i).copy()  # a moving picture, so the encoder is under pressure
        framecode.embed(yuv[:360], number)
        frames.append(yuv)
    decoded = _vp8_round_trip(frames, bitrate=300_000)
    assert len(decoded) == len(numbers)
    assert [framecode.read(y) for y in decoded] == numbers
    upscaled = [cv2.resize(y, (1280, 720), interpolation=cv2.INTER_CUBIC) for y in decoded]
    assert [framecode.read(y) for y in upscaled] == numbers


def test_no_code_reads_none(photo: np.ndarray) -> None:
    y = _yuv360(photo)[:360].copy()
    assert framecode.read(y) is None
    assert framecode.read(np.zeros((360, 640), np.uint8)) is None
    assert framecode.read(np.full((360, 640), 255, np.uint8)) is None


def test_flipped_block_reads_none(photo: np.ndarray) -> None:
    y = _yuv360(photo)[:360].copy()
    framecode.embed(y, 2024)
    x0, y0, x1, y1 = framecode._block_box(5, 1.0)
    block = y[y0:y1, x0:x1]
    block[:] = np.where(block > framecode.THRESHOLD, framecode.DARK, framecode.BRIGHT)
    assert framecode.read(y) is None


def test_every_single_bit_error_reads_none() -> None:
    bits = framecode.encode_bits(51234)
    for i in range(len(bits)):
        damaged = list(bits)
        damaged[i] ^= 1
        assert framecode.decode_bits(damaged) is None


def test_smudged_block_reads_none(photo: np.ndarray) -> None:
    y = _yuv360(photo)[:360].copy()
    framecode.embed(y, 2024)
    x0, y0, x1, y1 = framecode._block_box(11, 1.0)
    y[y0:y1, x0:x1] = 128  # neither dark nor bright: the code is damaged, not a different number
    assert framecode.read(y) is None


def test_too_small_plane() -> None:
    assert framecode.read(np.zeros((20, 40), np.uint8), scale=1.0) is None
    with pytest.raises(ValueError):
        framecode.embed(np.zeros((360, 640), np.float32), 1)
