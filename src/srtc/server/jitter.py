"""Loss-resilient frame assembly for one incoming video RTP stream: NACK, give up, PLI, skip, resume.

Stock aiortc freezes after a packet that never arrives: its jitter buffer waits until it overflows,
NACKs a gap once, and releases a frame only when the next frame starts. :class:`FrameAssembler` does
what libwebrtc's receive pipeline does instead, as pure logic (no sockets, no asyncio, an injected
clock in milliseconds) so every policy below can be unit-tested with packet sequences:

* **Release at completion.** A frame goes out the moment its packets, from the frame's first packet
  through the marker-bit packet, are all present, in decode (sequence) order. No extra frame of delay.
* **NACK, and NACK again.** A missing sequence number is NACKed as soon as a later packet reveals the
  gap, then again every ``max(RTT, 20 ms)`` (libwebrtc resends at one RTT: an earlier resend cannot
  have been answered yet), at most 10 times (libwebrtc's ``kMaxNackRetries``).
* **Spend only what the link can carry.** Retransmission requests draw on a budget: every packet that
  arrives earns ``retransmit_share`` of a request (0.2: retransmissions stay within a quarter of the
  media, the room the server's REMB leaves on a capped link), saved up to ``retransmit_burst``
  requests. The oldest gaps are asked for first. A request is sent only while its answer can still
  arrive before the packet is given up (now + RTT <= detection + give-up time). Unbudgeted
  retransmissions are what turns a lossy, capped uplink into a collapse: each lost retransmission is
  asked for again, the requests fill the bottleneck queue, the queue drops more, and the link stays
  full of repairs long after the loss has stopped. Past the budget, a keyframe is cheaper: a gap
  that could not be asked for in time is given up at once, and the PLI follows.
* **RTT as retransmissions see it.** The RTT is the larger of the RTCP estimate and the median time,
  over the last 2 s, from a packet's first NACK to its arrival (late arrivals included). RTCP reports
  cross the same queue late or not at all when the uplink is full; the retransmissions' own delay is
  the figure every deadline below needs. A sample is too long when the first retransmission was lost
  and a re-NACK's answer arrived; the median is right while fewer than half of them are.
* **Give up on time.** The frame at the decode head is abandoned when its oldest missing packet has
  been missing for ``clamp(2.5 * RTT + frame interval, 100 ms, 1000 ms)``. Why 2.5 RTT: the first
  NACK leaves when the gap is seen and its retransmission lands ~1 RTT later; if that one is lost as
  well, the re-NACK sent at 1 RTT is answered by ~2 RTT; the last 0.5 RTT plus one frame interval
  absorb RTT jitter and the sender's pacing. Waiting longer is rarely worth it: by then a keyframe
  request (1 RTT plus one large frame) recovers at least as fast. The 100 ms floor keeps a LAN/loopback
  RTT of ~1 ms from turning every reordering into a keyframe; the 1 s ceiling bounds the freeze
  whatever the RTT estimate says.
* **Skip what cannot be decoded, ask for a keyframe.** After a frame is abandoned (or the decoder
  reports an error), inter frames are dropped until a keyframe: a frame is decodable when it is
  complete and either is a keyframe or the previous frame in decode order was delivered. A PLI is
  requested at once, repeated every ``max(300 ms, 2 * RTT)`` until a keyframe is delivered, and held
  back while a keyframe is already arriving (its first packet is buffered), so one loss does not
  trigger a train of keyframes. A lost keyframe is abandoned like any frame and the PLI repeats.
* **Resume at once.** A complete keyframe anywhere ahead of a blocked head is delivered immediately:
  the older, still incomplete frames could only be shown after it anyway.
* **Start-up.** The stream's first packets may come reordered (the head moves back up to 64 packets
  until something is consumed), and no PLI goes out before the first frame was consumed: the
  sender's first keyframe is usually already on its way.
* **Wire details.** uint16 sequence wrap-around, reordering, duplicates, late retransmissions of
  packets already given up (ignored), padding-only packets (consumed silently), and for VP8 with a
  PictureID a gap between two frames whose PictureIDs are consecutive is known to be non-media (lost
  padding, an unknown payload type) and does not stall or trigger a keyframe.

Codec rules. VP8 (RFC 7741): a frame starts at the packet whose payload descriptor has S=1 and PID=0;
it is a keyframe when bit 0 of the first VP8 payload byte of that packet is 0. H.264 (RFC 6184):
frames are delimited by timestamp and marker bit (a packet starts a frame when the previous sequence
number carried the marker or another timestamp, or, with the previous packet unknown, when its first
NAL unit is one that begins an access unit: SEI, SPS, PPS or AUD); a frame is a keyframe when it holds
an IDR slice (NAL type 5).

Counters use WebRTC's vocabulary (see :meth:`FrameAssembler.stats`). Freezes are measured elsewhere,
on decoded frames.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiortc.codecs.h264 import h264_depayload
from aiortc.codecs.vpx import VpxPayloadDescriptor

log = logging.getLogger(__name__)

VP8 = "VP8"
H264 = "H264"
SUPPORTED_CODECS = (VP8, H264)

_STARTUP_REORDER = 64  # how far before the first packet seen a reordered packet may still start the stream
_H264_STAP_A = 24
_H264_FU_A = 28
_H264_IDR = 5
_H264_SPS = 7
_H264_AU_STARTERS = frozenset({6, 7, 8, 9})  # SEI, SPS, PPS, AUD: only ever at the front of an access unit


@dataclass(frozen=True)
class Policy:
    """Timing and size knobs (milliseconds and packets). Defaults follow libwebrtc where it has one."""

    default_rtt_ms: float = 100.0  # libwebrtc's kDefaultRtt, used until an RTT is known
    give_up_rtt_factor: float = 2.5
    min_give_up_ms: float = 100.0
    max_give_up_ms: float = 1000.0
    min_renack_ms: float = 20.0
    max_nacks_per_packet: int = 10  # libwebrtc's kMaxNackRetries
    retransmit_share: float = 0.2  # requests earned per packet received: at most share / (1 - share) of the media
    retransmit_burst: float = 20.0  # requests that can be saved up, for a burst of loss
    response_window_ms: float = 2000.0  # how long a measured NACK-to-retransmission delay counts
    pli_rtt_factor: float = 2.0
    min_pli_interval_ms: float = 300.0
    default_frame_interval_ms: float = 1000.0 / 30
    capacity: int = 1024  # most sequence numbers spanned from the decode head to the newest packet
    late_memory: int = 2048  # how many given-up sequence numbers are remembered to tell late from duplicate


@dataclass(frozen=True)
class AssembledFrame:
    """A complete, decodable encoded frame, in decode order. ``timestamp`` is the RTP timestamp as sent."""

    data: bytes
    timestamp: int
    keyframe: bool
    first_seq: int  # uint16, as on the wire
    last_seq: int
    packets: int


@dataclass
class Actions:
    """What the caller must do now: hand ``frames`` to the decoder, send one NACK with ``nack``
    (ascending uint16 sequence numbers, the order aiortc's NACK packer needs) if not empty, and a PLI
    if ``pli``. The counters assume the caller does all three."""

    frames: list[AssembledFrame] = field(default_factory=list)
    nack: list[int] = field(default_factory=list)
    pli: bool = False


@dataclass
class _Packet:
    seq: int  # unwrapped (extended) sequence number
    timestamp: int
    marker: bool
    data: bytes
    padding: bool
    start_hint: (
        bool  # VP8: S=1 and PID=0. H.264: first NAL begins an access unit (used only without a known predecessor)
    )
    key_start: bool  # VP8: start of a keyframe. H.264: carries SPS or the start of an IDR slice
    idr: bool  # H.264: carries an IDR slice
    picture_id: int | None  # VP8 PictureID when the descriptor has one


@dataclass
class _Missing:
    detected_ms: float
    first_nack_ms: float = 0.0
    last_nack_ms: float = 0.0
    nacks: int = 0
    withheld: bool = False  # was due a NACK when the budget had none left


COUNTERS = (
    "packetsReceived",  # unique packets accepted in time (media and padding)
    "packetsLost",  # never arrived; given up (or known to be unneeded) before they could be used
    "packetsRecovered",  # arrived after they had been NACKed, in time to be used
    "packetsDuplicated",  # arrived a second time
    "packetsLate",  # arrived after they had been given up; ignored
    "packetsDiscarded",  # arrived but thrown away: parts of frames that were abandoned or dropped
    "nackCount",  # NACK packets requested (one per Actions with a non-empty nack list)
    "retransmissionsRequested",  # sequence numbers in those NACKs, repeats included
    "retransmissionsWithheld",  # missing packets that were due a NACK when the retransmission budget was spent
    "pliCount",
    "framesAssembled",  # complete, decodable frames handed to the decoder
    "keyframesReceived",  # of which keyframes
    "framesDropped",  # frames not handed to the decoder: abandoned incomplete, or complete but undecodable
    "framesGivenUp",  # of which abandoned at the deadline (approximate when whole frames vanished)
    "decodeErrors",  # reported by the caller through on_decode_error
    "resets",  # jumps too large to bridge (sender restart): everything buffered was dropped
)


class FrameAssembler:
    """Reassembles one SSRC's video frames; see the module docstring for the policy.

    Feed every RTP packet (an aiortc ``RtpPacket``; ``_data`` is used when aiortc already depayloaded
    it) to :meth:`add`, call :meth:`poll` every 10-20 ms even when nothing arrives, and carry out the
    :class:`Actions` both return.
    """

    def __init__(self, codec: str = VP8, clock_rate: int = 90000, policy: Policy | None = None) -> None:
        codec = codec.upper()
        if codec not in SUPPORTED_CODECS:
            raise ValueError(f"FrameAssembler supports {SUPPORTED_CODECS}, not {codec!r}")
        self.codec = codec
        self.clock_rate = clock_rate
        self.policy = policy or Policy()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._rtt_ms: float | None = None
        self._responses: deque[tuple[float, float]] = deque()  # (arrival, ms since its first NACK)
        self._response_median: float | None = None  # of ``_responses``, updated when they change
        self._tokens = self.policy.retransmit_burst
        self._frame_interval_ms = self.policy.default_frame_interval_ms
        # sequence numbers: the decode head is the lowest not yet consumed; highest is the newest seen
        self._last_seq16: int | None = None
        self._last_ext = 0
        self._next: int | None = None
        self._first_ms = 0.0  # arrival of the first packet
        self._consumed_any = False  # has the head ever moved (a frame released, dropped or abandoned)?
        self._highest = 0
        self._buf: dict[int, _Packet] = {}
        self._missing: dict[int, _Missing] = {}  # insertion order is ascending sequence order
        self._key_starts: set[int] = set()
        self._last_consumed: tuple[int, int, bool] | None = None  # (seq, timestamp, marker), for H.264 starts
        self._lost_recent: dict[int, float | None] = {}  # given up: seq -> its first NACK's time (None: none)
        # decode state
        self._need_keyframe = True  # nothing decodes before the first keyframe
        self._last_pli_ms: float | None = None
        self._last_picture_id: int | None = None  # of the last frame delivered
        self._last_start_pid: int | None = None  # of the last frame start consumed, delivered or not
        self._last_delivered_ts: int | None = None

    # ------------------------------------------------------------------ timing, derived from RTT

    @property
    def rtt_ms(self) -> float:
        """The larger of the RTCP estimate and the measured retransmission delay (the default if neither)."""
        measured = self.retransmit_delay_ms
        if self._rtt_ms is None:
            return self.policy.default_rtt_ms if measured is None else measured
        return self._rtt_ms if measured is None else max(self._rtt_ms, measured)

    @property
    def retransmit_delay_ms(self) -> float | None:
        """Median time from a packet's first NACK to its arrival, over the last ``response_window_ms``."""
        return self._response_median

    def _responses_changed(self) -> None:
        """Every deadline reads the median, up to once per missing packet per packet: compute it here, once."""
        delays = sorted(d for _, d in self._responses)
        self._response_median = delays[len(delays) // 2] if delays else None

    def set_rtt(self, rtt_ms: float | None) -> None:
        """Latest RTCP round-trip time estimate; ``None`` (unknown) means the 100 ms default."""
        self._rtt_ms = None if rtt_ms is None or rtt_ms <= 0 else float(rtt_ms)

    @property
    def frame_interval_ms(self) -> float:
        return self._frame_interval_ms

    @property
    def give_up_ms(self) -> float:
        p = self.policy
        wait = p.give_up_rtt_factor * self.rtt_ms + self._frame_interval_ms
        return min(max(wait, p.min_give_up_ms), p.max_give_up_ms)

    @property
    def renack_ms(self) -> float:
        return max(self.rtt_ms, self.policy.min_renack_ms)

    @property
    def pli_interval_ms(self) -> float:
        return max(self.policy.min_pli_interval_ms, self.policy.pli_rtt_factor * self.rtt_ms)

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._need_keyframe

    # ------------------------------------------------------------------ public API

    def add(self, packet: Any, now_ms: float) -> Actions:
        """Take one RTP packet (after RTX unwrapping) and say what is now due."""
        ext = self._unwrap(packet.sequence_number)
        if self._next is None:
            self._next, self._highest, self._first_ms = ext, ext - 1, now_ms
        if ext < self._next and not self._consumed_any and self._next - ext <= _STARTUP_REORDER:
            self._extend_back(ext, now_ms)  # the stream's first packets came reordered: keep them
        if ext < self._next:
            self._count_stale(ext, now_ms)
        elif ext in self._buf:
            self.counters["packetsDuplicated"] += 1
        else:
            self._insert(self._parse(packet, ext), now_ms)
        return self._actions(now_ms)

    def poll(self, now_ms: float) -> Actions:
        """Check deadlines: give up what cannot complete, re-NACK, repeat a PLI. Call it every 10-20 ms."""
        return self._actions(now_ms)

    def on_decode_error(self, now_ms: float) -> Actions:
        """The decoder failed on a frame: its references are broken, so wait for a keyframe (as libwebrtc)."""
        self.counters["decodeErrors"] += 1
        if not self._need_keyframe:
            log.info("decode error: dropping inter frames until a keyframe")
        self._need_keyframe = True
        return self._actions(now_ms)

    def stats(self) -> dict[str, Any]:
        """Counters plus the current timing and buffer state, for ``/stats``."""
        return {
            **self.counters,
            "codec": self.codec,
            "rttMs": round(self.rtt_ms, 1),
            "retransmitDelayMs": _round(self.retransmit_delay_ms),
            "retransmitBudget": round(self._tokens, 1),
            "giveUpMs": round(self.give_up_ms, 1),
            "frameIntervalMs": round(self._frame_interval_ms, 1),
            "bufferedPackets": len(self._buf),
            "missingPackets": len(self._missing),
            "waitingForKeyframe": self._need_keyframe,
        }

    # ------------------------------------------------------------------ packets in

    def _unwrap(self, seq: int) -> int:
        """uint16 -> monotonic int, relative to the newest sequence number seen (half-range rule)."""
        if self._last_seq16 is None:
            self._last_seq16, self._last_ext = seq, seq
            return seq
        delta = (seq - self._last_seq16) & 0xFFFF
        if delta >= 0x8000:
            delta -= 0x10000
        ext = self._last_ext + delta
        if delta > 0:
            self._last_seq16, self._last_ext = seq, ext
        return ext

    def _parse(self, packet: Any, ext: int) -> _Packet:
        payload: bytes = packet.payload
        data = getattr(packet, "_data", None)
        padding = not payload
        start_hint = key_start = idr = False
        picture_id = None
        try:
            if not padding and self.codec == VP8:
                descriptor, rest = VpxPayloadDescriptor.parse(payload)
                start_hint = descriptor.partition_start == 1 and descriptor.partition_id == 0
                key_start = start_hint and bool(rest) and rest[0] & 1 == 0
                picture_id = descriptor.picture_id
                data = rest if data is None else data
            elif not padding:
                types, starts_au = _h264_nal_info(payload)
                start_hint = bool(starts_au)
                idr = _H264_IDR in types
                key_start = _H264_SPS in types or (idr and starts_au is not None)
                data = h264_depayload(payload) if data is None else data
        except (ValueError, IndexError) as exc:  # aiortc drops such packets before us; be safe in tests
            log.debug("unparsable payload (seq %d): %s", packet.sequence_number, exc)
            start_hint = key_start = idr = False
        return _Packet(
            seq=ext,
            timestamp=packet.timestamp,
            marker=bool(packet.marker),
            data=data or b"",
            padding=padding,
            start_hint=bool(start_hint),
            key_start=bool(key_start),
            idr=idr,
            picture_id=picture_id,
        )

    def _insert(self, p: _Packet, now_ms: float) -> None:
        assert self._next is not None
        if p.seq - self._next >= self.policy.capacity:
            self._make_room(p.seq)
        if p.seq > self._highest:
            for seq in range(self._highest + 1, p.seq):
                self._missing[seq] = _Missing(detected_ms=now_ms)
            self._highest = p.seq
        else:
            missing = self._missing.pop(p.seq, None)
            if missing is not None and missing.nacks:
                self.counters["packetsRecovered"] += 1
                self._responded(now_ms, now_ms - missing.first_nack_ms)
        self._buf[p.seq] = p
        if p.key_start:
            self._key_starts.add(p.seq)
        self.counters["packetsReceived"] += 1
        self._tokens = min(self.policy.retransmit_burst, self._tokens + self.policy.retransmit_share)

    def _responded(self, now_ms: float, delay_ms: float) -> None:
        """A retransmission arrived ``delay_ms`` after the first NACK that asked for it."""
        self._responses.append((now_ms, delay_ms))
        self._responses_changed()

    def _extend_back(self, ext: int, now_ms: float) -> None:
        """Before anything was consumed, move the head back to a packet older than the first one seen."""
        assert self._next is not None
        for seq in range(ext, self._next):
            self._missing[seq] = _Missing(detected_ms=now_ms)
        self._missing = dict(sorted(self._missing.items()))
        self._next = ext

    def _make_room(self, seq: int) -> None:
        """The new packet is beyond the buffer's reach: drop the oldest data, or everything on a huge jump."""
        assert self._next is not None
        capacity = self.policy.capacity
        if seq - self._highest > capacity:
            log.warning("sequence jump of %d packets: dropping the buffer, waiting for a keyframe", seq - self._highest)
            self.counters["resets"] += 1
            self._abandon_until(self._highest + 1, reason="reset")
            self._missing.clear()
            self._next, self._highest = seq, seq - 1
            self._need_keyframe = True
            return
        log.info("buffer full (%d packets): abandoning the oldest frames", capacity)
        self._abandon_until(seq - capacity + 1, reason="overflow")

    def _count_stale(self, ext: int, now_ms: float) -> None:
        if ext in self._lost_recent:
            self.counters["packetsLate"] += 1
            nacked_ms = self._lost_recent.pop(ext)
            if nacked_ms is not None:  # how long the answer really took: the next deadlines need it
                self._responded(now_ms, now_ms - nacked_ms)
            log.debug("late packet %d (already given up): ignored", ext & 0xFFFF)
        else:
            self.counters["packetsDuplicated"] += 1

    # ------------------------------------------------------------------ frames out

    def _actions(self, now_ms: float) -> Actions:
        expired = False
        while self._responses and now_ms - self._responses[0][0] > self.policy.response_window_ms:
            self._responses.popleft()
            expired = True
        if expired:
            self._responses_changed()
        frames = self._advance(now_ms)
        return Actions(frames=frames, nack=self._due_nacks(now_ms), pli=self._due_pli(now_ms))

    def _advance(self, now_ms: float) -> list[AssembledFrame]:
        """Move the decode head forward as far as possible; return the frames released on the way."""
        out: list[AssembledFrame] = []
        while self._next is not None and self._next <= self._highest:
            head = self._buf.get(self._next)
            if head is None:
                if self._skip_nonmedia_gap() or self._jump_to_keyframe(out):
                    continue
                if self._head_expired(now_ms):
                    self._give_up(now_ms)
                    continue
                break
            if head.padding:
                self._consume(head)
                continue
            if not self._is_start(head):
                # a fragment whose frame start was given up (or that we joined in the middle of)
                if not self._consumed_any and now_ms - self._first_ms < self.give_up_ms:
                    break  # at start-up the frame's first packet may still arrive, reordered
                self._need_keyframe = True
                self._consume(head)
                self.counters["packetsDiscarded"] += 1
                continue
            end, complete = self._frame_end(head)
            if complete:
                self._release(head, end, out)
                continue
            if self._drop_known_inter_frame(head) or self._jump_to_keyframe(out):
                continue
            if self._head_expired(now_ms):
                self._give_up(now_ms)
                continue
            break
        return out

    def _is_start(self, p: _Packet) -> bool:
        if self.codec == VP8:
            return p.start_hint
        prev = self._buf.get(p.seq - 1)
        if prev is not None:
            return prev.marker or prev.timestamp != p.timestamp
        if self._last_consumed is not None and self._last_consumed[0] == p.seq - 1:
            return self._last_consumed[2] or self._last_consumed[1] != p.timestamp
        return p.start_hint

    def _frame_end(self, start: _Packet) -> tuple[int, bool]:
        """(last sequence number, complete) of the frame starting at ``start``; incomplete on a gap or in progress."""
        seq = start.seq
        while True:
            p = self._buf.get(seq)
            if p is None:
                return seq, False
            if seq != start.seq and (p.padding or p.timestamp != start.timestamp or self._is_start(p)):
                return seq - 1, True  # the next frame began although no marker was seen: this one ended
            if p.marker:
                return seq, True
            seq += 1

    def _is_keyframe(self, start: _Packet, end: int) -> bool:
        if self.codec == VP8:
            return start.key_start
        return any(self._buf[s].idr for s in range(start.seq, end + 1))

    def _release(self, start: _Packet, end: int, out: list[AssembledFrame]) -> None:
        keyframe = self._is_keyframe(start, end)
        packets = [self._buf[s] for s in range(start.seq, end + 1)]
        decodable = keyframe or not self._need_keyframe
        for p in packets:
            self._consume(p)
        if not decodable:
            self.counters["framesDropped"] += 1
            self.counters["packetsDiscarded"] += len(packets)
            log.debug("dropped undecodable inter frame ts=%d (waiting for a keyframe)", start.timestamp)
            return
        if not self._need_keyframe and self._last_delivered_ts is not None:
            self._learn_frame_interval(start.timestamp)
        if keyframe:
            if self._need_keyframe:
                log.info("keyframe ts=%d: decoding resumes", start.timestamp)
            self._need_keyframe = False
            self.counters["keyframesReceived"] += 1
        self._last_delivered_ts = start.timestamp
        self._last_picture_id = start.picture_id
        self.counters["framesAssembled"] += 1
        out.append(
            AssembledFrame(
                data=b"".join(p.data for p in packets),
                timestamp=start.timestamp,
                keyframe=keyframe,
                first_seq=start.seq & 0xFFFF,
                last_seq=end & 0xFFFF,
                packets=len(packets),
            )
        )

    def _learn_frame_interval(self, timestamp: int) -> None:
        assert self._last_delivered_ts is not None
        delta_ms = ((timestamp - self._last_delivered_ts) & 0xFFFFFFFF) * 1000.0 / self.clock_rate
        if 0 < delta_ms <= 200:
            self._frame_interval_ms += 0.1 * (delta_ms - self._frame_interval_ms)

    def _consume(self, p: _Packet) -> None:
        """Remove the head packet from the buffer and move the head past it."""
        del self._buf[p.seq]
        self._key_starts.discard(p.seq)
        self._last_consumed = (p.seq, p.timestamp, p.marker)
        self._consumed_any = True
        if p.start_hint and p.picture_id is not None:
            self._last_start_pid = p.picture_id
        self._next = p.seq + 1

    # ------------------------------------------------------------------ when the head is blocked

    def _head_expired(self, now_ms: float) -> bool:
        """The oldest missing packet (the one blocking the head) cannot arrive in time any more."""
        if not self._missing:
            return False
        return self._expired(self._missing[next(iter(self._missing))], now_ms, self.give_up_ms)

    def _expired(self, m: _Missing, now_ms: float, give_up_ms: float) -> bool:
        """Waited its give-up time, or never asked for and too late to ask now (the budget ran out)."""
        if now_ms - m.detected_ms >= give_up_ms:
            return True
        return m.nacks == 0 and not self._nack_in_time(m, now_ms, give_up_ms)

    def _nack_in_time(self, m: _Missing, now_ms: float, give_up_ms: float) -> bool:
        """A NACK sent now would be answered before the packet is given up."""
        return now_ms + self.rtt_ms <= m.detected_ms + give_up_ms

    def _give_up(self, now_ms: float) -> None:
        """Abandon the head frame: skip to the next frame start, stopping short of gaps still in time."""
        assert self._next is not None
        give_up_ms = self.give_up_ms
        seq = self._next + 1
        while seq <= self._highest:
            p = self._buf.get(seq)
            if p is not None and not p.padding and self._is_start(p):
                break
            missing = self._missing.get(seq)
            if missing is not None and not self._expired(missing, now_ms, give_up_ms):
                break
            seq += 1
        log.info(
            "gave up seq %d..%d after %.0f ms (rtt %.0f ms): waiting for a keyframe",
            self._next & 0xFFFF,
            (seq - 1) & 0xFFFF,
            give_up_ms,
            self.rtt_ms,
        )
        self._abandon_until(seq, reason="deadline")

    def _jump_to_keyframe(self, out: list[AssembledFrame]) -> bool:
        """A complete keyframe ahead of a blocked head is shown now; what is before it is dropped."""
        for seq in sorted(self._key_starts):
            start = self._buf[seq]
            if seq <= self._next or not self._is_start(start):  # type: ignore[operator]
                continue
            end, complete = self._frame_end(start)
            if complete and self._is_keyframe(start, end):
                log.info("complete keyframe ahead at seq %d: skipping the blocked frames before it", seq & 0xFFFF)
                self._abandon_until(seq, reason="keyframe")
                self._release(start, end, out)
                return True
        return False

    def _skip_nonmedia_gap(self) -> bool:
        """VP8: a gap between a delivered frame and the start of the next PictureID holds no media."""
        if self.codec != VP8 or self._need_keyframe or self._last_picture_id is None:
            return False
        assert self._next is not None
        seq = self._next
        while seq <= self._highest and seq not in self._buf:
            seq += 1
        p = self._buf.get(seq)
        if p is None or not p.start_hint or p.picture_id is None:
            return False
        if not _picture_id_follows(self._last_picture_id, p.picture_id):
            return False
        log.debug("gap %d..%d between consecutive pictures: not media", self._next & 0xFFFF, (seq - 1) & 0xFFFF)
        self._abandon_until(seq, reason="non-media")
        return True

    def _drop_known_inter_frame(self, start: _Packet) -> bool:
        """Waiting for a keyframe, an incomplete inter frame whose end is known is dropped now, not NACKed on."""
        if not self._need_keyframe or start.key_start:
            return False
        seq = start.seq + 1
        while seq <= self._highest:
            p = self._buf.get(seq)
            if p is not None:
                if p.timestamp != start.timestamp or p.padding:
                    return False  # the end lies in a gap shared with the next frame: let the deadline decide
                if p.key_start or p.idr:
                    return False  # H.264: an IDR slice after a leading SEI/SPS-less packet; keep it
                if p.marker:
                    self._abandon_until(seq + 1, reason="undecodable")
                    return True
            seq += 1
        return False

    def _abandon_until(self, stop: int, reason: str) -> None:
        """Consume everything before ``stop``: missing packets are lost, present ones discarded."""
        assert self._next is not None
        pid_before = self._last_start_pid
        timestamps: set[int] = set()
        lost = discarded = 0
        for seq in range(self._next, stop):
            p = self._buf.get(seq)
            if p is not None:
                if not p.padding:
                    timestamps.add(p.timestamp)
                    discarded += 1
                self._consume(p)
            elif (missing := self._missing.pop(seq, None)) is not None:
                lost += 1
                self._remember_lost(seq, missing.first_nack_ms if missing.nacks else None)
        self._next = max(self._next, stop)
        self.counters["packetsLost"] += lost
        self.counters["packetsDiscarded"] += discarded
        if reason == "non-media":
            return
        frames = max(len(timestamps), self._pictures_between(pid_before, stop)) or (1 if lost else 0)
        self.counters["framesDropped"] += frames
        if reason == "deadline":
            self.counters["framesGivenUp"] += frames
        if frames:
            self._need_keyframe = True

    def _pictures_between(self, pid_before: int | None, stop: int) -> int:
        """VP8: how many pictures lay in an abandoned region, from the PictureIDs around it (0: unknown)."""
        after = self._buf.get(stop)
        if pid_before is None or after is None or not after.start_hint or after.picture_id is None:
            return 0
        count = (after.picture_id - pid_before - 1) % (1 << 15)
        return count if count < 1000 else 0

    def _remember_lost(self, seq: int, nacked_ms: float | None) -> None:
        self._lost_recent[seq] = nacked_ms
        if len(self._lost_recent) > self.policy.late_memory:
            del self._lost_recent[next(iter(self._lost_recent))]

    # ------------------------------------------------------------------ feedback due

    def _due_nacks(self, now_ms: float) -> list[int]:
        """Oldest first, while the budget lasts and the answer can still arrive in time."""
        interval, limit, give_up_ms = self.renack_ms, self.policy.max_nacks_per_packet, self.give_up_ms
        due = []
        for seq, m in self._missing.items():
            if m.nacks >= limit or (m.nacks and now_ms - m.last_nack_ms < interval):
                continue
            if not self._nack_in_time(m, now_ms, give_up_ms):
                continue
            if self._tokens < 1.0:
                if not m.withheld:
                    m.withheld = True
                    self.counters["retransmissionsWithheld"] += 1
                continue
            self._tokens -= 1.0
            if not m.nacks:
                m.first_nack_ms = now_ms
            m.nacks += 1
            m.last_nack_ms = now_ms
            due.append(seq & 0xFFFF)
        if due:
            self.counters["nackCount"] += 1
            self.counters["retransmissionsRequested"] += len(due)
        return sorted(due)

    def _due_pli(self, now_ms: float) -> bool:
        if not self._need_keyframe or not self._consumed_any or self._key_starts:
            # nothing lost yet (the stream's first keyframe may be arriving), or a keyframe is arriving
            return False
        if self._last_pli_ms is not None and now_ms - self._last_pli_ms < self.pli_interval_ms:
            return False
        self._last_pli_ms = now_ms
        self.counters["pliCount"] += 1
        log.info("requesting a keyframe (PLI #%d)", self.counters["pliCount"])
        return True


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _picture_id_follows(previous: int, current: int) -> bool:
    """PictureIDs are 15-bit (or 7-bit when both fit in 7 bits and the sender uses the short form)."""
    if (current - previous) % (1 << 15) == 1:
        return True
    return previous < 128 and current < 128 and (current - previous) % 128 == 1


def _h264_nal_info(payload: bytes) -> tuple[list[int], bool | None]:
    """NAL unit types in one RTP payload, and whether its first NAL begins an access unit.

    The second value is ``None`` for an FU-A continuation fragment (it begins nothing).
    """
    kind = payload[0] & 0x1F
    if 1 <= kind <= 23:
        return [kind], kind in _H264_AU_STARTERS
    if kind == _H264_FU_A:
        if len(payload) < 2:
            raise ValueError("FU-A too short")
        inner, first = payload[1] & 0x1F, bool(payload[1] & 0x80)
        return [inner], (inner in _H264_AU_STARTERS) if first else None
    if kind == _H264_STAP_A:
        types, pos = [], 1
        while pos + 2 < len(payload):
            size = int.from_bytes(payload[pos : pos + 2], "big")
            types.append(payload[pos + 2] & 0x1F)
            pos += 2 + size
        return types, bool(types) and types[0] in _H264_AU_STARTERS
    raise ValueError(f"NAL unit type {kind} is not supported")
