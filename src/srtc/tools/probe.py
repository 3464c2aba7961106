"""Headless probe: send numbered 640x360 frames to the server and measure both streams it returns.

    python -m server.probe --url http://127.0.0.1:8080 --seconds 20 [--json] [--source PATH] [--fps 30]
    python -m server.probe --viewers 1 5 20 [--phase-seconds 20] [--kill-viewers 5]   (srtc.tools.probe_viewers)

Each sent frame carries its number in its pixels (:mod:`srtc.tools.framecode`), because nothing else
survives the server's decode / upscale / re-encode. That number gives, per returned frame, the
latency (receipt time minus the time the frame was handed to the encoder) and the 1280x720
original to compare against for PSNR-Y. The source is real photographic content (Big Buck Bunny
by default), pre-rendered once so the probe costs little CPU while it measures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import aiohttp
import av
import cv2
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from srtc.server.app import process_stats
from srtc.server.bandwidth import TARGET_SHARE
from srtc.server.engine import Upscaler, plane_view
from srtc.server.receiver import attach as attach_resilient
from srtc.server.receiver import sender_rtt_ms
from srtc.training.vmaf import FrameBank, VmafUnavailable, ffmpeg_with_libvmaf

from . import framecode
from .probe_replay import ReplayTrack, follow_keyframe_requests, pre_encode
from .probe_report import (
    ProbeReport,
    StreamStats,
    build_report,
    cpu_between,
    finite_mean,
    recovery_after,
    rounded,
)
from .probe_source import (
    CODE_MARGIN,
    FULL_H,
    FULL_W,
    NumberedTrack,
    SentFrame,
    Source,
    load_source,
    psnr_y,
)

log = logging.getLogger("server.probe")

STREAM_INDEX = {1: "sr", 2: "raw"}  # transceiver index -> stream name (0 is the uplink)


DEFAULT_REPLAY_KBPS = 1000.0  # the replayed uplink without a link cap: about what aiortc settles at on loopback


class ProbeError(RuntimeError):
    """The probe could not run: server unreachable, refused the offer, or never connected."""


# --------------------------------------------------------------------------- sending


# --------------------------------------------------------------------------- receiving


class ArrivalWatch:
    """When each returned frame's last RTP packet reached the probe, looked up by the decoded frame's pts.

    Why: it splits the returned frame's latency into the network part and the decode part. This reads
    aiortc internals (the receiver's timestamp mapper); when they change, it quietly gives None.
    """

    MAX_PENDING = 1000

    def __init__(self, receiver: object) -> None:
        self.receiver = receiver
        self.times: dict[int, float] = {}  # RTP timestamp -> time.monotonic() of its marker packet
        original = getattr(receiver, "_handle_rtp_packet", None)
        if original is None:
            return

        async def handle(packet, *args, **kwargs):
            if getattr(packet, "marker", 0) and packet.timestamp not in self.times:
                self.times[packet.timestamp] = time.monotonic()
                if len(self.times) > self.MAX_PENDING:
                    for stale in list(self.times)[: self.MAX_PENDING // 2]:
                        del self.times[stale]
            await original(packet, *args, **kwargs)

        receiver._handle_rtp_packet = handle  # type: ignore[attr-defined]

    def arrival_of(self, pts: int | None) -> float | None:
        """Arrival time of the frame whose decoded pts is ``pts`` (aiortc: RTP timestamp - first one)."""
        mapper = getattr(self.receiver, "_RTCRtpReceiver__timestamp_mapper", None)
        origin = getattr(mapper, "_origin", None)
        if origin is None or pts is None:
            return None
        return self.times.pop((origin + pts) % (1 << 32), None)


def luma_plane(frame: av.VideoFrame) -> np.ndarray:
    """The Y plane of a decoded frame as a ``(height, width)`` view (converted if not yuv420p)."""
    if frame.format.name not in ("yuv420p", "yuvj420p"):
        frame = frame.reformat(format="yuv420p")
    return plane_view(frame, 0)


class GeneratorGain:
    """The generator's own gain on the very frames the viewer got as SR off, and what the return path keeps.

    The forwarded SR-off stream carries the sender's encode, which is what the server decoded and upscaled;
    so running the same model here on each SR-off frame as received gives the SR-on picture as the generator
    made it. Against the original that is the generator's own gain over bicubic; against the SR-on frame of
    the same number as received it is how transparent the server's return encode (and governor) was.
    """

    KEEP = 64  # generator outputs waiting for their SR-on frame (a skipped SR frame never claims one)

    def __init__(self, upscaler: Upscaler) -> None:
        self.upscaler = upscaler
        self.name = upscaler.name
        self.model_psnr: list[float] = []  # the generator's output on SR-off as received, against the original
        self.bicubic_psnr: list[float] = []  # bicubic of the same frames (the SR-off figure, on the same frames)
        self.encode_psnr: list[float] = []  # SR-on as received against the generator's output of that frame
        self._made: dict[int, np.ndarray] = {}
        self.psnr_of: dict[int, float] = {}  # frame number -> the generator's output's PSNR-Y
        self.vmaf_bank: FrameBank | None = None  # where its outputs go for VMAF, when VMAF is on
        self.vmaf: dict | None = None

    def sr_off(
        self, number: int, y: np.ndarray, bicubic_psnr: float, original: np.ndarray, box: tuple[int, int, int, int]
    ) -> None:
        """SR off frame ``number`` as received (``y``, 640x360), whose bicubic x2 scored ``bicubic_psnr``."""
        made = self.upscaler.upscale_luma(y)
        self.model_psnr.append(psnr_y(made, original, box))
        self.psnr_of[number] = self.model_psnr[-1]
        if self.vmaf_bank is not None:
            keep_for_vmaf(self.vmaf_bank, "generator", number, made, original, box)
        self.bicubic_psnr.append(bicubic_psnr)
        if len(self._made) >= self.KEEP:
            del self._made[next(iter(self._made))]
        self._made[number] = made

    def sr_on(self, number: int, y: np.ndarray, box: tuple[int, int, int, int]) -> None:
        made = self._made.pop(number, None)
        if made is not None and y.shape == made.shape:
            self.encode_psnr.append(psnr_y(y, made, box))

    def report(self) -> dict:
        model, bicubic = finite_mean(self.model_psnr), finite_mean(self.bicubic_psnr)
        return {
            "model": self.name,
            "frames": len(self.model_psnr),
            "model_psnr_y": rounded(model),
            "bicubic_psnr_y": rounded(bicubic),
            "gain_db": rounded(model - bicubic) if model is not None and bicubic is not None else None,
            "return_encode_psnr_y": rounded(finite_mean(self.encode_psnr)),
            "encode_frames": len(self.encode_psnr),
            "model_vmaf": self.vmaf.get("vmaf") if self.vmaf else None,
            "model_vmaf_neg": self.vmaf.get("vmaf_neg") if self.vmaf else None,
        }


class LaterScores:
    """Returned frames kept to be scored after the run, so PSNR-Y, the generator's gain and VMAF cost the
    probe nothing while it times the streams (it shares the cores with the server it measures).

    At most ``limit_bytes`` are kept. When full, every other kept frame number is let go and only every
    other one is kept from then on: the sample stays spread over the whole run, and both streams keep the
    same numbers, so paired figures stay paired."""

    def __init__(self, limit_bytes: int = 512 << 20) -> None:
        self.limit_bytes = limit_bytes
        self.stride = 1
        self.bytes = 0
        self._frames: dict[tuple[int, str], tuple[np.ndarray, int]] = {}  # (number, stream) -> (luma, source index)

    def keep(self, stream: str, number: int, y: np.ndarray, index: int) -> None:
        if number % self.stride:
            return
        self._frames[(number, stream)] = (y.copy(), index)  # the decoder's buffer is not ours to hold
        self.bytes += y.nbytes
        while self.bytes > self.limit_bytes and self._frames:
            self._thin()

    def _thin(self) -> None:
        self.stride *= 2
        for key in [k for k in self._frames if k[0] % self.stride]:
            self.bytes -= self._frames.pop(key)[0].nbytes

    def score(self, streams: dict[str, StreamStats], source: Source, gain: GeneratorGain | None) -> None:
        """Score every kept frame, SR off before SR on of each number (the generator's gain pairs them)."""
        for number, name in sorted(self._frames, key=lambda key: (key[0], key[1] != "raw")):
            y, index = self._frames.pop((number, name))
            score_frame(streams[name], number, y, source.originals[index], gain)
        self.bytes = 0


def measure_frame(
    stats: StreamStats,
    y: np.ndarray,
    received: float,
    sent: dict[int, SentFrame],
    source: Source,
    arrived: float | None = None,
    gain: GeneratorGain | None = None,
    later: LaterScores | None = None,
) -> None:
    """Count one returned frame, its latency, and its PSNR-Y when its original is kept (now, or with
    ``later`` after the run).

    ``received`` is when the decoded frame came out of the track; ``arrived`` (optional) when its
    last RTP packet reached the probe.
    """
    height, width = y.shape
    stats.frames += 1
    stats.width, stats.height = width, height
    key = f"{width}x{height}"
    stats.sizes[key] = stats.sizes.get(key, 0) + 1
    stats.times.append(received)
    stats.freezes.frame(received)
    number = framecode.read(y)
    if number is None:
        stats.unreadable += 1
        return
    record = sent.get(number)
    if record is None:
        stats.unknown += 1
        return
    if number in stats.seen:
        stats.repeats += 1
        return
    stats.seen.add(number)
    if number < stats.last_number:
        stats.out_of_order += 1
    stats.last_number = max(stats.last_number, number)
    stats.latencies.append((record.time, (received - record.time) * 1000.0))
    if arrived is not None:
        stats.arrival_latencies.append((arrived - record.time) * 1000.0)
    original = source.originals.get(record.index)
    if original is None:
        return
    if later is not None:
        later.keep(stats.name, number, y, record.index)
    else:
        score_frame(stats, number, y, original, gain)


def score_frame(
    stats: StreamStats, number: int, y: np.ndarray, original: np.ndarray, gain: GeneratorGain | None
) -> None:
    """PSNR-Y of returned frame ``number`` against its original; the generator's gain and VMAF's frames too."""
    full = to_full_size(y)
    box = framecode.region(FULL_W, FULL_H, margin=CODE_MARGIN)
    stats.psnr.append(psnr_y(full, original, box))
    stats.psnr_of[number] = stats.psnr[-1]
    if gain is not None:
        if stats.name == "raw":
            gain.sr_off(number, y, stats.psnr[-1], original, box)
        else:
            gain.sr_on(number, y, box)
    if stats.vmaf_bank is not None:
        keep_for_vmaf(stats.vmaf_bank, stats.name, number, full, original, box)


def keep_for_vmaf(
    bank: FrameBank, series: str, number: int, y: np.ndarray, original: np.ndarray, box: tuple[int, int, int, int]
) -> None:
    """Keep a 1280x720 version of frame ``number`` (and its original, once) for VMAF; the frame code's box
    is copied from the original, so it weighs in no figure."""
    if not bank.has("original", number):
        bank.add("original", number, original)
    x0, y0, x1, y1 = box
    shown = y.copy()
    shown[y0:y1, x0:x1] = original[y0:y1, x0:x1]
    bank.add(series, number, shown)


def to_full_size(y: np.ndarray) -> np.ndarray:
    """A returned luma plane at 1280x720: as is when it already is, else bicubic (SR-off is 2x)."""
    if y.shape == (FULL_H, FULL_W):
        return y
    return cv2.resize(y, (FULL_W, FULL_H), interpolation=cv2.INTER_CUBIC)


async def consume(
    track: MediaStreamTrack,
    stats: StreamStats,
    uplink: NumberedTrack,
    source: Source,
    watch: ArrivalWatch | None = None,
    gain: GeneratorGain | None = None,
    later: LaterScores | None = None,
) -> None:
    """Read a returned track until it ends, timing every frame as soon as it is out of the decoder."""
    while True:
        try:
            frame = cast(av.VideoFrame, await track.recv())  # the returned streams are video tracks
        except MediaStreamError:
            return
        received = time.monotonic()
        arrived = watch.arrival_of(frame.pts) if watch is not None else None
        measure_frame(stats, luma_plane(frame), received, uplink.sent, source, arrived, gain, later)


# --------------------------------------------------------------------------- signaling and the run


async def post_offer(http: aiohttp.ClientSession, url: str, sdp: str, sr: bool = True) -> dict:
    """POST the offer; the answer's JSON, or a ProbeError that says what went wrong."""
    endpoint = url.rstrip("/") + "/offer"
    try:
        async with http.post(endpoint, json={"sdp": sdp, "type": "offer", "sr": sr}) as resp:
            body = await resp.text()
            if resp.status >= 400:
                raise ProbeError(f"server answered {resp.status} to POST {endpoint}: {_error_text(body)}")
    except aiohttp.ClientConnectionError as exc:
        raise ProbeError(f"cannot reach the server at {url}: {exc}") from exc
    except asyncio.TimeoutError as exc:
        raise ProbeError(f"no answer from {endpoint} in time") from exc
    try:
        answer = json.loads(body)
        if answer.get("type") != "answer" or not answer.get("sdp"):
            raise ValueError("expected {'sdp', 'type': 'answer', 'id'}")
    except (ValueError, AttributeError) as exc:
        raise ProbeError(f"POST {endpoint} gave no usable answer ({exc}): {body[:200]!r}") from exc
    return answer


async def fetch_process(http: aiohttp.ClientSession, url: str) -> dict | None:
    """The server's ``process`` block of GET /stats (its CPU time), or None when it cannot be had."""
    try:
        async with http.get(url.rstrip("/") + "/stats") as resp:
            body = await resp.json(content_type=None) if resp.status < 400 else {}
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        log.warning("GET /stats failed: %s", exc)
        return None
    process = body.get("process") if isinstance(body, dict) else None
    return process if isinstance(process, dict) and "cpu_s" in process else None


async def fetch_session_stats(
    http: aiohttp.ClientSession, url: str, session_id: str | None, secret: str | None = None
) -> dict | None:
    """This session's entry in GET /stats (asked for by id, with its secret, as any client may), or None
    (logged) when it cannot be had."""
    headers = {"X-Session-Secret": secret} if secret else {}
    try:
        async with http.get(url.rstrip("/") + "/stats", params={"id": str(session_id)}, headers=headers) as resp:
            if resp.status >= 400:
                log.warning("GET /stats answered %d", resp.status)
                return None
            stats = await resp.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        log.warning("GET /stats failed: %s", exc)
        return None
    sessions = stats.get("sessions", []) if isinstance(stats, dict) else []
    for entry in sessions:
        if isinstance(entry, dict) and str(entry.get("id")) == str(session_id):
            return entry
    log.warning("session %s not in GET /stats (%d sessions listed)", session_id, len(sessions))
    return None


async def change_network(http: aiohttp.ClientSession, url: str, after_s: float, settings: dict) -> float | None:
    """POST /network ``settings`` after ``after_s`` seconds of sending; the monotonic time it took effect."""
    await asyncio.sleep(after_s)
    async with http.post(url.rstrip("/") + "/network", json=settings) as resp:
        body = await resp.text()
        if resp.status >= 400:
            log.error("POST /network %s answered %d: %s", settings, resp.status, _error_text(body))
            return None
    log.info("network changed to %s", settings)
    return time.monotonic()


async def network_report(http: aiohttp.ClientSession, url: str, pc: RTCPeerConnection, uplink: NumberedTrack) -> dict:
    """The cap the server announced, the bitrate the probe's encoder achieved, the server's link counters."""
    report: dict = {"cap_kbps": None, "sent_kbps": None, "packets_sent": None, "server": None}
    try:
        async with http.get(url.rstrip("/") + "/network") as resp:
            if resp.status < 400:
                report["server"] = await resp.json(content_type=None)
                report["cap_kbps"] = cap_of(report["server"])
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        log.warning("GET /network failed: %s", exc)
    sender = pc.getTransceivers()[0].sender
    for stat in (await sender.getStats()).values():
        if stat.type == "outbound-rtp":
            span = (uplink.last_time or 0.0) - (uplink.first_time or 0.0)
            report["packets_sent"] = stat.packetsSent
            if span > 0:
                report["sent_kbps"] = rounded(stat.bytesSent * 8 / span / 1000.0, 1)
    return report


def uplink_report(uplink: NumberedTrack) -> dict:
    """How the uplink was encoded: live, or replayed (and whether a keyframe request made it live)."""
    if not isinstance(uplink, ReplayTrack):
        return {"mode": "live"}
    span = len(uplink.encoded) / uplink.fps
    return {
        "mode": "replay",
        "encoded_kbps": rounded(sum(map(len, uplink.encoded)) * 8 / span / 1000.0, 1) if span else None,
        "live_from_s": rounded(uplink.live_from_s),
        "keyframe_requests": uplink.keyframe_requests,
        "live_frames": uplink.live_frames,
    }


def cap_of(network: object) -> float | None:
    """The link cap in a ``GET /network`` answer (kbps), or None without one."""
    settings = network.get("settings", network) if isinstance(network, dict) else {}
    return float(settings["kbps"]) if isinstance(settings, dict) and settings.get("kbps") else None


async def server_cap_kbps(url: str) -> float | None:
    """The link cap the server simulates (GET /network), or None without one or when it cannot be read."""
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url.rstrip("/") + "/network") as resp:
            body = await resp.json(content_type=None) if resp.status < 400 else {}
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        log.warning("GET /network failed: %s", exc)
        return None
    return cap_of(body)


async def delete_session(http: aiohttp.ClientSession, url: str, session_id: str, secret: str | None = None) -> None:
    """DELETE /sessions/{id} with the session's secret; failures are logged, never raised (this runs on the way out)."""
    headers = {"X-Session-Secret": secret} if secret else {}
    try:
        async with http.delete(f"{url.rstrip('/')}/sessions/{session_id}", headers=headers) as resp:
            if resp.status >= 400 and resp.status != 404:
                log.warning("DELETE /sessions/%s answered %d", session_id, resp.status)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.warning("DELETE /sessions/%s failed: %s", session_id, exc)


async def wait_connected(pc: RTCPeerConnection, timeout_s: float) -> None:
    """Wait for ICE+DTLS, or raise ProbeError when it fails or takes longer than ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while pc.connectionState != "connected":
        if pc.connectionState in ("failed", "closed"):
            raise ProbeError(f"peer connection {pc.connectionState} before it connected")
        if time.monotonic() > deadline:
            raise ProbeError(f"peer connection not connected after {timeout_s:g} s (state {pc.connectionState})")
        await asyncio.sleep(0.05)


async def wait_sent(pc: RTCPeerConnection, uplink: NumberedTrack, timeout_s: float) -> None:
    """Wait until the uplink has sent its frames; a lost connection or a stall is a ProbeError."""
    deadline = time.monotonic() + timeout_s
    while not uplink.done.is_set():
        if pc.connectionState in ("failed", "closed"):
            raise ProbeError(f"peer connection {pc.connectionState} after {uplink.count} frames were sent")
        if time.monotonic() > deadline:
            raise ProbeError(f"sending did not finish: {uplink.count} frames sent in {timeout_s:g} s")
        await asyncio.sleep(0.1)


@dataclass
class SenderLink:
    """What runs alongside the sender (``run_probe(alongside=...)``) may use: its HTTP session, the server,
    the offer's answer (``stream`` names its relay stream), and the uplink (when each numbered frame went out)."""

    http: aiohttp.ClientSession
    url: str
    answer: dict
    uplink: NumberedTrack
    pc: RTCPeerConnection


async def run_alongside(link: SenderLink, work: Awaitable[None]) -> None:
    """Run ``work`` while the sender sends; a lost connection or an uplink that ran out first is a ProbeError."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            if link.pc.connectionState in ("failed", "closed"):
                raise ProbeError(f"the sender's peer connection {link.pc.connectionState} while viewers watched")
            if link.uplink.done.is_set():
                raise ProbeError(f"the uplink ran out ({link.uplink.count} frames) before the viewers' phases ended")
            await asyncio.wait({task}, timeout=0.1)
        task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def log_progress(uplink: NumberedTrack, streams: dict[str, StreamStats]) -> None:
    """Once a second: frames sent and received, so a stalled run is visible while it runs."""
    while True:
        await asyncio.sleep(1.0)
        received = ", ".join(f"{name} {s.frames}" for name, s in streams.items())
        log.info("sent %d, received %s", uplink.count, received)


async def run_probe(
    url: str,
    seconds: float,
    source: str | Path | Source | None = None,
    fps: float = 30.0,
    psnr_every: int = 5,
    grace_s: float = 1.5,
    connect_timeout_s: float = 20.0,
    network_changes: Sequence[tuple[float, dict]] = (),
    sr: bool = True,
    vmaf: bool | None = False,
    vmaf_frames: int = 300,
    generator: Upscaler | None = None,
    replay: list[bytes] | None = None,
    alongside: Callable[[SenderLink], Awaitable[None]] | None = None,
    steady_pts: bool = False,
) -> ProbeReport:
    """Connect to the server, send numbered frames for ``seconds``, and measure both returned streams.

    ``sr``: False asks for SR off on the SR stream too (bicubic at the server), a control for the SR's effect.
    ``vmaf``: score both streams in VMAF and VMAF-NEG too (on up to ``vmaf_frames`` of the frames PSNR is
    measured on): True requires libvmaf (:class:`ProbeError` without it), None uses it when present.
    ``generator``: the server's model, run here on the SR-off frames as received (:class:`GeneratorGain`).
    ``replay``: the uplink's frames pre-encoded (:func:`~srtc.tools.probe_replay.pre_encode`), replayed
    instead of encoded live.
    ``alongside``: run this with the connected sender (:class:`SenderLink`) instead of sending for ``seconds``:
    the sender stops when it returns (``seconds`` then only bounds the uplink; the viewers' phases use it).
    ``steady_pts``: stamp the uplink's frames from their numbers (see ``NumberedTrack.steady_pts``).

    The peer connection is closed and the session deleted on every exit path.
    """
    src = source if isinstance(source, Source) else load_source(source, fps, psnr_every)
    uplink = NumberedTrack(src, fps, seconds) if replay is None else ReplayTrack(src, fps, seconds, replay)
    uplink.steady_pts = steady_pts
    streams = {name: StreamStats(name) for name in STREAM_INDEX.values()}
    gain = GeneratorGain(generator) if generator is not None else None
    bank = FrameBank(FULL_W, FULL_H, limit=vmaf_frames) if vmaf_available(vmaf) else None
    later = LaterScores()
    holders: list[StreamStats | GeneratorGain] = [*streams.values(), *([gain] if gain is not None else [])]
    for holder in holders:
        holder.vmaf_bank = bank
    pc = RTCPeerConnection()
    tasks: list[asyncio.Task] = []
    session_id: str | None = None
    secret: str | None = None  # the session's, from the answer: DELETE needs it
    server_session: dict | None = None
    network: dict | None = None
    resilient: list = []
    server_cpu: dict | None = None
    probe_cpu: dict | None = None

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        transceivers = pc.getTransceivers()
        index = next((i for i, t in enumerate(transceivers) if t.receiver.track is track), None)
        name = STREAM_INDEX.get(index) if index is not None else None
        if index is None or name is None:
            log.warning("unexpected %s track on transceiver %s, ignored", track.kind, index)
            return
        receiver = transceivers[index].receiver
        watch = ArrivalWatch(receiver)
        # Receive like a browser: each frame released at its last packet, losses NACKed, no stall.
        resilient.append(attach_resilient(receiver, rtt_ms=sender_rtt_ms(pc)))
        tasks.append(asyncio.ensure_future(consume(track, streams[name], uplink, src, watch, gain, later)))

    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        try:
            sending = pc.addTransceiver(uplink, direction="sendonly")
            if isinstance(uplink, ReplayTrack):
                follow_keyframe_requests(sending.sender, uplink)
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            answer = await post_offer(http, url, pc.localDescription.sdp, sr)
            session_id = str(answer["id"]) if answer.get("id") is not None else None
            secret = str(answer["secret"]) if answer.get("secret") is not None else None
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            except Exception as exc:  # aiortc raises ValueError, InvalidAccessError, ...
                raise ProbeError(f"the server's answer cannot be applied: {exc or type(exc).__name__}") from exc
            await wait_connected(pc, connect_timeout_s)
            log.info("connected (session %s), sending for %g s", session_id, seconds)
            cpu_before = await fetch_process(http, url)
            own_before = process_stats(1)
            tasks.append(asyncio.ensure_future(log_progress(uplink, streams)))
            changes = [asyncio.ensure_future(change_network(http, url, *c)) for c in network_changes]
            tasks += changes
            if alongside is not None:
                link = SenderLink(http, url, answer, uplink, pc)
                await run_alongside(link, alongside(link))
            else:
                await wait_sent(pc, uplink, seconds + connect_timeout_s)
            server_cpu = cpu_between(cpu_before, await fetch_process(http, url))
            probe_cpu = cpu_between(own_before, process_stats(1))
            await asyncio.sleep(grace_s)  # let frames still in flight arrive
            server_session = await fetch_session_stats(http, url, session_id, secret)
            network = await network_report(http, url, pc, uplink)
            network["changes"] = [
                {
                    "after_s": after_s,
                    "settings": settings,
                    "streams": {n: recovery_after(st.times, changed_at, fps) for n, st in streams.items()},
                }
                for (after_s, settings), task in zip(network_changes, changes)
                if task.done() and not task.cancelled() and (changed_at := task.result())
            ]
            network["uplink"] = uplink_report(uplink)
        finally:
            for receiver in resilient:
                receiver.stop()
            await pc.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if session_id is not None:
                await delete_session(http, url, session_id, secret)
    later.score(streams, src, gain)
    if bank is not None:
        await score_vmaf(bank, streams, gain)
    report = build_report(url, session_id, uplink, fps, streams, src, server_session, src.psnr_every, network)
    report.server_cpu = server_cpu
    report.probe_cpu = probe_cpu
    report.generator_gain = gain.report() if gain is not None else None
    report.paired = paired_psnr(streams, gain)
    return report


def paired_psnr(streams: dict[str, StreamStats], gain: GeneratorGain | None) -> dict:
    """Mean PSNR-Y of SR on, SR off (and the generator's own output) on the frames all of them have: under
    load the SR stream skips frames the SR-off stream has, so only paired means compare like with like."""
    series = {name: stats.psnr_of for name, stats in streams.items()}
    if gain is not None:
        series["generator"] = gain.psnr_of
    common = set.intersection(*(set(v) for v in series.values())) if series else set()
    out: dict = {"frames": len(common)}
    for name, values in series.items():
        out[name] = rounded(finite_mean([values[n] for n in common])) if common else None
    return out


def vmaf_available(wanted: bool | None) -> bool:
    """Whether to score VMAF: ``wanted`` True needs libvmaf (else :class:`ProbeError`), None takes it if present."""
    if wanted is False:
        return False
    try:
        ffmpeg_with_libvmaf()
    except VmafUnavailable as exc:
        if wanted:
            raise ProbeError(str(exc)) from exc
        log.info("VMAF not measured: %s", exc)
        return False
    return True


async def score_vmaf(bank: FrameBank, streams: dict[str, StreamStats], gain: GeneratorGain | None = None) -> None:
    """VMAF and VMAF-NEG of both streams, and of the generator's own outputs, on the frames all of them have
    (libvmaf in a worker thread)."""
    holders: dict[str, StreamStats | GeneratorGain] = {**streams, **({"generator": gain} if gain is not None else {})}
    try:
        log.info("VMAF of %s on %d common frames", ", ".join(holders), len(bank.common(["original", *holders])))
        scores = await asyncio.get_running_loop().run_in_executor(None, bank.score, "original", list(holders))
    except (RuntimeError, OSError, ValueError) as exc:
        log.warning("VMAF failed: %s", exc)
        scores = {}
    finally:
        bank.close()
    for name, holder in holders.items():
        holder.vmaf = scores.get(name)


async def run_clients(
    url: str,
    seconds: float,
    clients: int,
    source: str | Path | Source | None = None,
    fps: float = 30.0,
    psnr_every: int = 5,
    network_changes: Sequence[tuple[float, dict]] = (),
    vmaf: bool | None = False,
    generator: Upscaler | None = None,
    uplink: str = "live",
    uplink_kbps: float | None = None,
) -> list[ProbeReport]:
    """``clients`` probes at once against one server, sharing one pre-rendered source (so the probe's own
    CPU cost stays small), each with its own session; their reports in client order.

    ``uplink``: "live" encodes each client's uplink as it sends (aiortc, following the server's REMB), "replay"
    sends frames encoded once before the run at ``uplink_kbps`` (default: the REMB's 70% of the server's
    link cap, else 1000 kbps)."""
    src = source if isinstance(source, Source) else load_source(source, fps, psnr_every)
    replay = None
    if uplink == "replay":
        cap = await server_cap_kbps(url)
        kbps = uplink_kbps or (TARGET_SHARE * cap if cap else DEFAULT_REPLAY_KBPS)
        replay = await asyncio.get_running_loop().run_in_executor(None, pre_encode, src, fps, seconds, kbps)
    return list(
        await asyncio.gather(
            *(
                run_probe(
                    url,
                    seconds,
                    source=src,
                    fps=fps,
                    psnr_every=psnr_every,
                    network_changes=network_changes if i == 0 else (),
                    vmaf=vmaf,
                    generator=generator if i == 0 else None,
                    replay=replay,
                )
                for i in range(clients)
            )
        )
    )


# --------------------------------------------------------------------------- helpers and CLI


def _error_text(body: str) -> str:
    """The ``error`` of a JSON error body (the server's contract), else the body's start."""
    try:
        message = json.loads(body).get("error")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else body[:500].strip()


def open_generator(choice: str) -> Upscaler | None:
    """The model ``--model`` names (one thread: the probe shares the machine), or None for 'none'."""
    if choice == "none":
        return None
    from srtc.server.engine import ModelError, OnnxUpscaler
    from srtc.zoo import resolve

    try:
        path = resolve(None if choice == "default" else choice)
        return OnnxUpscaler(path, threads=1, name=path.stem)
    except (FileNotFoundError, KeyError, ModelError) as exc:
        raise ProbeError(f"--model {choice}: {exc}") from exc
