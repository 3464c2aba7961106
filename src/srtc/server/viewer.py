"""One viewer of a relayed stream: its peer connection, its two forwarded tracks, and cleanup on every exit.

The watch offer's contract (see docs/PROTOCOL.md): one or two video m-lines, both ``recvonly``, in
order: 0 = SR on (the stream's shared 720p encode), 1 = SR off (the sender's own frames, forwarded).
Both are :class:`srtc.server.forward.ForwardTrack`s fed by the stream's :class:`srtc.server.relay.Relay`:
this peer connection packetises and encrypts the shared frames, and encodes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci

from .forward import ForwardTrack
from .memory import release_freed_memory
from .relay import Relay
from .session import OfferError
from .watchdog import Watchdog

log = logging.getLogger(__name__)

STREAMS = ("sr", "raw")  # the watch offer's m-lines, in order
END_GRACE_S = 1.0  # after its stream ends, a viewer's call stays open this long so its page can read why
REMB_TTL_S = 5.0  # a viewer's REMB older than this no longer limits the shared encode (browsers send ~1/s)
# A connected viewer whose RTCP (receiver reports, sent about once a second) stops this long has gone: its
# call is closed, rather than packetising for it until ICE's consent checks fail (about 30 s).
SILENT_S = 5.0


class Viewer:
    """A receive-only peer watching one :class:`Relay`'s stream."""

    def __init__(
        self,
        relay: Relay,
        on_closed: Callable[[Viewer], object],
        connect_timeout_s: float = 30.0,
        peer_address: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        ice_servers: list[RTCIceServer] | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.secret = secrets.token_urlsafe(18)  # only this viewer's own page can read or end it
        self.relay = relay
        self.peer_address = peer_address
        self.created = clock()
        # STUN/TURN (srtc/server/turn.py), as for a sending session; None: aiortc's default
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers) if ice_servers else None)
        self.tracks: dict[str, ForwardTrack] = {}  # by stream name; the watchdog may replace one
        self.streams_watch = Watchdog()
        self.stream_ended = False
        self._clock = clock
        self._remb: tuple[float, float] | None = None  # (SR on's share of the last REMB in bps, when)
        self.last_heard: float | None = None  # the viewer's last RTCP, or when it connected
        self._on_closed = on_closed
        self._connect_timeout_s = connect_timeout_s
        self._timers: list[asyncio.TimerHandle | asyncio.Task[None]] = []
        self._closing: asyncio.Task[None] | None = None
        self.pc.on("connectionstatechange", self._on_state)

    async def answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Apply a receive-only offer, wire the relayed tracks, and produce the answer; raises OfferError."""
        try:
            await self.pc.setRemoteDescription(offer)
        except Exception as exc:  # aiortc raises ValueError, InvalidAccessError, OperationError...
            raise OfferError(f"cannot apply the offer: {str(exc) or type(exc).__name__}") from exc
        video = [t for t in self.pc.getTransceivers() if t.kind == "video"]
        if len(video) not in (1, 2) or any(t._offerDirection != "sendonly" for t in video):
            raise OfferError(
                "a watch offer has 1 or 2 video m-lines, all recvonly (0: SR on, 1: SR off); "
                f"got {len(video)} ({', '.join(_offered_direction(t) for t in video)})"
            )
        for name, transceiver in zip(STREAMS, video):
            self._wire(name, transceiver)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._timers.append(asyncio.ensure_future(self._close_if_never_connected()))
        self.streams_watch.start()
        self.relay.add(self)
        log.info("viewer %s: watching stream %s (%s)", self.id, self.relay.id, ", ".join(self.tracks))
        return self.pc.localDescription

    def _wire(self, name: str, transceiver: RTCRtpTransceiver) -> None:
        codec = self.relay.sr_codec if name == "sr" else self.relay.raw_codec
        if codec is None:
            transceiver.direction = "inactive"  # the stream has nothing to relay on it
            return
        _keep_codec(transceiver, codec)
        self.tracks[name] = ForwardTrack(codec, lambda: self.relay.request_keyframe(name))
        sender = transceiver.sender
        sender.replaceTrack(self.tracks[name])
        # aiortc calls it on this viewer's PLI or FIR: the shared encode (or the sender) makes the keyframe
        sender._send_keyframe = lambda: self.tracks[name].request_keyframe()  # type: ignore[method-assign]
        self._listen(sender, remb=name == "sr")
        transceiver.direction = "sendonly"
        self.streams_watch.watch(name, sender, lambda: self._restart(name), lambda: self.tracks[name].queued)

    def _restart(self, name: str) -> ForwardTrack:
        """A fresh forward for the watchdog: the old track's queue is let go, the relay feeds the new one."""
        old = self.tracks[name]
        old.stop()
        self.tracks[name] = ForwardTrack(old.codec, lambda: self.relay.request_keyframe(name))
        return self.tracks[name]

    def _listen(self, sender: Any, remb: bool) -> None:
        """Note when the viewer last sent RTCP for ``sender``, and with ``remb`` keep SR on's share of its
        REMBs for the relay's rate (aiortc 1.16.0, pinned: the DTLS transport hands every RTCP packet for
        this sender to ``_handle_rtcp_packet``)."""
        inner = sender._handle_rtcp_packet

        async def handle(packet: Any) -> None:
            self.last_heard = self._clock()
            if remb and isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                self._on_remb(sender, packet)
                return
            await inner(packet)

        sender._handle_rtcp_packet = handle

    def _on_remb(self, sender: Any, packet: RtcpPsfbPacket) -> None:
        try:
            estimate, ssrcs = unpack_remb_fci(packet.fci)
        except ValueError:
            return
        if sender._ssrc not in ssrcs:
            return
        raw = self.tracks.get("raw")
        raw_ssrc = getattr(self._sender_of("raw"), "_ssrc", None)
        forwarded = raw.bitrate_bps() if raw is not None and raw_ssrc in ssrcs else 0.0
        self._remb = (max(0.0, estimate - forwarded), self._clock())  # one estimate for the whole transport

    def _sender_of(self, name: str) -> Any:
        track = self.tracks.get(name)
        return next((s for s in self.pc.getSenders() if track is not None and s.track is track), None)

    # -- what the relay calls ---------------------------------------------------------------------------

    def push_sr(self, data: bytes, timestamp: int, keyframe: bool) -> None:
        track = self.tracks.get("sr")
        if track is not None:
            track.push(track.codec, data, timestamp & 0xFFFFFFFF, keyframe)

    def push_raw(self, codec: str, data: bytes, timestamp: int, keyframe: bool) -> None:
        track = self.tracks.get("raw")
        if track is not None:
            track.push(codec, data, timestamp, keyframe)

    def sr_estimate_bps(self) -> float | None:
        """SR on's share of this viewer's last REMB, if it is recent."""
        if self._remb is None or self._clock() - self._remb[1] > REMB_TTL_S:
            return None
        return self._remb[0]

    def sr_received_bps(self) -> float:
        track = self.tracks.get("sr")
        return track.bitrate_bps() if track is not None else 0.0

    def end_stream(self) -> None:
        """The sender left: end the tracks now (the page sees them stop) and the call a moment later."""
        if self.stream_ended:
            return
        self.stream_ended = True
        self.streams_watch.stop()
        for track in self.tracks.values():
            track.stop()
        self._timers.append(asyncio.get_running_loop().call_later(END_GRACE_S, self.close))

    # -- life cycle -------------------------------------------------------------------------------------

    def close(self) -> asyncio.Task[None]:
        """Idempotent: the first caller starts the teardown, everyone gets the same task to await."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._teardown())
        return self._closing

    def stats(self) -> dict:
        estimate = self.sr_estimate_bps()
        return {
            "id": self.id,
            "stream": self.relay.id,
            "state": self.pc.connectionState,
            "stream_state": "ended" if self.stream_ended or self.relay.ended else "live",
            "age_s": round(self._clock() - self.created, 1),
            "streams": {name: track.stats() for name, track in self.tracks.items()},
            "remb_kbps": None if estimate is None else round(estimate / 1000),
            "return_restarts": self.streams_watch.stats(),
        }

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("viewer %s: connection %s", self.id, state)
        if state == "connected" and self.last_heard is None:
            self.last_heard = self._clock()
            self._timers.append(asyncio.ensure_future(self._close_when_silent()))
        if state in ("failed", "closed"):
            self.close()

    async def _close_when_silent(self) -> None:
        """Close the call once the viewer has sent no RTCP for :data:`SILENT_S` (a crashed page or process)."""
        while True:
            await asyncio.sleep(SILENT_S / 5)
            if self.last_heard is not None and self._clock() - self.last_heard > SILENT_S:
                log.warning("viewer %s: no RTCP for %.0f s, closing", self.id, self._clock() - self.last_heard)
                self.close()
                return

    async def _close_if_never_connected(self) -> None:
        await asyncio.sleep(self._connect_timeout_s)
        if self.pc.connectionState != "connected":
            log.warning("viewer %s: not connected after %.0f s, closing", self.id, self._connect_timeout_s)
            self.close()

    async def _teardown(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self.streams_watch.stop()
        self.relay.remove(self)
        for track in self.tracks.values():
            track.stop()
        await self.pc.close()
        release_freed_memory()
        log.info("viewer %s: closed", self.id)
        self._on_closed(self)


def _keep_codec(transceiver: RTCRtpTransceiver, codec: str) -> None:
    """Answer with ``codec`` alone (and its retransmission format): the relayed frames are coded in it."""
    wanted = [c for c in transceiver._codecs if c.name.upper() == codec]
    if not wanted:
        offered = ", ".join(sorted({c.name for c in transceiver._codecs if c.name.lower() != "rtx"}))
        raise OfferError(f"the stream is coded in {codec}, which the offer does not accept (it offers {offered})")
    types = {c.payloadType for c in wanted}
    rtx = [c for c in transceiver._codecs if c.name.lower() == "rtx" and _apt(c) in types]
    transceiver._codecs = wanted + rtx


def _apt(codec: Any) -> int | None:
    value = codec.parameters.get("apt")
    return int(value) if value is not None else None


def _offered_direction(transceiver: RTCRtpTransceiver) -> str:
    """The direction the offer gave the m-line (aiortc keeps its reverse: what this side may do)."""
    reverse = {"sendonly": "recvonly", "recvonly": "sendonly", "sendrecv": "sendrecv", "inactive": "inactive"}
    return reverse.get(transceiver._offerDirection or "", "?")
