"""The loss-resilient receiver: NACK and re-NACK, give up, PLI, skip until a keyframe, resume.

Unit tests drive :class:`srtc.server.jitter.FrameAssembler` with real RTP packets: frames of a real
photograph panned across 640x360, encoded by aiortc's own VP8 (libvpx) and H.264 (libx264)
encoders and packetized by them, so payload descriptors, keyframe bits and NAL units are real. The
clock is injected; a simulated 10 ms timer calls ``poll`` between packets as the receiver's task does.
The last tests attach to a real aiortc receiver over 127.0.0.1 with a packet dropper in front of it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, VideoStreamTrack
from aiortc.codecs.h264 import H264Decoder, H264Encoder, h264_depayload
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRtpfbPacket, RtpPacket

from srtc.server.jitter import H264, VP8, AssembledFrame, FrameAssembler, Policy

from .conftest import load_photo_rgb

SSRC = 0x1234ABCD
TS_BASE = 4_000_000_000  # the 32-bit RTP timestamp wraps during the streams, on purpose
FRAME_MS = 1000.0 / 30
VP8_KEYFRAMES = (0, 14)
H264_KEYFRAMES = (0, 8)


# ---------------------------------------------------------------------------------------------- real media


@dataclass
class Encoded:
    payloads: list[bytes]
    timestamp: int  # RTP
    keyframe: bool


def _encode(encoder_cls: type, count: int, keyframes: tuple[int, ...]) -> list[Encoded]:
    """``count`` frames of a real photograph panned a few pixels per frame, as aiortc's encoder sends them."""
    rgb = load_photo_rgb(720, 400, index=1)
    encoder = encoder_cls()
    encoder.target_bitrate = 1_500_000
    out = []
    for i in range(count):
        y, x = (3 * i) % 40, (7 * i) % 80
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[y : y + 360, x : x + 640]), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts, frame.time_base = i * 3000, Fraction(1, 90000)
        payloads, timestamp = encoder.encode(frame, force_keyframe=i in keyframes)
        out.append(Encoded(payloads, (TS_BASE + timestamp) & 0xFFFFFFFF, i in keyframes))
    return out


@pytest.fixture(scope="module")
def vp8() -> list[Encoded]:
    frames = _encode(Vp8Encoder, 20, VP8_KEYFRAMES)
    for f in frames:  # the bit the assembler reads: P (inverted) in the first byte after the descriptor
        assert (vp8_depayload(f.payloads[0])[0] & 1 == 0) == f.keyframe
    return frames


@pytest.fixture(scope="module")
def h264() -> list[Encoded]:
    return _encode(H264Encoder, 12, H264_KEYFRAMES)


def packetize(frames: list[Encoded], codec: str = VP8, first_seq: int = 1000) -> list[list[RtpPacket]]:
    """RTP packets per frame, consecutive sequence numbers (uint16), marker on each frame's last packet.

    ``_data`` is set the way aiortc's receiver sets it before its jitter buffer sees the packet.
    """
    depayload = vp8_depayload if codec == VP8 else h264_depayload
    seq, out = first_seq, []
    for f in frames:
        packets = []
        for i, payload in enumerate(f.payloads):
            p = RtpPacket(
                payload_type=96,
                marker=int(i == len(f.payloads) - 1),
                sequence_number=seq & 0xFFFF,
                timestamp=f.timestamp,
                ssrc=SSRC,
                payload=payload,
            )
            p._data = depayload(payload)  # type: ignore[attr-defined]
            packets.append(p)
            seq += 1
        out.append(packets)
    return out


class Sim:
    """An assembler, a clock, a 10 ms poll timer, and a log of everything it asked for."""

    def __init__(self, codec: str = VP8, rtt_ms: float | None = None, policy: Policy | None = None) -> None:
        self.asm = FrameAssembler(codec, policy=policy)
        self.asm.set_rtt(rtt_ms)
        self.now = 0.0
        self.frames: list[tuple[float, AssembledFrame]] = []
        self.nacks: list[tuple[float, list[int]]] = []
        self.plis: list[float] = []

    def _record(self, actions) -> list[AssembledFrame]:
        self.frames += [(self.now, f) for f in actions.frames]
        if actions.nack:
            self.nacks.append((self.now, actions.nack))
        if actions.pli:
            self.plis.append(self.now)
        return actions.frames

    def until(self, t: float, step: float = 10.0) -> None:
        """Let time pass to ``t`` with the timer firing every ``step`` ms."""
        while self.now + step <= t:
            self.now += step
            self._record(self.asm.poll(self.now))
        self.now = max(self.now, t)

    def add(self, packet: RtpPacket, at: float | None = None) -> list[AssembledFrame]:
        if at is not None:
            self.until(at)
        return self._record(self.asm.add(packet, self.now))

    def feed(self, frames: list[list[RtpPacket]], start_ms: float = 0.0, skip: set[int] = frozenset(), index0: int = 0):
        """Send frame i at start + i * 33 ms (all its packets at once) except sequence numbers in ``skip``."""
        for i, packets in enumerate(frames):
            for p in packets:
                if p.sequence_number not in skip:
                    self.add(p, at=start_ms + (index0 + i) * FRAME_MS)

    def released(self, encoded: list[Encoded]) -> list[int]:
        """Indexes (into ``encoded``) of the frames released so far, in release order."""
        index = {e.timestamp: i for i, e in enumerate(encoded)}
        return [index[f.timestamp] for _, f in self.frames]

    @property
    def stats(self) -> dict:
        return self.asm.stats()


def decode_all(frames: list[AssembledFrame], codec: str = VP8) -> list[av.VideoFrame]:
    """Decode the released frames with aiortc's own decoder; raises on a corrupt frame."""
    decoder = Vp8Decoder() if codec == VP8 else H264Decoder()
    pictures = []
    for i, f in enumerate(frames):
        pictures += decoder.decode(JitterFrame(data=f.data, timestamp=i * 3000))
    return pictures


def first_multi_packet_inter(frames: list[list[RtpPacket]], encoded: list[Encoded], minimum: int = 2) -> int:
    return next(i for i, p in enumerate(frames) if len(p) >= minimum and not encoded[i].keyframe)


# ---------------------------------------------------------------------------------------------- in order


def test_in_order_each_frame_is_released_by_its_own_marker_packet(vp8):
    frames = packetize(vp8)
    sim = Sim()
    for i, packets in enumerate(frames):
        for j, p in enumerate(packets):
            out = sim.add(p, at=i * FRAME_MS)
            if j < len(packets) - 1:
                assert out == [], f"frame {i} released before its marker packet"
            else:
                assert [f.timestamp for f in out] == [vp8[i].timestamp], "not released at its own marker"
    assert sim.released(vp8) == list(range(len(vp8)))
    assert [f.keyframe for _, f in sim.frames] == [e.keyframe for e in vp8]
    s = sim.stats
    assert s["framesAssembled"] == len(vp8) and s["keyframesReceived"] == len(VP8_KEYFRAMES)
    assert s["packetsReceived"] == sum(map(len, frames))
    assert s["nackCount"] == s["pliCount"] == s["framesDropped"] == s["packetsLost"] == 0
    assert 30 < s["frameIntervalMs"] < 37  # learned from the RTP timestamps
    pictures = decode_all([f for _, f in sim.frames])
    assert len(pictures) == len(vp8) and {(p.width, p.height) for p in pictures} == {(640, 360)}


# ---------------------------------------------------------------------------------------------- NACK


def test_gap_is_nacked_renacked_after_one_rtt_and_recovered_by_the_retransmission(vp8):
    frames = packetize(vp8)
    m = first_multi_packet_inter(frames, vp8)
    lost = frames[m][0]  # the frame's first packet: the frame cannot even be recognised without it
    sim = Sim()  # RTT unknown: 100 ms
    for p in [p for packets in frames[: m + 3] for p in packets]:
        if p is not lost:
            sim.add(p, at=0.0)
    assert sim.released(vp8) == list(range(m)), "frames after the gap must wait for it, in decode order"
    assert sim.nacks == [(0.0, [lost.sequence_number])], "NACK as soon as the gap shows"
    sim.until(90.0)
    assert len(sim.nacks) == 1, "no re-NACK before one RTT"
    sim.until(100.0)
    assert sim.nacks[-1] == (100.0, [lost.sequence_number]), "re-NACK after one RTT"
    out = sim.add(lost, at=150.0)
    assert [f.timestamp for f in out] == [vp8[i].timestamp for i in (m, m + 1, m + 2)], "all unblocked at once"
    s = sim.stats
    assert s["packetsRecovered"] == 1 and s["packetsLost"] == 0
    assert s["nackCount"] == 2 and s["retransmissionsRequested"] == 2
    assert s["pliCount"] == 0 and s["framesDropped"] == 0
    assert len(decode_all([f for _, f in sim.frames])) == m + 3


def test_renack_interval_follows_rtt_and_the_number_of_nacks_is_bounded(vp8):
    frames = packetize(vp8[:3])
    patient = Policy(min_give_up_ms=10_000.0, max_give_up_ms=10_000.0)  # never give up in this test
    sim = Sim(rtt_ms=40.0, policy=patient)
    lost = frames[1][0]
    sim.feed(frames, skip={lost.sequence_number})
    sim.until(2000.0)
    times = [t for t, seqs in sim.nacks if seqs == [lost.sequence_number]]
    assert len(times) == 10, "at most 10 NACKs per packet"
    assert all(b - a >= 40.0 for a, b in zip(times, times[1:])), "re-NACK every RTT"
    assert times[-1] - times[0] < 40.0 * 9 + 10 * 9, "re-NACK at the RTT, not much later"


def test_deadlines_follow_rtt_with_a_floor_and_a_ceiling():
    asm = FrameAssembler(VP8)
    assert asm.give_up_ms == pytest.approx(2.5 * 100 + 1000 / 30)  # RTT unknown: 100 ms
    assert asm.pli_interval_ms == 300.0 and asm.renack_ms == 100.0
    asm.set_rtt(1.0)  # loopback
    assert asm.give_up_ms == 100.0 and asm.renack_ms == 20.0 and asm.pli_interval_ms == 300.0
    asm.set_rtt(200.0)
    assert asm.give_up_ms == pytest.approx(500 + 1000 / 30) and asm.pli_interval_ms == 400.0
    asm.set_rtt(2000.0)
    assert asm.give_up_ms == 1000.0


# ---------------------------------------------------------------------------------------------- budget


def _looped(encoded: list[Encoded], times: int) -> list[Encoded]:
    """The clip repeated ``times`` times with timestamps running on: a long stream for counting (not decoding)."""
    span = len(encoded) * 3000
    return [
        Encoded(e.payloads, (e.timestamp + k * span) & 0xFFFFFFFF, e.keyframe) for k in range(times) for e in encoded
    ]


def test_retransmission_requests_stay_within_the_budget_under_heavy_loss(vp8):
    stream = _looped(vp8, 10)
    frames = packetize(stream)
    rng = np.random.default_rng(7)
    lost = {p.sequence_number for packets in frames for p in packets if rng.random() < 0.4}
    sim = Sim(rtt_ms=30.0)
    sim.feed(frames, skip=lost)
    sim.until(len(frames) * FRAME_MS + 1500.0)
    s, policy = sim.stats, Policy()
    budget = policy.retransmit_burst + policy.retransmit_share * s["packetsReceived"]
    assert s["retransmissionsRequested"] <= budget, f"{s['retransmissionsRequested']} requests, budget {budget:.0f}"
    assert s["retransmissionsRequested"] >= 0.8 * budget, "the budget is spent, not hoarded, while packets are missing"
    assert s["retransmissionsWithheld"] > 0 and s["pliCount"] > 0, "past the budget: keyframes instead"
    assert s["missingPackets"] == 0, "every gap ends: recovered or given up"


def test_a_gap_the_budget_cannot_ask_for_is_given_up_at_once_with_a_pli(vp8):
    frames = packetize(vp8)
    m = first_multi_packet_inter(frames, vp8)
    lost = frames[m][0]
    sim = Sim(policy=Policy(retransmit_burst=0.0, retransmit_share=0.0))  # no retransmissions at all
    sim.feed(frames[: m + 5], skip={lost.sequence_number})
    sim.until(m * FRAME_MS + 500.0)
    detected = m * FRAME_MS  # its frame's second packet shows the gap (all packets of a frame come at once)
    give_up, rtt = 2.5 * 100 + FRAME_MS, 100.0
    assert sim.nacks == [], "nothing may be requested without budget"
    assert sim.stats["retransmissionsWithheld"] == 1 and sim.plis and sim.stats["packetsLost"] == 1
    # too late to ask once a NACK sent now could not be answered before the give-up time
    assert detected + give_up - rtt <= sim.plis[0] < detected + give_up - rtt + 10.1, "keyframe asked early"


def test_no_nack_whose_answer_would_come_after_the_give_up(vp8):
    frames = packetize(vp8)
    m = first_multi_packet_inter(frames, vp8)
    sim = Sim(rtt_ms=100.0)  # give-up 283 ms: NACKs at 0 and 100 ms; one at 200 ms could only land at 300
    lost = frames[m][0]
    sim.feed(frames[: m + 3], skip={lost.sequence_number})
    sim.until(m * FRAME_MS + 600.0)
    times = [t - m * FRAME_MS for t, seqs in sim.nacks if lost.sequence_number in seqs]
    assert len(times) == 2 and times[0] == 0.0 and 100.0 <= times[1] < 110.1, times
    assert sim.stats["packetsLost"] == 1


def test_the_measured_retransmission_delay_sets_the_deadlines_and_expires(vp8):
    frames = packetize(vp8)
    sim = Sim(rtt_ms=10.0)  # RTCP says 10 ms, but the uplink queue holds each retransmission 400 ms
    lost = frames[2][0]
    sim.feed(frames[:5], skip={lost.sequence_number})
    assert sim.nacks[0][1] == [lost.sequence_number]
    nacked_at = sim.nacks[0][0]
    sim.until(nacked_at + 400.0)
    assert sim.stats["packetsLost"] == 1, "given up after 100 ms, as RTCP's RTT says"
    sim.add(lost, at=nacked_at + 400.0)  # late: but it tells how long a retransmission really takes
    assert sim.asm.retransmit_delay_ms == pytest.approx(400.0)
    assert sim.asm.rtt_ms == pytest.approx(400.0) and sim.asm.give_up_ms == 1000.0
    assert sim.asm.renack_ms == pytest.approx(400.0) and sim.asm.pli_interval_ms == pytest.approx(800.0)
    sim.until(nacked_at + 400.0 + Policy().response_window_ms + 20.0)
    assert sim.asm.retransmit_delay_ms is None and sim.asm.rtt_ms == 10.0, "a stale measurement expires"


# ---------------------------------------------------------------------------------------------- give up


def test_unrecoverable_burst_is_given_up_at_the_deadline_then_pli_skip_until_keyframe_and_resume(vp8):
    frames = packetize(vp8)
    burst = {p.sequence_number for p in frames[2] + frames[3]}  # two whole frames, never retransmitted
    sim = Sim()
    sim.feed(frames, skip=burst)
    sim.until(1500.0)
    detected = 4 * FRAME_MS  # the first packet after the burst reveals it
    give_up = 2.5 * 100 + FRAME_MS
    assert len(sim.plis) == 1, "one PLI: the keyframe that answers it arrives before a repeat is due"
    assert detected + give_up <= sim.plis[0] < detected + give_up + 10.1, "PLI at the deadline, not later"
    assert sim.released(vp8) == [0, 1] + list(range(VP8_KEYFRAMES[1], len(vp8))), "skip until the keyframe"
    for t, f in sim.frames:  # after the keyframe, each frame leaves the moment it is complete
        i = vp8.index(next(e for e in vp8 if e.timestamp == f.timestamp))
        assert t == pytest.approx(i * FRAME_MS)
    s = sim.stats
    assert s["packetsLost"] == len(burst) and s["packetsRecovered"] == 0
    assert s["framesGivenUp"] >= 1 and s["framesDropped"] == VP8_KEYFRAMES[1] - 2
    assert s["keyframesReceived"] == 2 and not s["waitingForKeyframe"]
    nacked = {seq for _, seqs in sim.nacks for seq in seqs}
    assert nacked == burst
    assert max(t for t, _ in sim.nacks) < detected + give_up, "no NACK after giving up"
    pictures = decode_all([f for _, f in sim.frames])  # what was released is decodable as a chain
    assert len(pictures) == len(sim.frames)


def test_late_retransmission_after_give_up_is_ignored(vp8):
    frames = packetize(vp8)
    lost = frames[2][0]
    sim = Sim()
    sim.feed(frames[:12], skip={lost.sequence_number})
    sim.until(800.0)
    assert sim.stats["packetsLost"] == 1 and sim.stats["waitingForKeyframe"]
    released_before = len(sim.frames)
    assert sim.add(lost, at=810.0) == []
    assert len(sim.frames) == released_before
    assert sim.stats["packetsLate"] == 1 and sim.stats["packetsRecovered"] == 0


def test_complete_keyframe_ahead_of_a_blocked_frame_is_released_at_once(vp8):
    frames = packetize(vp8)
    k = VP8_KEYFRAMES[1]
    lost = frames[k - 2][0]  # still within its deadline when the keyframe completes
    sim = Sim()
    sim.feed(frames, skip={lost.sequence_number})
    assert sim.released(vp8) == list(range(k - 2)) + list(range(k, len(vp8)))
    t_key = next(t for t, f in sim.frames if f.keyframe and f.timestamp == vp8[k].timestamp)
    assert t_key == pytest.approx(k * FRAME_MS), "no waiting for the deadline once a keyframe is complete"
    assert sim.plis == [], "the keyframe came anyway: no PLI"


def test_lost_keyframe_pli_repeats_until_a_keyframe_arrives_even_without_packets(vp8):
    # the sender's stream: a keyframe with a packet that never arrives, five inter frames, then silence
    # until the keyframe our PLIs asked for (frames 14.. renumbered to follow on).
    sent = vp8[:6] + vp8[VP8_KEYFRAMES[1] :]
    frames = packetize(sent)
    lost = frames[0][len(frames[0]) // 2]
    sim = Sim()
    sim.feed(frames[:6], skip={lost.sequence_number})
    sim.until(1250.0)
    assert sim.frames == [], "nothing decodable without the first keyframe"
    assert len(sim.plis) >= 3
    assert sim.plis[0] == pytest.approx(290.0, abs=10.1)  # give-up 283 ms after the gap showed at t=0
    gaps = [b - a for a, b in zip(sim.plis, sim.plis[1:])]
    assert all(300.0 <= g < 311.0 for g in gaps), f"PLI every 300 ms: {gaps}"
    sim.feed(frames[6:], start_ms=1260.0)
    sim.until(3000.0)
    assert sim.released(sent) == list(range(6, len(sent)))
    assert sim.plis[-1] < 1260.0, "no PLI once the keyframe is here"
    assert sim.stats["framesDropped"] >= 6 and sim.stats["pliCount"] == len(sim.plis)


def test_pli_is_held_back_while_a_keyframe_is_arriving(vp8):
    k = VP8_KEYFRAMES[1]
    sent = vp8[:4] + vp8[k : k + 1]  # the sender's keyframe follows frame 3
    frames = packetize(sent)
    sim = Sim()
    sim.feed(frames[:4], skip={p.sequence_number for p in frames[2]})  # frame 2 lost: give up -> PLI
    sim.until(600.0)
    assert len(sim.plis) == 1
    key = frames[4]
    sim.add(key[0], at=610.0)  # the keyframe's first packet...
    sim.until(1500.0)  # ...then its rest is slow to come (a big frame on a thin link)
    assert len(sim.plis) == 1, "no second keyframe requested while one is arriving"
    for p in key[1:]:
        sim.add(p, at=1500.0)
    assert sim.released(sent) == [0, 1, 4]


# ---------------------------------------------------------------------------------------------- wire details


def test_burst_across_frames_is_nacked_in_one_message_and_recovered_in_decode_order(vp8):
    frames = packetize(vp8)
    m = first_multi_packet_inter(frames, vp8)
    burst = frames[m] + frames[m + 1] + frames[m + 2][:1]
    sim = Sim()
    sim.feed(frames[: m + 4], skip={p.sequence_number for p in burst})
    assert sorted(sim.nacks[0][1]) == sorted(p.sequence_number for p in burst)
    assert len(sim.nacks) == 1, "one NACK message for the whole burst"
    for p in reversed(burst[1:]):  # retransmissions come back out of order
        assert sim.add(p, at=(m + 4) * FRAME_MS) == []
    out = sim.add(burst[0], at=(m + 4) * FRAME_MS + 5)
    assert [f.timestamp for f in out] == [vp8[i].timestamp for i in range(m, m + 4)]
    assert sim.stats["packetsRecovered"] == len(burst) and sim.stats["pliCount"] == 0


def test_sequence_numbers_wrap_from_65535_to_0(vp8):
    frames = packetize(vp8, first_seq=65530)  # the first keyframe straddles the wrap
    seqs = [p.sequence_number for packets in frames for p in packets]
    assert 65535 in seqs and 0 in seqs
    lost = [p for packets in frames for p in packets if p.sequence_number in (65535, 0)]
    sim = Sim()
    sim.feed(frames[:4], skip={65535, 0})
    nack = sim.nacks[0][1]
    assert nack == [0, 65535], "uint16, ascending"
    bytes(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=SSRC, lost=nack))  # aiortc's packer accepts it
    for p in lost:
        sim.add(p, at=4 * FRAME_MS)
    sim.feed(frames[4:], index0=4)
    assert sim.released(vp8) == list(range(len(vp8)))
    assert sim.stats["packetsRecovered"] == 2 and sim.stats["packetsLost"] == 0


def test_duplicates_and_small_reordering(vp8):
    packets = [p for packets in packetize(vp8[:10]) for p in packets]
    order = list(packets)
    for i in range(0, len(order) - 2, 3):  # swap neighbours in every group of three
        order[i], order[i + 1] = order[i + 1], order[i]
    duplicates = order[::4]
    arrivals = []
    for i, p in enumerate(order):
        arrivals.append(p)
        if p in duplicates:
            arrivals.append(p)  # a duplicate right after
        if i % 5 == 4:
            arrivals.append(order[i - 3])  # and a stale duplicate a little later
    sim = Sim()
    for i, p in enumerate(arrivals):
        sim.add(p, at=i * 3.0)
    assert sim.released(vp8) == list(range(10))
    s = sim.stats
    assert s["packetsDuplicated"] == len(arrivals) - len(packets)
    assert s["packetsLost"] == s["framesDropped"] == s["pliCount"] == 0
    assert s["packetsReceived"] == len(packets)


def test_padding_is_consumed_and_a_gap_between_consecutive_pictures_does_not_stall(vp8):
    encoded = vp8[:8]
    frames = packetize(encoded)
    # renumber: a padding-only packet after frame 3, and a sequence number after frame 5 that never comes
    stream, seq = [], 3000
    for i, packets in enumerate(frames):
        for p in packets:
            p.sequence_number = seq
            seq += 1
            stream.append((i, p))
        if i == 3:
            stream.append(
                (i, RtpPacket(payload_type=96, sequence_number=seq, timestamp=encoded[i].timestamp, ssrc=SSRC))
            )
            seq += 1
        if i == 5:
            seq += 1  # lost padding (or an unknown payload type): PictureIDs of frames 5 and 6 are consecutive
    sim = Sim()
    for i, p in stream:
        sim.add(p, at=i * FRAME_MS)
    assert sim.released(encoded) == list(range(8))
    t6 = next(t for t, f in sim.frames if f.timestamp == encoded[6].timestamp)
    assert t6 == pytest.approx(6 * FRAME_MS), "frame 6 does not wait for the missing non-media packet"
    assert sim.nacks == [] and sim.plis == []
    assert sim.stats["packetsLost"] == 1 and sim.stats["framesDropped"] == 0


@pytest.mark.parametrize("codec, seed", [(VP8, 1), (VP8, 2), (VP8, 3), (H264, 1), (H264, 2)])
def test_random_loss_reordering_and_duplicates_keep_the_decode_chain_intact(request, codec, seed):
    """Whatever the network does, every released frame is a keyframe or follows a released frame, in
    order, byte for byte; nothing stalls: the last keyframe leaves the moment it is complete."""
    import random

    rng = random.Random(seed)
    encoded = request.getfixturevalue("vp8" if codec == VP8 else "h264")
    source = encoded * (100 // len(encoded)) + encoded[:1]  # ends with a keyframe
    stream = [Encoded(e.payloads, (TS_BASE + 3000 * i) & 0xFFFFFFFF, e.keyframe) for i, e in enumerate(source)]
    frames = packetize(stream, codec, first_seq=rng.randrange(65536))
    events = []
    for i, packets in enumerate(frames):
        t = i * FRAME_MS
        for p in packets:
            if i < len(frames) - 1 and rng.random() < 0.04:  # lost; maybe retransmitted, maybe too late
                if rng.random() < 0.7:
                    events.append((t + rng.uniform(20, 250), p))
                continue
            events.append((t + (rng.uniform(1, 15) if rng.random() < 0.05 else 0.0), p))
            if rng.random() < 0.03:
                events.append((t + rng.uniform(0, 60), p))
    events.sort(key=lambda e: e[0])
    sim = Sim(codec, rtt_ms=40.0)
    for t, p in events:
        sim.add(p, at=t)
    sim.until(events[-1][0] + 2000.0)

    released = sim.released(stream)
    assert released == sorted(set(released)), "decode order, no repeats"
    for prev, cur in zip([None] + released, released):
        assert stream[cur].keyframe or prev == cur - 1, f"frame {cur} released without its reference {cur - 1}"
    for _, f in sim.frames:
        i = released[[g for _, g in sim.frames].index(f)]
        depayload = vp8_depayload if codec == VP8 else h264_depayload
        assert f.data == b"".join(depayload(x) for x in stream[i].payloads)
    last = len(stream) - 1
    complete_at = max(min(t for t, q in events if q is p) for p in frames[last])
    assert released[-1] == last and sim.frames[-1][0] == pytest.approx(complete_at), "no stall at the end"
    s = sim.stats
    assert s["bufferedPackets"] == 0 and s["missingPackets"] == 0
    assert s["framesAssembled"] + s["framesDropped"] >= len(stream) - s["packetsLost"]
    assert len(released) >= 10  # no PLI feedback here: keyframes come every 6-14 frames, some lost too
    assert s["packetsRecovered"] > 0 and s["packetsLate"] > 0 and s["framesGivenUp"] > 0


# ---------------------------------------------------------------------------------------------- H.264


def test_h264_frames_by_marker_and_timestamp_loss_skips_until_idr(h264):
    frames = packetize(h264, codec=H264)
    clean = Sim(H264)
    for i, packets in enumerate(frames):
        for j, p in enumerate(packets):
            out = clean.add(p, at=i * FRAME_MS)
            assert (out != []) == (j == len(packets) - 1), "released exactly at the marker"
    assert clean.released(h264) == list(range(len(h264)))
    assert [f.keyframe for _, f in clean.frames] == [e.keyframe for e in h264]
    assert len(decode_all([f for _, f in clean.frames], H264)) == len(h264)

    m = first_multi_packet_inter(frames, h264, minimum=3)
    assert m < H264_KEYFRAMES[1] - 1
    lost = frames[m][1]
    sim = Sim(H264)
    for i, packets in enumerate(frames):  # 100 ms apart: the deadline passes before the next IDR
        for p in packets:
            if p is not lost:
                sim.add(p, at=i * 100.0)
    sim.until(2000.0)
    assert sim.released(h264) == list(range(m)) + list(range(H264_KEYFRAMES[1], len(h264)))
    assert len(sim.plis) >= 1 and sim.stats["framesGivenUp"] >= 1
    assert sim.stats["keyframesReceived"] == 2
    assert len(decode_all([f for _, f in sim.frames], H264)) == len(sim.frames)


# ---------------------------------------------------------------------------------------------- real aiortc


class PannedPhoto(VideoStreamTrack):
    """A real photograph panned across 640x360, paced by aiortc at 30 fps."""

    def __init__(self) -> None:
        super().__init__()
        rgb = load_photo_rgb(720, 400, index=2)
        self.frames = []
        for i in range(30):
            y, x = (3 * i) % 40, (7 * i) % 80
            crop = np.ascontiguousarray(rgb[y : y + 360, x : x + 640])
            self.frames.append(av.VideoFrame.from_ndarray(crop, format="rgb24").reformat(format="yuv420p"))
        self.n = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = self.frames[self.n % len(self.frames)].reformat()
        frame.pts, frame.time_base = pts, time_base
        self.n += 1
        return frame


def _lossy(receiver, drop_every: int, black_hole_at: int):
    """A receiver-side packet dropper: every ``drop_every``-th media packet is lost once (its RTX
    retransmission passes); the ``black_hole_at``-th is lost with all its retransmissions."""
    original = receiver._handle_rtp_packet
    codecs = receiver._RTCRtpReceiver__codecs
    state = {"n": 0, "black_hole": set()}

    async def handle(packet, arrival_time_ms):
        codec = codecs.get(packet.payload_type)
        if codec is not None and codec.name == "VP8":
            state["n"] += 1
            if state["n"] == black_hole_at:
                state["black_hole"].add(packet.sequence_number)
                return
            if state["n"] % drop_every == drop_every // 2:
                return
        elif codec is not None and codec.name == "rtx" and len(packet.payload) >= 2:
            if int.from_bytes(packet.payload[:2], "big") in state["black_hole"]:
                return
        await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle
    return state


async def test_real_peer_connections_recover_losses_with_nack_and_pli():
    from srtc.server.receiver import attach, sender_rtt_ms

    config = RTCConfiguration(iceServers=[])
    sender, receiver_pc = RTCPeerConnection(config), RTCPeerConnection(config)
    decoded: list[av.VideoFrame] = []
    readers = []

    @receiver_pc.on("track")
    def on_track(track):
        async def read():
            try:
                while True:
                    decoded.append(await track.recv())
            except Exception:
                pass

        readers.append(asyncio.ensure_future(read()))

    try:
        sender.addTransceiver(PannedPhoto(), direction="sendonly")
        await sender.setLocalDescription(await sender.createOffer())
        await receiver_pc.setRemoteDescription(sender.localDescription)
        transceiver = receiver_pc.getTransceivers()[0]
        resilient = attach(transceiver.receiver, rtt_ms=sender_rtt_ms(receiver_pc))
        state = _lossy(transceiver.receiver, drop_every=15, black_hole_at=45)
        await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
        await sender.setRemoteDescription(receiver_pc.localDescription)

        for _ in range(100):  # until the black-holed packet has been given up and a keyframe is back
            await asyncio.sleep(0.1)
            s = resilient.stats()
            if s["keyframesReceived"] >= 2 and s["framesAssembled"] >= 45:
                break
        s = resilient.stats()
        assert s["codec"] == "VP8"
        # no RTCP RTT here (no sender on this side): the retransmissions' own delay on loopback stands in
        assert s["retransmitDelayMs"] is not None and s["rttMs"] == s["retransmitDelayMs"] < 50.0, s
        assert state["black_hole"], "the stream never reached the black-holed packet"
        assert s["nackCount"] >= 1 and s["packetsRecovered"] >= 1, s
        assert s["framesGivenUp"] >= 1 and s["pliCount"] >= 1, s
        assert s["keyframesReceived"] >= 2, "the PLI brought a keyframe and decoding resumed"
        assert s["framesAssembled"] >= 45 and s["decodeErrors"] == 0, s
        assert len(decoded) >= 40 and {(f.width, f.height) for f in decoded} == {(640, 360)}
        resilient.stop()
        assert not resilient.stats()["attached"]
    finally:
        await sender.close()
        await receiver_pc.close()
        for task in readers:
            task.cancel()


async def test_attach_refuses_audio_a_second_attach_and_other_aiortc_versions(monkeypatch):
    import aiortc

    from srtc.server.receiver import attach, sender_rtt_ms

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        audio = pc.addTransceiver("audio").receiver
        video = pc.addTransceiver("video").receiver
        with pytest.raises(ValueError, match="video"):
            attach(audio)
        resilient = attach(video)
        fresh = resilient.stats()  # same keys before the first packet, for /stats
        assert fresh["packetsReceived"] == 0 and fresh["giveUpMs"] is None and fresh["ssrc"] is None
        with pytest.raises(RuntimeError, match="already attached"):
            attach(video)
        resilient.stop()
        assert isinstance(video._RTCRtpReceiver__jitter_buffer, JitterBuffer), "stop() gives aiortc's buffer back"
        sender = pc.getTransceivers()[1].sender
        assert hasattr(sender, "_RTCRtpSender__rtt"), "sender_rtt_ms reads this aiortc private"
        assert sender_rtt_ms(pc)() is None  # nothing measured yet
        sender._RTCRtpSender__rtt = 0.042
        assert sender_rtt_ms(pc)() == pytest.approx(42.0)
        monkeypatch.setattr(aiortc, "__version__", "1.17.0")
        with pytest.raises(RuntimeError, match="1.16.0"):
            attach(video)
        monkeypatch.setattr(aiortc, "__version__", "1.16.0")
        again = attach(video)
    finally:
        await pc.close()
    await asyncio.sleep(0.05)
    assert again._task.done() and not again.stats()["attached"], "the timer ends with a closed connection"
