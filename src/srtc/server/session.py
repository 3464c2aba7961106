"""One client: its peer connection, the tracks wired for it, and cleanup on every exit path.

The offer's contract (see docs/PROTOCOL.md): three video m-lines, in order,
0 = the uplink the client sends, 1 = SR on comes back (2x), 2 = SR off comes back (as received).
A single ``sendrecv`` video m-line also works: SR on comes back on it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaBlackhole

from .bandwidth import RembCap, with_bandwidth
from .budget import ArrivalLog
from .encoder import FrameGuard
from .engine import Upscaler
from .fanout import FrameFanout, LatestFrame
from .forward import ForwardTrack
from .governor import GovernorPolicy, LoadGovernor
from .impairment import NetworkControl, SessionPath
from .jitter import Policy
from .memory import release_freed_memory
from .pipeline import drain, offered, send_encoded
from .receiver import ResilientReceiver, attach, sender_rtt_ms
from .relay import Relay, tap
from .return_rate import ReturnBitrates
from .sr_track import RawTrack, SlotTrack, SuperResolutionTrack
from .watchdog import Watchdog

log = logging.getLogger(__name__)

# Giving up on a frame costs a keyframe, and on a slow link a keyframe costs far more than waiting: at
# 600 kbps a 360p VP8 keyframe takes 200-400 ms to cross. Measured at 5% loss, 600 kbps, 40 +- 10 ms
# delay: with the default 2.5 x RTT and a 100 ms floor, a retransmission that was only late (queueing,
# jitter) arrived after the give-up and the keyframe that followed froze the picture for 460 ms.
UPLINK_POLICY = Policy(give_up_rtt_factor=3.0, min_give_up_ms=250.0)


class OfferError(ValueError):
    """The client's offer cannot be used; the message says why, for a 400 answer."""


def parse_offer(body: object) -> tuple[RTCSessionDescription, bool]:
    """Validate the JSON of ``POST /offer``: ``{"sdp": str, "type": "offer", "sr": bool (optional)}``."""
    if not isinstance(body, dict):
        raise OfferError('expected a JSON object {"sdp": ..., "type": "offer"}')
    sdp, kind, sr = body.get("sdp"), body.get("type"), body.get("sr", True)
    if kind != "offer":
        raise OfferError(f'"type" must be "offer", got {kind!r}')
    if not isinstance(sr, bool):
        raise OfferError(f'"sr" must be true or false, got {sr!r}')
    if not isinstance(sdp, str) or not sdp.lstrip().startswith("v=0"):
        raise OfferError('"sdp" must be an SDP session description starting with "v=0"')
    if "m=video" not in sdp:
        raise OfferError("the offer has no video m-line; send a video track")
    if re.search(r"^m=video 0 ", sdp, re.MULTILINE):
        raise OfferError("the offer rejects a video m-line (port 0); offer the three video transceivers")
    if not re.search(r"^a=fingerprint:\S+ \S+", sdp, re.MULTILINE):
        raise OfferError("the offer has no DTLS fingerprint (a=fingerprint); WebRTC media must be encrypted")
    return RTCSessionDescription(sdp=sdp, type="offer"), sr


class Session:
    """A receiving peer: uplink -> fanout -> (SR track, raw track) -> back to the same client."""

    def __init__(
        self,
        upscaler: Upscaler,
        on_closed: Callable[[Session], object],
        connect_timeout_s: float = 30.0,
        network: NetworkControl | None = None,
        resilient: bool = True,
        governor: GovernorPolicy | None = None,
        fast: Upscaler | None = None,
        encoder_nice: int = 0,
        viewer_kbps: float | None = None,
        peer_address: str | None = None,
        relay_floor_kbps: float = 1500.0,
        ice_servers: list[RTCIceServer] | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.secret = secrets.token_urlsafe(18)  # only the client that opened the session can change or end it
        self.created = time.monotonic()
        self.peer_address = peer_address  # who opened it: the per-address limits count by it
        # STUN/TURN (srtc/server/turn.py): with TURN, this side gathers relay candidates too; None: aiortc's default
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers) if ice_servers else None)
        self.upscaler = upscaler
        self.fast = fast  # the governor's faster model (int8), or None
        self.fanout: FrameFanout | None = None
        self.sr_track: SuperResolutionTrack | None = None
        self.raw_track: RawTrack | None = None  # SR off decoded and re-encoded, where it cannot be forwarded
        self.forward: ForwardTrack | None = None  # SR off as the sender encoded it
        self._pacer: asyncio.Future[None] | None = None
        self.network = network
        self.netpath: SessionPath | None = None
        self.remb_cap: RembCap | None = None
        self.resilient = resilient
        self.receiver: ResilientReceiver | None = None
        self.governor_policy = governor or GovernorPolicy()
        self.encoder_nice = encoder_nice  # the return encoders' threads, below the SR stage (srtc.server.priority)
        # How the returned streams share the viewer's link (``viewer_kbps``) and the client's REMB.
        self.return_rates = ReturnBitrates(None if viewer_kbps is None else int(viewer_kbps * 1000))
        self.guards: dict[str, FrameGuard] = {}  # per encoded return stream: the frames lost to errors
        # a return stream that stops while frames come in is restarted (srtc.server.watchdog)
        self.streams_watch = Watchdog()
        self.relay: Relay | None = None  # its viewers: the SR-on encode and the uplink's frames, shared
        self._relay_floor_bps = int(relay_floor_kbps * 1000)
        self._baseline: LatestFrame | None = None  # the SR track's reference for drops (see SuperResolutionTrack)
        self.arrivals = ArrivalLog()  # the receive-side times of each frame, for the latency budget
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sr-{self.id}")
        self._blackhole = MediaBlackhole()
        self._on_closed = on_closed
        self._connect_timeout_s = connect_timeout_s
        self._closing: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    async def answer(self, offer: RTCSessionDescription, sr_enabled: bool = True) -> RTCSessionDescription:
        """Apply the offer, wire the return tracks, and produce the answer; raises :class:`OfferError`."""
        try:
            await self.pc.setRemoteDescription(offer)
        except Exception as exc:  # aiortc raises ValueError, InvalidAccessError, OperationError...
            raise OfferError(f"cannot apply the offer: {str(exc) or type(exc).__name__}") from exc
        uplink, sr_out, raw_out = self._transceivers()
        if self.fanout is None:
            raise OfferError("the uplink m-line does not send video (its direction must be sendonly or sendrecv)")
        if self.network is not None:
            network = self.network  # set once, in __init__
            self.netpath = network.attach_peer(self.pc)  # impair what this peer receives
            self.remb_cap = RembCap(uplink.receiver, lambda: network.config.kbps or None)
        if self.resilient:
            # NACK with re-NACKs, an RTT-tied give-up, PLI and skip-to-keyframe, instead of aiortc's stall.
            self.receiver = attach(
                uplink.receiver, rtt_ms=sender_rtt_ms(self.pc), policy=UPLINK_POLICY, arrivals=self.arrivals
            )
        if raw_out is not None:
            self.forward = self._forward_track(uplink, raw_out)
            # Without forwarding (the stock receiver, or codecs that differ), SR off is decoded and re-encoded.
            self.raw_track = RawTrack(self.fanout.subscribe()) if self.forward is None else None
        self._baseline = self.raw_track.slot if self.raw_track else self.fanout.subscribe()
        if self.raw_track is None:
            # a consumer that never lags: the input's own drops
            self._pacer = asyncio.ensure_future(drain(self._baseline))
        self.sr_track = self._new_sr_track(sr_enabled)
        self.guards["sr"] = send_encoded(
            sr_out,
            self.sr_track,
            keep_receiving=sr_out is uplink,
            rates=self.return_rates,
            name="sr",
            nice=self.encoder_nice,
            relay_cap=lambda wanted: self.relay.rate_cap(wanted) if self.relay is not None else None,
        )
        self.relay = self._new_relay(uplink, sr_out)
        self.streams_watch.watch("sr", sr_out.sender, self._restart_sr_track, lambda: offered(self.sr_track))
        if self.raw_track is not None and raw_out is not None:
            self.guards["raw"] = send_encoded(
                raw_out,
                self.raw_track,
                keep_receiving=False,
                rates=self.return_rates,
                name="raw",
                nice=self.encoder_nice,
            )
            self.streams_watch.watch("raw", raw_out.sender, self._restart_raw_track, lambda: offered(self.raw_track))
        elif self.forward is not None and raw_out is not None:
            _forward(raw_out, self._current_forward, self.return_rates)
            self.streams_watch.watch("raw", raw_out.sender, self._restart_forward, lambda: offered(self.forward))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self._blackhole.start()
        self._watchdog = asyncio.ensure_future(self._close_if_never_connected())
        self.streams_watch.start()
        log.info("session %s: answered (%d video m-lines, sr=%s)", self.id, 3 if raw_out else 1, sr_enabled)
        answer = self.pc.localDescription
        kbps = self.network.config.kbps if self.network is not None else None
        return RTCSessionDescription(sdp=with_bandwidth(answer.sdp, kbps), type=answer.type)

    def _new_relay(self, uplink: RTCRtpTransceiver, sr_out: RTCRtpTransceiver) -> Relay:
        """The stream others may watch: the SR-on encode (when VP8, the codec it can be tapped in) and the
        uplink's own frames (when the resilient receiver assembles them)."""
        sr_codec = sr_out._codecs[0].name if sr_out._codecs else None
        raw_codec = uplink._codecs[0].name if uplink._codecs and self.receiver is not None else None
        relay = Relay(
            sr_codec if sr_codec and sr_codec.upper() == "VP8" else None,
            raw_codec,
            request_sr_keyframe=lambda: setattr(sr_out.sender, "_RTCRtpSender__force_keyframe", True),
            request_raw_keyframe=self.receiver.request_keyframe if self.receiver is not None else None,
            figures=self._stream_figures,
            floor_bps=self._relay_floor_bps,
        )
        tap(sr_out.sender, relay.publish_sr)
        if self.receiver is not None:
            self.receiver.on_frame(lambda name, frame: relay.publish_raw(name, frame.data, frame.timestamp,
                                                                         frame.keyframe))  # fmt: skip
        return relay

    def _stream_figures(self) -> dict:
        sr = self.sr_track.stats() if self.sr_track else {}
        return {
            "width": sr.get("width", 0),
            "height": sr.get("height", 0),
            "fps": sr.get("fps", 0.0),
            "model": sr.get("upscaler"),
            "sr_enabled": self.sr_enabled,
        }

    def _forward_track(self, uplink: RTCRtpTransceiver, raw_out: RTCRtpTransceiver) -> ForwardTrack | None:
        """A track forwarding the uplink's own frames to ``raw_out``, when its negotiated codec is the uplink's
        and the resilient receiver (which assembles the frames) is attached; else None."""
        if self.receiver is None or not raw_out._codecs or not uplink._codecs:
            return None
        codec, upcodec = raw_out._codecs[0].name.upper(), uplink._codecs[0].name.upper()
        if codec != upcodec:
            log.info("session %s: SR off is re-encoded (uplink %s, return %s)", self.id, upcodec, codec)
            return None
        forward = ForwardTrack(codec, self.receiver.request_keyframe)
        # the current forward track (a restart replaces it) gets every frame the receiver assembles
        self.receiver.on_frame(lambda name, frame: self._current_forward().push(name, frame.data, frame.timestamp,
                                                                              frame.keyframe))  # fmt: skip
        return forward

    def _current_forward(self) -> ForwardTrack:
        assert self.forward is not None  # only wired when there is one
        return self.forward

    def _new_sr_track(self, enabled: bool) -> SuperResolutionTrack:
        assert self.fanout is not None  # the offer's uplink made it before any track is wired
        return SuperResolutionTrack(
            self.fanout.subscribe(),
            self.upscaler,
            self._executor,
            enabled,
            LoadGovernor(self.governor_policy, fast=self.fast is not None),
            baseline=self._baseline,
            fast=self.fast,
        )

    def _restart_sr_track(self) -> SuperResolutionTrack:
        """A fresh SR track with the old one's setting, for the watchdog; the old one's input slot is let go."""
        old = self.sr_track
        self.sr_track = self._new_sr_track(old.enabled if old is not None else True)
        if old is not None:
            self._retire(old)
        return self.sr_track

    def _restart_raw_track(self) -> RawTrack:
        assert self.fanout is not None
        old, self.raw_track = self.raw_track, RawTrack(self.fanout.subscribe())
        self._baseline = self.raw_track.slot
        if self.sr_track is not None:
            self.sr_track.baseline = self._baseline
        if old is not None:
            self._retire(old)
        return self.raw_track

    def _restart_forward(self) -> ForwardTrack:
        old = self._current_forward()
        old.stop()
        assert self.receiver is not None  # forwarding needs the resilient receiver
        self.forward = ForwardTrack(old.codec, self.receiver.request_keyframe)
        return self.forward

    def _retire(self, track: SlotTrack) -> None:
        track.stop()
        if self.fanout is not None:
            self.fanout.unsubscribe(track.slot)

    def set_sr(self, enabled: bool) -> None:
        if self.sr_track is not None:
            self.sr_track.enabled = enabled
        log.info("session %s: SR %s", self.id, "on" if enabled else "off")

    @property
    def sr_enabled(self) -> bool:
        return self.sr_track is not None and self.sr_track.enabled

    def close(self) -> asyncio.Task[None]:
        """Idempotent: the first caller starts the teardown, everyone gets the same task to await."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._teardown())
        return self._closing

    def stats(self) -> dict:
        sr = self.sr_track.stats() if self.sr_track else {}
        raw = self.raw_track.stats() if self.raw_track else self.forward.stats() if self.forward else None
        fanout = self.fanout
        return {
            "id": self.id,
            "state": self.pc.connectionState,
            "age_s": round(time.monotonic() - self.created, 1),
            "sr_enabled": self.sr_enabled,
            "upscaler": sr.get("upscaler"),
            "fast_upscaler": sr.get("fast_upscaler"),
            "frames_in": fanout.frames if fanout else 0,
            "fps_in": fanout.fps.rate() if fanout else 0.0,
            "input": {"width": fanout.width if fanout else 0, "height": fanout.height if fanout else 0},
            "freezes_in": fanout.freezes.stats() if fanout else None,
            "frames_out": sr.get("frames_out", 0),
            "fps_out": sr.get("fps", 0.0),
            "output": {"width": sr.get("width", 0), "height": sr.get("height", 0)},
            "skipped": sr.get("skipped", 0),
            "sr_ms": sr.get("sr_ms"),
            "governor": sr.get("governor"),
            "budget_ms": sr.get("budget_ms"),
            "streams": {"sr": sr, "raw": raw},
            "return_bitrate": self.return_rates.stats(),
            "return_errors": {name: guard.stats() for name, guard in self.guards.items()},
            "return_restarts": self.streams_watch.stats(),
            "network": self.netpath.stats() if self.netpath else None,
            "receiver": self.receiver.stats() if self.receiver else None,
            "relay": self.relay.stats() if self.relay else None,
        }

    def _transceivers(self) -> tuple[RTCRtpTransceiver, RTCRtpTransceiver, RTCRtpTransceiver | None]:
        video = [t for t in self.pc.getTransceivers() if t.kind == "video"]
        if len(video) == 3:
            return video[0], video[1], video[2]
        if len(video) == 1 and video[0]._offerDirection == "sendrecv":
            return video[0], video[0], None
        raise OfferError(
            f"the offer has {len(video)} video m-lines; expected 3 (0: uplink sendonly, 1: SR on recvonly, "
            "2: SR off recvonly) or 1 (sendrecv: SR on comes back on it)"
        )

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and self.fanout is None:
            self.fanout = FrameFanout(track, self.arrivals)
        else:
            self._blackhole.addTrack(track)  # audio or a second video: drain it so nothing queues up

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("session %s: connection %s", self.id, state)
        if state in ("failed", "closed"):
            self.close()

    async def _close_if_never_connected(self) -> None:
        await asyncio.sleep(self._connect_timeout_s)
        if self.pc.connectionState != "connected":
            log.warning("session %s: not connected after %.0f s, closing", self.id, self._connect_timeout_s)
            self.close()

    async def _teardown(self) -> None:
        if self.relay is not None:
            self.relay.end()  # its viewers' tracks end now, their calls a moment later
        if self._watchdog is not None:
            self._watchdog.cancel()
        self.streams_watch.stop()
        for track in (self.sr_track, self.raw_track, self.forward):
            if track is not None:
                track.stop()
        if self._pacer is not None:
            self._pacer.cancel()
        if self.fanout is not None:
            await self.fanout.stop()
        await self._blackhole.stop()
        if self.remb_cap is not None:
            self.remb_cap.stop()
        if self.receiver is not None:
            self.receiver.stop()
        await self.pc.close()
        if self.netpath is not None:
            self.netpath.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)
        release_freed_memory()
        log.info("session %s: closed", self.id)
        self._on_closed(self)


def _forward(transceiver: RTCRtpTransceiver, current: Callable[[], ForwardTrack], rates: ReturnBitrates) -> None:
    """Send the ``current()`` forward track's frames as they are; the viewer's keyframe requests go to the
    uplink's sender. (``current``, not one track: the watchdog may replace it.)"""
    sender = transceiver.sender
    sender.replaceTrack(current())
    # aiortc calls it on a PLI or FIR for this stream
    sender._send_keyframe = lambda: current().request_keyframe()  # type: ignore[method-assign]  # aiortc private
    rates.add_forwarded("raw", sender, lambda: current().bitrate_bps())
    transceiver.direction = "sendonly"
