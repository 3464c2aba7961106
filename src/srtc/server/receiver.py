"""Put :class:`srtc.server.jitter.FrameAssembler` behind one aiortc video ``RTCRtpReceiver``.

Use, after ``setRemoteDescription`` (from inside the event loop)::

    resilient = attach(transceiver.receiver, rtt_ms=sender_rtt_ms(pc))
    ...
    resilient.stats()   # counters for /stats
    resilient.stop()    # optional: stops the timer and restores aiortc's own buffer

How it is contained: the receiver instance keeps aiortc's ``_handle_rtp_packet`` (so the bitrate
estimator and REMB, the RTCP receiver statistics, SSRC tracking, RTX unwrapping, the ``enabled``
switch and depayloading stay aiortc's), and only two of its collaborators are swapped, on that one
instance: the NACK generator for one that never asks aiortc to NACK, and the jitter buffer for a shim
that feeds each depayloaded packet to a per-SSRC :class:`FrameAssembler`, puts the frames it releases
(possibly several per packet, e.g. when a retransmission unblocks frames queued behind it) straight
onto aiortc's decoder queue with aiortc's own timestamp mapping, and returns "no frame, no PLI" to
aiortc. NACKs and PLIs go out through the receiver's own ``_send_rtcp_nack`` / ``_send_rtcp_pli``,
immediately when a packet makes them due and from a 10 ms timer task when nothing arrives.

aiortc internals relied on (aiortc == 1.16.0, the pin in pyproject.toml; ``attach`` refuses others):

* ``RTCRtpReceiver._handle_rtp_packet`` calls, per packet and after RTX unwrapping,
  ``self.__nack_generator.add(packet) -> bool`` (and reads ``.missing`` only when it is True), then
  sets ``packet._data`` by depayloading, then ``self.__jitter_buffer.add(packet) -> (pli, frame)``,
  then checks the ``self.__decoder_error`` event (and sends a PLI if set), then queues
  ``(codec, frame)`` on ``self.__decoder_queue`` after ``self.__timestamp_mapper.map(frame.timestamp)``
  if ``self.__decoder_thread`` is running.
* The name-mangled attributes ``_RTCRtpReceiver__jitter_buffer``, ``__nack_generator``,
  ``__decoder_queue``, ``__decoder_thread``, ``__decoder_error``, ``__timestamp_mapper``,
  ``__codecs`` (payload type -> ``RTCRtpCodecParameters``), ``__kind`` and ``__started``.
* ``_send_rtcp_nack(media_ssrc, lost)`` (its packer needs ascending uint16 numbers) and
  ``_send_rtcp_pli(media_ssrc)``; both are no-ops until aiortc has set the receiver's RTCP SSRC.
* ``aiortc.jitterbuffer.JitterFrame(data, timestamp)`` is what the decoder thread decodes, with a
  decoder from ``aiortc.rtcrtpreceiver.get_decoder`` (wrapped by :mod:`srtc.server.decoder`).
* :func:`sender_rtt_ms` reads ``RTCRtpSender._RTCRtpSender__rtt`` (seconds, smoothed from the peer's
  receiver reports); aiortc's receiver measures no RTT of its own.

The decoder thread needs nothing when frames are skipped. It only ever gets complete frames whose
reference chain is intact (a keyframe, or the successor of the frame it decoded last), so libvpx /
FFmpeg keep a valid state and the first frame after a gap is a keyframe that resets it. Its error
path (an ``FFmpegError`` sets ``__decoder_error``) is taken over: the shim and the timer clear the
event before aiortc looks at it and tell the assembler, which drops inter frames until a keyframe
and sends a rate-limited PLI (aiortc would send an unthrottled PLI per packet). If the decoder thread
sets the event in the instant between our check and aiortc's, aiortc sends one extra PLI; harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiortc
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import NackGenerator

from .budget import ArrivalLog
from .decoder import guard_decoders
from .jitter import (
    COUNTERS,
    SUPPORTED_CODECS,
    Actions,
    AssembledFrame,
    FrameAssembler,
    Policy,
)

log = logging.getLogger(__name__)

AIORTC_VERSION = "1.16.0"
_P = "_RTCRtpReceiver__"
_REQUIRED = tuple(
    _P + name
    for name in (
        "jitter_buffer",
        "nack_generator",
        "decoder_queue",
        "decoder_thread",
        "decoder_error",
        "timestamp_mapper",
        "codecs",
        "kind",
        "started",
    )
) + ("_handle_rtp_packet", "_send_rtcp_nack", "_send_rtcp_pli", "_enabled")
_STATE_KEYS = (
    "codec",
    "rttMs",
    "retransmitDelayMs",
    "retransmitBudget",
    "giveUpMs",
    "frameIntervalMs",
    "bufferedPackets",
    "missingPackets",
    "waitingForKeyframe",
)
IDLE_STREAM_MS = 10_000.0  # forget an SSRC that has sent nothing for this long
FIRST_SEEN_SIZE = 256  # RTP timestamps whose first-packet time is kept (frames in flight, with margin)


def sender_rtt_ms(pc: Any) -> Callable[[], float | None]:
    """An RTT source for :func:`attach`: the smallest RTT the peer connection's senders measured, in ms.

    The server sends video back on the same transport, so its senders' RTT is the uplink's RTT too.
    ``None`` until the peer's first receiver report for one of them arrives.
    """

    def read() -> float | None:
        values = [getattr(s, "_RTCRtpSender__rtt", None) for s in pc.getSenders()]
        known = [v for v in values if v]
        return min(known) * 1000.0 if known else None

    return read


class _NackShim:
    """Stands in for aiortc's ``NackGenerator``: never reports a gap, so aiortc sends no NACK itself."""

    def __init__(self) -> None:
        self.max_seq: int | None = None
        self.missing: set[int] = set()

    def add(self, packet: Any) -> bool:
        return False

    def truncate(self) -> None:
        pass


class _JitterShim:
    """Stands in for aiortc's ``JitterBuffer``: hands each packet to the owner, returns no frame, no PLI."""

    capacity = 512

    def __init__(self, owner: ResilientReceiver) -> None:
        self._owner = owner

    def add(self, packet: Any) -> tuple[bool, None]:
        self._owner._on_packet(packet)
        return False, None


@dataclass
class _Stream:
    assembler: FrameAssembler
    codec: Any  # RTCRtpCodecParameters of the media payload type
    last_packet_ms: float
    first_seen_ms: dict[int, float] = field(default_factory=dict)  # RTP timestamp -> its first packet's arrival

    def saw(self, timestamp: int, now: float) -> None:
        if timestamp not in self.first_seen_ms:
            if len(self.first_seen_ms) >= FIRST_SEEN_SIZE:
                del self.first_seen_ms[next(iter(self.first_seen_ms))]  # oldest first (dicts keep order)
            self.first_seen_ms[timestamp] = now


class ResilientReceiver:
    """The assembler(s) attached to one receiver, the timer task, and the stats; made by :func:`attach`."""

    def __init__(
        self,
        receiver: Any,
        rtt_ms: Callable[[], float | None] | None,
        policy: Policy | None,
        tick_ms: float,
        clock_ms: Callable[[], float],
        arrivals: ArrivalLog | None = None,
    ) -> None:
        self._receiver = receiver
        self._arrivals = arrivals
        self._rtt_source = rtt_ms
        self._policy = policy or Policy()
        self._tick_s = tick_ms / 1000.0
        self._clock_ms = clock_ms
        self._streams: dict[int, _Stream] = {}
        self._last_ssrc: int | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._unsupported_logged: set[str] = set()
        self._rtt_error_logged = False
        self._stopped = False
        self._listeners: list[Callable[[str, AssembledFrame], None]] = []
        setattr(receiver, _P + "nack_generator", _NackShim())
        setattr(receiver, _P + "jitter_buffer", _JitterShim(self))
        self._task: asyncio.Task[None] = asyncio.get_running_loop().create_task(self._run())

    # ------------------------------------------------------------------ public

    def stats(self) -> dict[str, Any]:
        """Counters summed over the receiver's SSRCs, plus the newest SSRC's RTT, deadlines and buffer."""
        out: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
        for stream in self._streams.values():
            for key in COUNTERS:
                out[key] += stream.assembler.counters[key]
        current = self._streams.get(self._last_ssrc) if self._last_ssrc is not None else None
        state = current.assembler.stats() if current is not None else dict.fromkeys(_STATE_KEYS)
        out.update({k: v for k, v in state.items() if k not in out})
        out["ssrc"] = self._last_ssrc
        out["attached"] = not self._stopped
        return out

    def on_frame(self, listener: Callable[[str, AssembledFrame], None]) -> None:
        """Also hand every frame released to the decoder to ``listener(codec name, frame)``, in decode order
        (:class:`srtc.server.forward.ForwardTrack` forwards them as they came)."""
        self._listeners.append(listener)

    def request_keyframe(self) -> None:
        """Send the sender a PLI now (on its newest SSRC): a viewer of its forwarded stream needs a keyframe."""
        if self._last_ssrc is not None and not self._stopped:
            self._send(self._receiver._send_rtcp_pli(self._last_ssrc), "PLI")

    def stop(self) -> None:
        """Stop the timer and give the receiver fresh stock aiortc collaborators back. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._task is not asyncio.current_task():
            self._task.cancel()
        receiver = self._receiver
        if isinstance(getattr(receiver, _P + "jitter_buffer"), _JitterShim):
            setattr(receiver, _P + "jitter_buffer", JitterBuffer(capacity=512, is_video=True))
            setattr(receiver, _P + "nack_generator", NackGenerator())

    # ------------------------------------------------------------------ packets and timer

    def _on_packet(self, packet: Any) -> None:
        now = self._clock_ms()
        stream = self._stream_for(packet, now)
        if stream is None:
            return
        stream.last_packet_ms = now
        stream.saw(packet.timestamp, now)
        self._last_ssrc = packet.ssrc
        self._apply(packet.ssrc, stream, stream.assembler.add(packet, now))
        self._check_decoder_error(now)

    def _stream_for(self, packet: Any, now: float) -> _Stream | None:
        codec = getattr(self._receiver, _P + "codecs").get(packet.payload_type)
        if codec is None:
            return None
        if codec.name.upper() not in SUPPORTED_CODECS:
            if codec.name not in self._unsupported_logged:
                self._unsupported_logged.add(codec.name)
                log.warning("codec %s is not supported by the resilient receiver: its packets are ignored", codec.name)
            return None
        stream = self._streams.get(packet.ssrc)
        if stream is not None and stream.codec.name == codec.name:
            stream.codec = codec
            return stream
        if stream is not None:
            log.info("ssrc %d switched codec %s -> %s: new assembler", packet.ssrc, stream.codec.name, codec.name)
        assembler = FrameAssembler(codec.name, clock_rate=codec.clockRate, policy=self._policy)
        assembler.set_rtt(self._read_rtt())
        stream = self._streams[packet.ssrc] = _Stream(assembler, codec, now)
        return stream

    async def _run(self) -> None:
        try:
            while not self._stopped:
                await asyncio.sleep(self._tick_s)
                if self._receiver_finished():
                    log.debug("receiver stopped: resilient timer ends")
                    self.stop()
                    break
                if self._receiver._enabled:
                    self._tick()
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug here must not leave the receiver silently without NACK/PLI: say so
            log.exception("resilient receiver timer failed")

    def _tick(self) -> None:
        now = self._clock_ms()
        rtt = self._read_rtt()
        for ssrc, stream in list(self._streams.items()):
            if ssrc != self._last_ssrc and now - stream.last_packet_ms > IDLE_STREAM_MS:
                del self._streams[ssrc]
                continue
            stream.assembler.set_rtt(rtt)
            self._apply(ssrc, stream, stream.assembler.poll(now))
        self._check_decoder_error(now)

    def _receiver_finished(self) -> bool:
        """Stopped (decoder gone) or its transport closed, even if it never started (a session that never connected)."""
        r = self._receiver
        if getattr(r, _P + "started") and getattr(r, _P + "decoder_thread") is None:
            return True
        dtls = r.transport
        return dtls.state in ("closed", "failed") or dtls.transport.state == "closed"

    def _read_rtt(self) -> float | None:
        if self._rtt_source is None:
            return None
        try:
            return self._rtt_source()
        except Exception as exc:  # an RTT source must never break reception
            if not self._rtt_error_logged:
                self._rtt_error_logged = True
                log.warning("RTT source failed (%s): using the default", exc)
            return None

    def _check_decoder_error(self, now: float) -> None:
        event = getattr(self._receiver, _P + "decoder_error")
        if not event.is_set():
            return
        event.clear()
        stream = self._streams.get(self._last_ssrc) if self._last_ssrc is not None else None
        if stream is not None:
            self._apply(self._last_ssrc, stream, stream.assembler.on_decode_error(now))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ actions

    def _apply(self, ssrc: int, stream: _Stream, actions: Actions) -> None:
        for frame in actions.frames:
            self._deliver(stream, frame)
        if actions.nack:
            self._send(self._receiver._send_rtcp_nack(ssrc, actions.nack), "NACK")
        if actions.pli:
            self._send(self._receiver._send_rtcp_pli(ssrc), "PLI")

    def _deliver(self, stream: _Stream, frame: AssembledFrame) -> None:
        """Queue the frame for aiortc's decoder thread exactly as aiortc's own handler would."""
        r = self._receiver
        now = self._clock_ms()
        first = stream.first_seen_ms.pop(frame.timestamp, now)
        for listener in self._listeners:
            try:
                listener(stream.codec.name, frame)
            except Exception:  # a forwarding bug must not stop reception for the decoder
                log.exception("frame listener failed")
        if not getattr(r, _P + "decoder_thread"):
            return
        timestamp = getattr(r, _P + "timestamp_mapper").map(frame.timestamp)
        if self._arrivals is not None:  # the decoded picture will carry ``timestamp`` as its pts
            self._arrivals.released(timestamp, first / 1000.0, now / 1000.0)
        getattr(r, _P + "decoder_queue").put((stream.codec, JitterFrame(data=frame.data, timestamp=timestamp)))

    def _send(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.get_running_loop().create_task(_guarded(coro, what))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)


async def _guarded(coro: Coroutine[Any, Any, None], what: str) -> None:
    try:
        await coro
    except Exception as exc:  # aiortc swallows ConnectionError itself; anything else is logged, not raised
        log.debug("sending %s failed: %s", what, exc)


def attach(
    receiver: Any,
    rtt_ms: Callable[[], float | None] | None = None,
    *,
    policy: Policy | None = None,
    tick_ms: float = 10.0,
    clock_ms: Callable[[], float] | None = None,
    arrivals: ArrivalLog | None = None,
) -> ResilientReceiver:
    """Make one aiortc video ``RTCRtpReceiver`` NACK, give up, request keyframes and skip like libwebrtc.

    Call from inside the running event loop, before or after the receiver starts (after
    ``setRemoteDescription`` is fine). ``rtt_ms`` returns the current RTT in milliseconds, or ``None``
    while unknown (100 ms is used then); :func:`sender_rtt_ms` gives one from the peer connection.
    """
    if aiortc.__version__ != AIORTC_VERSION:
        raise RuntimeError(
            f"srtc.server.receiver relies on aiortc {AIORTC_VERSION} internals (see its docstring) but aiortc "
            f"{aiortc.__version__} is installed; re-check those internals before changing the pin in pyproject.toml"
        )
    absent = [name for name in _REQUIRED if not hasattr(receiver, name)]
    if absent:
        raise RuntimeError(f"not an aiortc {AIORTC_VERSION} RTCRtpReceiver: missing {', '.join(absent)}")
    kind = getattr(receiver, _P + "kind")
    if kind != "video":
        raise ValueError(f"attach() is for video receivers, this one is {kind!r}")
    if isinstance(getattr(receiver, _P + "jitter_buffer"), _JitterShim):
        raise RuntimeError("a resilient receiver is already attached to this receiver")
    guard_decoders()
    return ResilientReceiver(
        receiver,
        rtt_ms,
        policy,
        tick_ms,
        clock_ms or (lambda: time.monotonic() * 1000.0),
        arrivals,
    )
