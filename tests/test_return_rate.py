"""The return streams' bitrates: limits by resolution, the split of a shared REMB, fewer reopenings."""

from __future__ import annotations

import av
import numpy as np
from aiortc.codecs.vpx import MAX_BITRATE, MIN_BITRATE
from aiortc.rtp import RTCP_PSFB_APP, RTCP_PSFB_PLI, RtcpPsfbPacket, pack_remb_fci

from srtc.server import encoder as encoder_module
from srtc.server.encoder import ReturnVp8Encoder
from srtc.server.return_rate import ReturnBitrates, limits, share

from .conftest import photo_frame
from .test_encoder import panning_frames


def test_limits_keep_aiortcs_range_at_360p_and_grow_with_the_pixels():
    assert limits(640, 360).minimum == MIN_BITRATE and limits(640, 360).maximum == MAX_BITRATE
    assert limits(320, 180) == limits(640, 360)  # never below aiortc's own range
    hd = limits(1280, 720)
    assert 3.0 * MAX_BITRATE < hd.maximum < 4.0 * MAX_BITRATE  # WebRTC's ladder: 720p takes ~3.5x 360p
    assert hd.minimum == MIN_BITRATE and hd.minimum < hd.default < hd.maximum
    assert hd.clamp(10e6) == hd.maximum and hd.clamp(1) == MIN_BITRATE


def test_a_shared_estimate_is_split_in_proportion_to_the_streams_ceilings():
    hd, sd = limits(1280, 720).maximum, limits(640, 360).maximum
    parts = share(4_000_000, hd, [hd, sd]), share(4_000_000, sd, [hd, sd])
    assert abs(sum(parts) - 4_000_000) <= 2 and parts[0] > 3 * parts[1]
    assert share(900_000, sd, [sd]) == 900_000  # a stream's own estimate is all its own


class Sender:
    """What ReturnBitrates touches of an aiortc RTCRtpSender: its SSRC, its RTCP handler, its encoder."""

    def __init__(self, ssrc: int, size: tuple[int, int]) -> None:
        self._ssrc = ssrc
        self.passed: list = []
        self._RTCRtpSender__encoder = ReturnVp8Encoder()
        self._RTCRtpSender__encoder.encode(photo_frame(*size))  # a first frame: the stream's resolution

    async def _handle_rtcp_packet(self, packet) -> None:
        self.passed.append(packet)

    @property
    def encoder(self) -> ReturnVp8Encoder:
        return self._RTCRtpSender__encoder


def remb(bps: int, *ssrcs: int) -> RtcpPsfbPacket:
    return RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(bps, list(ssrcs)))


async def test_a_browsers_remb_naming_both_streams_is_shared_and_aiortcs_per_stream_remb_is_not():
    sr, raw = Sender(11, (1280, 720)), Sender(22, (640, 360))
    rates = ReturnBitrates()
    rates.add("sr", sr)
    rates.add("raw", raw)
    for sender in (sr, raw):  # the DTLS transport routes a REMB to every sender it names
        await sender._handle_rtcp_packet(remb(3_000_000, 11, 22))
    assert sr.encoder.requested + raw.encoder.requested <= 3_000_000
    assert sr.encoder.requested > 3 * raw.encoder.requested
    await raw._handle_rtcp_packet(remb(800_000, 22))  # one estimator per stream (an aiortc client)
    assert raw.encoder.requested == 800_000
    pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=22)
    await raw._handle_rtcp_packet(pli)
    assert raw.passed == [pli] and sr.passed == []  # everything but REMB still reaches aiortc
    assert rates.stats()["raw"]["requested_kbps"] == 800
    early = Sender(33, (640, 360))
    early._RTCRtpSender__encoder = None  # no frame encoded yet: aiortc has no encoder to tell either
    rates.add("late", early)
    await early._handle_rtcp_packet(remb(800_000, 33))
    assert early.passed == [] and "late" not in rates.stats()


def encoded_kbps(encoder: ReturnVp8Encoder, frames: list[av.VideoFrame]) -> float:
    """The stream's rate at 30 fps, keyframe included (CBR pays for it over the next frames)."""
    sizes = [sum(map(len, encoder.encode(frame)[0])) for frame in frames]
    return float(np.mean(sizes)) * 8 * 30 / 1000


def test_the_first_remb_over_the_start_bitrate_applies_at_once_later_rises_wait():
    frames = panning_frames(4)
    encoder = ReturnVp8Encoder()
    encoder.encode(frames[0])  # before any REMB: the 720p start bitrate
    assert encoder.codec.bit_rate == limits(1280, 720).default
    encoder.target_bitrate = 4_000_000  # the browser's first REMB, a second later
    encoder.encode(frames[1])
    assert encoder.codec.bit_rate == 4_000_000 and encoder.reopens == 1
    encoder.target_bitrate = 5_000_000  # the next rise waits RAISE_HOLD_S
    encoder.encode(frames[2])
    assert encoder.codec.bit_rate == 4_000_000 and encoder.reopens == 1


def test_a_720p_stream_gets_more_than_aiortcs_ceiling_and_rises_in_held_steps(monkeypatch):
    frames = panning_frames(24)
    capped = ReturnVp8Encoder()
    capped.target_bitrate = MAX_BITRATE  # aiortc's ceiling, whatever the resolution
    encoder = ReturnVp8Encoder()
    encoder.target_bitrate = 20_000_000  # the client can take far more than a 720p stream needs
    kbps, capped_kbps = encoded_kbps(encoder, frames[:20]), encoded_kbps(capped, frames[:20])
    assert encoder.codec.bit_rate == limits(1280, 720).maximum > MAX_BITRATE
    assert kbps > 2 * capped_kbps, (kbps, capped_kbps)  # libvpx really spends it on this detailed content
    opened = encoder.codec
    encoder.target_bitrate = 1_000_000  # congestion: a fall applies at once
    encoder.encode(frames[20])
    assert encoder.codec is not opened and encoder.codec.bit_rate == 1_000_000
    encoder.target_bitrate = 2_000_000  # a rise within RAISE_HOLD_S of the last opening waits
    lowered = encoder.codec
    encoder.encode(frames[21])
    assert encoder.codec is lowered and encoder.target_bitrate == 1_000_000
    monkeypatch.setattr(encoder_module, "RAISE_HOLD_S", 0.0)
    encoder.encode(frames[22])
    assert encoder.codec is not lowered and encoder.codec.bit_rate == 2_000_000
    assert encoder.stats()["reopens"] == 2 and encoder.stats()["target_kbps"] == 2000


def test_with_a_viewer_link_the_stream_starts_at_its_rate_and_a_remb_above_what_is_sent_is_no_limit(monkeypatch):
    """--viewer-kbps: the SR stream's encode starts at the link's share, not at a ramp; a receiver's REMB follows
    what it receives, so one above the sent rate is ignored, one below it is congestion and applies at once,
    and the REMB rules until it is back up at the link's rate."""
    frames = panning_frames(30)
    rates = ReturnBitrates(viewer_bps=6_000_000)
    encoder = ReturnVp8Encoder()
    encoder.ceiling = lambda: rates.ceiling("sr")
    encoder.encode(frames[0])
    assert encoder.codec.bit_rate == 6_000_000 and encoder.stats()["max_kbps"] == 6000  # no forwarded stream yet
    for frame in frames[1:12]:
        encoder.encode(frame)
    sent = encoder.sent_bps()
    assert 0 < sent
    encoder.target_bitrate = int(sent * 1.2)  # a REMB above what arrives: not congestion
    encoder.encode(frames[12])
    assert encoder.codec.bit_rate == 6_000_000 and not encoder.congested and encoder.reopens == 0
    assert sent > 2_000_000  # detailed content at a 6 Mbps target
    encoder.target_bitrate = 1_500_000  # below what is sent: congestion, at once
    encoder.encode(frames[13])
    assert encoder.congested and encoder.codec.bit_rate == 1_500_000
    monkeypatch.setattr(encoder_module, "RAISE_HOLD_S", 0.0)
    encoder.target_bitrate = 3_000_000  # recovering: the REMB's value, still under the link's
    encoder.encode(frames[14])
    assert encoder.congested and encoder.codec.bit_rate == 3_000_000
    encoder.target_bitrate = 9_000_000  # back above the link's rate: the link rules again
    encoder.encode(frames[15])
    assert not encoder.congested and encoder.codec.bit_rate == 6_000_000


def test_a_forwarded_streams_rate_comes_off_the_viewer_link_and_off_a_shared_remb():
    rates = ReturnBitrates(viewer_bps=8_000_000)

    class Sender:
        def __init__(self, ssrc: int) -> None:
            self._ssrc = ssrc

            async def inner(packet) -> None:
                pass

            self._handle_rtcp_packet = inner

    forwarded = Sender(2)
    rates.add_forwarded("raw", forwarded, lambda: 600_000.0)
    assert rates.ceiling("sr") == 7_400_000  # the encoded stream is not added yet: all that is left
    sr = Sender(1)
    rates.add("sr", sr)
    assert rates.ceiling("sr") == 7_400_000
    assert ReturnBitrates().ceiling("sr") is None  # no viewer setting: the resolution's limits rule
