"""The probe's VIEWERS mode: one sender, and viewers watching its relayed stream, in phases.

    python -m server.probe --viewers 1 5 20 [--phase-seconds 20] [--kill-viewers 5] [--uplink replay] [--json]

The sender is the probe's own client, measured as always. Its stream (``"stream"`` of the offer's answer)
is then watched through ``POST /streams/{stream}/watch`` by 1 viewer, then by 5, then by 20 (each phase
adds viewers to the last), and optionally, in a last phase, ``--kill-viewers K`` of them vanish without a
word (``DELETE`` is never sent) while the others go on. Each phase measures, once the joins have settled,
the server's cores (two ``GET /stats`` readings), the probe's own cores, and per viewer: frames, fps,
latency from the sender's hand-off to the viewer, freezes, the time from its watch POST to its first SR-on
frame, PSNR-Y, and whether its SR-on bytes are those of viewer 0.

The probe shares two cores with the server, so its viewers are cheap:

* Viewer 0 is *full*: it decodes both streams, reads each frame's number (:mod:`srtc.tools.framecode`)
  and keeps frames for PSNR-Y, scored after the run (as the sender does).
* Every other viewer is *light*: :class:`LightReceiver` (the server's resilient receiver, whose assembled
  frames go to a listener and never to aiortc's decoder thread) gives each complete frame as it arrives;
  the probe logs its arrival, RTP timestamp, size and CRC32 (:class:`FrameLog`). After the run only its
  keyframes are decoded, each for the frame number drawn in it, and every frame's number follows from its
  RTP timestamp's distance to the last keyframe in frames (:func:`anchor_numbers`): the uplink stamps
  frames from their numbers (``steady_pts``), 90000 / fps apart, and the server keeps those timestamps on
  both streams. Viewer 0's frames are numbered the same way and checked against its decoded numbers.
* The SR-on encode is shared: every viewer should get the very bytes viewer 0 got. A light viewer's CRC32
  of frame *n* is compared with viewer 0's (``same_bytes``), and its PSNR-Y is viewer 0's over the frames
  whose bytes match: exact, not an estimate.

Latency is measured to the moment a frame is complete at the viewer (its last packet, or the
retransmission that completed it), for every viewer alike; viewer 0 also reports it after decoding.

The uplink: each joining viewer asks the sender for a keyframe of SR off, which a pre-encoded replay
cannot make; by default the first request makes it live for the rest of the run, as a browser
answers them (640x360 VP8 at the capped rate costs a few hundredths of a core here).
``--replay-keyframe-seconds S`` instead pre-encodes a keyframe every S seconds, where the replay
resumes, at the price of a keyframe burst every S seconds on a capped uplink.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import aiortc
import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from srtc.server.app import process_stats
from srtc.server.bandwidth import TARGET_SHARE
from srtc.server.engine import Upscaler
from srtc.server.jitter import AssembledFrame
from srtc.server.metrics import FreezeDetector, percentile
from srtc.server.receiver import _P, _REQUIRED, AIORTC_VERSION, ResilientReceiver, _Stream
from srtc.server.receiver import attach as attach_resilient

from . import framecode
from .probe import (
    DEFAULT_REPLAY_KBPS,
    LaterScores,
    ProbeError,
    SenderLink,
    _error_text,
    fetch_process,
    fetch_session_stats,
    luma_plane,
    measure_frame,
    run_probe,
    server_cap_kbps,
)
from .probe_replay import pre_encode
from .probe_report import StreamStats, ViewersReport, finite_mean, rounded
from .probe_source import CLOCK_RATE, NumberedTrack, Source, load_source

log = logging.getLogger("server.probe")

STREAMS = ("sr", "raw")  # the watch offer's m-lines, in order: 0 SR on, 1 SR off
PHASE_SECONDS = 20.0
SETTLE_S = 3.0  # after the joins (or the kills), before a phase's readings start
JOIN_TIMEOUT_S = 20.0  # a viewer not connected this long after its watch POST has failed to join
JOIN_EXPECTED_S = 5.0  # what a phase's joins are expected to take, when sizing the pre-encoded uplink
MAX_VIEWERS = 256
LIGHT_TICK_MS = 20.0  # a light viewer's resilient-receiver timer (NACK on silence), half the default's rate
KEEP_KEYFRAMES = 256  # per light stream: the keyframes kept to be decoded after the run
VIEWER0_SCORE_BYTES = 256 << 20  # viewer 0's frames kept for PSNR-Y (the sender keeps its own 512 MiB)
REPLAY_KEYFRAME_S = 0.0  # the replayed uplink's keyframe interval (0: live from the first request; see run_viewers)
KILL_MODES = ("close", "silent")
RTP_MODULUS = 1 << 32


# --------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class Phase:
    """One phase of the run: ``viewers`` watch it; ``join``/``kill``: the viewer indices that join or vanish
    at its start."""

    index: int  # 1-based
    viewers: int
    join: tuple[int, ...] = ()
    kill: tuple[int, ...] = ()

    @property
    def kind(self) -> str:
        return "kill" if self.kill else "join"


def check_viewer_counts(counts: Sequence[int], kill: int = 0) -> str | None:
    """What is wrong with ``--viewers counts`` and ``--kill-viewers kill``, or None when they can run."""
    if not counts:
        return "--viewers needs at least one count, e.g. --viewers 1 5 20"
    if any(n < 1 for n in counts):
        return f"--viewers counts must be positive integers, got {' '.join(map(str, counts))}"
    if any(b <= a for a, b in zip(counts, counts[1:])):
        return f"--viewers counts must increase (each phase adds viewers), got {' '.join(map(str, counts))}"
    if counts[-1] > MAX_VIEWERS:
        return f"--viewers: at most {MAX_VIEWERS} viewers, got {counts[-1]}"
    if kill < 0:
        return f"--kill-viewers must be positive, got {kill}"
    if kill and kill >= counts[-1]:
        return f"--kill-viewers must be less than the most viewers ({counts[-1]}): viewer 0 stays, got {kill}"
    return None


def plan_phases(counts: Sequence[int], kill: int = 0) -> list[Phase]:
    """The phases of ``--viewers counts [--kill-viewers kill]``: one per count (viewers join to make it), and
    a last one where the ``kill`` newest viewers vanish. ValueError when the counts cannot run."""
    problem = check_viewer_counts(counts, kill)
    if problem:
        raise ValueError(problem)
    phases: list[Phase] = []
    watching = 0
    for n in counts:
        phases.append(Phase(len(phases) + 1, n, join=tuple(range(watching, n))))
        watching = n
    if kill:
        phases.append(Phase(len(phases) + 1, watching - kill, kill=tuple(range(watching - kill, watching))))
    return phases


def uplink_seconds(phases: Sequence[Phase], phase_s: float, settle_s: float, join_s: float) -> float:
    """How long the sender must be able to send for the phases, when each phase's joins take ``join_s``."""
    return sum(join_s + settle_s + phase_s for _ in phases) + 5.0


def cores_between(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> float | None:
    """Cores a process used between two ``process`` readings (``cpu_s``, ``monotonic_s``), or None."""
    if not before or not after:
        return None
    wall = float(after["monotonic_s"]) - float(before["monotonic_s"])
    return (float(after["cpu_s"]) - float(before["cpu_s"])) / wall if wall > 0 else None


def machine_stats() -> dict[str, float] | None:
    """The whole machine's busy CPU time so far (``/proc/stat``: all but idle and iowait) in the ``cpu_s`` /
    ``monotonic_s`` form of :func:`cores_between`; None where there is no ``/proc/stat``. What the machine
    spent beyond the server and the probe is other load, which the phase's figures should be read with."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal
    return {"cpu_s": busy / os.sysconf("SC_CLK_TCK"), "monotonic_s": time.monotonic()}


def viewer_cost(phases: Sequence[tuple[int, float | None]]) -> dict[str, Any]:
    """The server's cost of a viewer from the join phases' ``(viewers, cores)``: the marginal cores per viewer
    from the fewest to the most viewers, and the ratio of the cores at the most to those at the fewest."""
    known = [(n, c) for n, c in phases if c is not None]
    out: dict[str, Any] = {"from_viewers": None, "to_viewers": None, "marginal_cores_per_viewer": None, "ratio": None}
    if len(known) < 2:
        return out
    (n0, c0), (n1, c1) = min(known), max(known)
    if n1 == n0:
        return out
    out.update(from_viewers=n0, to_viewers=n1, marginal_cores_per_viewer=rounded((c1 - c0) / (n1 - n0), 4))
    out["ratio"] = rounded(c1 / c0, 3) if c0 > 0 else None
    return out


# --------------------------------------------------------------------------- frames as they arrive


def signed32(delta: int) -> int:
    """An RTP timestamp difference taken modulo 2**32 as the nearest signed value (it wraps)."""
    return (delta + (1 << 31)) % RTP_MODULUS - (1 << 31)


@dataclass
class FrameLog:
    """Every frame one stream of one viewer got, as assembled from RTP and never decoded: when it was complete,
    its RTP timestamp, size and CRC32; and its keyframes' bytes (the newest ``keep``), to be decoded for their
    frame numbers after the run."""

    name: str
    keep: int = KEEP_KEYFRAMES
    codec: str | None = None
    arrivals: list[float] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    crcs: list[int] = field(default_factory=list)
    keyframes: dict[int, bytes] = field(default_factory=dict)  # frame index -> its bytes
    keyframe_count: int = 0
    numbers: list[int | None] = field(default_factory=list)  # after the run (see number_frames)
    picture: str | None = None  # "WxH" of its last keyframe, decoded after the run

    def add(self, codec: str, data: bytes, timestamp: int, keyframe: bool, now: float) -> None:
        self.codec = codec
        if keyframe:
            self.keyframe_count += 1
            if len(self.keyframes) >= self.keep:
                del self.keyframes[next(iter(self.keyframes))]
            self.keyframes[len(self.arrivals)] = bytes(data)
        self.arrivals.append(now)
        self.timestamps.append(timestamp)
        self.sizes.append(len(data))
        self.crcs.append(zlib.crc32(data))

    def listener(self, clock: Callable[[], float] = time.monotonic) -> Callable[[str, AssembledFrame], None]:
        """A :meth:`ResilientReceiver.on_frame` listener that logs here."""

        def on_frame(codec: str, frame: AssembledFrame) -> None:
            self.add(codec, frame.data, frame.timestamp, frame.keyframe, clock())

        return on_frame

    def __len__(self) -> int:
        return len(self.arrivals)


def anchor_numbers(timestamps: Sequence[int], anchors: Mapping[int, int], ticks_per_frame: float) -> list[int | None]:
    """Frame numbers of frames from their RTP ``timestamps`` (in arrival order) and ``anchors`` (frame index ->
    the number read from it): each frame counts on from the latest anchor at or before it (the first one for
    frames before any), by the timestamps' distance (modulo 2**32) in frames. None for every frame without
    any anchor. Numbers are framecode's, modulo 2**16."""
    if not anchors:
        return [None] * len(timestamps)
    order = sorted(anchors)
    out: list[int | None] = []
    at = 0
    for i, timestamp in enumerate(timestamps):
        while at + 1 < len(order) and order[at + 1] <= i:
            at += 1
        anchor = order[at]
        frames = round(signed32(timestamp - timestamps[anchor]) / ticks_per_frame)
        out.append((anchors[anchor] + frames) % framecode.MODULUS)
    return out


def read_keyframes(log_: FrameLog) -> dict[int, int]:
    """The frame numbers drawn in a log's kept keyframes, each decoded alone (frame index -> number); the
    pictures' size goes to ``picture``."""
    codec = {"VP8": "vp8", "H264": "h264"}.get((log_.codec or "").upper())
    if codec is None or not log_.keyframes:
        return {}
    decoder = cast(av.VideoCodecContext, av.CodecContext.create(codec, "r"))
    anchors: dict[int, int] = {}
    for index, data in sorted(log_.keyframes.items()):
        try:
            frames = decoder.decode(av.Packet(data))
        except av.FFmpegError as exc:
            log.debug("keyframe %d of %s does not decode: %s", index, log_.name, exc)
            continue
        for frame in frames:
            log_.picture = f"{frame.width}x{frame.height}"
            number = framecode.read(luma_plane(frame))
            if number is not None:
                anchors[index] = number
    return anchors


def same_bytes(crcs: Mapping[int, int], reference: Mapping[int, int]) -> tuple[int, int]:
    """``(frames with the same CRC32 as the reference's frame of that number, frames both have)``."""
    common = crcs.keys() & reference.keys()
    return sum(1 for n in common if crcs[n] == reference[n]), len(common)


# --------------------------------------------------------------------------- a light viewer's receiver


class LightReceiver(ResilientReceiver):
    """The resilient receiver for a viewer that decodes nothing: each complete frame goes to the listeners
    only, never to aiortc's decoder thread (which then idles), so a viewer costs reception, not decoding."""

    def _deliver(self, stream: _Stream, frame: AssembledFrame) -> None:
        stream.first_seen_ms.pop(frame.timestamp, None)
        for listener in self._listeners:
            try:
                listener(stream.codec.name, frame)
            except Exception:  # a logging bug must not stop reception
                log.exception("frame listener failed")


def attach_light(receiver: Any, tick_ms: float = LIGHT_TICK_MS) -> LightReceiver:
    """:func:`srtc.server.receiver.attach`, for a receiver whose frames are logged and not decoded."""
    if aiortc.__version__ != AIORTC_VERSION:
        raise RuntimeError(f"the light viewer relies on aiortc {AIORTC_VERSION} internals; {aiortc.__version__} found")
    absent = [name for name in _REQUIRED if not hasattr(receiver, name)]
    if absent:
        raise RuntimeError(f"not an aiortc {AIORTC_VERSION} RTCRtpReceiver: missing {', '.join(absent)}")
    if getattr(receiver, _P + "kind") != "video":
        raise ValueError("attach_light() is for video receivers")
    return LightReceiver(receiver, None, None, tick_ms, lambda: time.monotonic() * 1000.0)


# --------------------------------------------------------------------------- a viewer


class Viewer:
    """One viewer of the sender's stream: its own peer connection and the server's viewer id and secret."""

    def __init__(self, index: int, full: bool) -> None:
        self.index = index
        self.full = full
        self.pc: RTCPeerConnection | None = None
        self.id: str | None = None
        self.secret: str | None = None
        self.phase: int | None = None  # the phase it joined in
        self.posted_at: float | None = None
        self.connected_at: float | None = None
        self.killed_at: float | None = None
        self.error: str | None = None
        self.logs = {name: FrameLog(name) for name in STREAMS}
        # viewer 0 only: what decoding measured, and the number decoded from each frame (by RTP timestamp)
        self.stats = {name: StreamStats(name) for name in STREAMS}
        self.decoded: dict[str, dict[int, int]] = {name: {} for name in STREAMS}
        self.later = LaterScores(VIEWER0_SCORE_BYTES) if full else None
        self.server_stats: dict | None = None
        self.receiver_stats: dict[str, dict] = {}  # its resilient receivers' counters (losses, NACKs), at the end
        self._receivers: list[ResilientReceiver] = []
        self._tasks: list[asyncio.Task] = []

    @property
    def kind(self) -> str:
        return "full" if self.full else "light"

    async def join(
        self, http: aiohttp.ClientSession, url: str, stream: str, uplink: NumberedTrack, source: Source
    ) -> None:
        """Watch ``stream`` until connected; a failure is kept in ``error`` (and raised as ProbeError)."""
        pc = self.pc = RTCPeerConnection()
        try:
            for _ in STREAMS:
                pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            self.posted_at = time.monotonic()
            answer = await post_watch(http, url, stream, pc.localDescription.sdp)
            self.id, self.secret = str(answer.get("id")), str(answer.get("secret"))
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            except Exception as exc:  # aiortc raises ValueError, InvalidAccessError, ...
                raise ProbeError(f"the watch answer cannot be applied: {exc or type(exc).__name__}") from exc
            for name, transceiver in zip(STREAMS, pc.getTransceivers()):
                self._receive(name, transceiver.receiver, uplink, source)
            deadline = self.posted_at + JOIN_TIMEOUT_S
            while pc.connectionState != "connected":
                if pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
                    raise ProbeError(f"viewer {self.index}: peer connection {pc.connectionState} on joining")
                await asyncio.sleep(0.05)
            self.connected_at = time.monotonic()
        except ProbeError as exc:
            self.error = str(exc)
            raise

    def _receive(self, name: str, receiver: Any, uplink: NumberedTrack, source: Source) -> None:
        log_ = self.logs[name]
        if self.full:
            resilient: ResilientReceiver = attach_resilient(receiver)
            track = receiver.track
            self._tasks.append(asyncio.ensure_future(self._decode(name, track, receiver, uplink, source)))
        else:
            resilient = attach_light(receiver)
        resilient.on_frame(log_.listener())
        self._receivers.append(resilient)

    async def _decode(
        self, name: str, track: MediaStreamTrack, receiver: Any, uplink: NumberedTrack, source: Source
    ) -> None:
        """Viewer 0: decode every frame, time it and keep it for PSNR-Y as the sender does, and note the number
        decoded from each RTP timestamp (to check the light viewers' numbering against)."""
        stats, decoded = self.stats[name], self.decoded[name]
        mapper = getattr(receiver, _P + "timestamp_mapper")
        while True:
            try:
                frame = cast(av.VideoFrame, await track.recv())
            except MediaStreamError:
                return
            received = time.monotonic()
            y = luma_plane(frame)
            measure_frame(stats, y, received, uplink.sent, source, later=self.later)
            number = framecode.read(y)
            if number is not None and frame.pts is not None and mapper._origin is not None:
                decoded[(mapper._origin + frame.pts) % RTP_MODULUS] = number

    def _stop_receiving(self) -> None:
        if not self.receiver_stats:
            self.receiver_stats = {name: r.stats() for name, r in zip(STREAMS, self._receivers)}
        for receiver in self._receivers:
            receiver.stop()
        for task in self._tasks:
            task.cancel()

    async def vanish(self, mode: str = "close") -> None:
        """Gone without a word to the server's API (no DELETE). ``close``: the peer connection is closed (aiortc
        still says goodbye on the wire: RTCP BYE, DTLS close_notify), as a closed tab; ``silent``: nothing more
        leaves this viewer's sockets first, as a crashed browser or a lost link."""
        self.killed_at = time.monotonic()
        if self.pc is None:
            return
        if mode == "silent":
            for transceiver in self.pc.getTransceivers():
                connection = getattr(transceiver.receiver.transport.transport, "_connection", None)
                for protocol in getattr(connection, "_protocols", []):
                    transport = getattr(protocol, "transport", None)
                    if transport is not None:
                        transport.sendto = lambda *args, **kwargs: None  # datagrams go nowhere
        await self.pc.close()
        self._stop_receiving()  # after the close: stopped first, aiortc's own buffer would decode what still came

    async def leave(self, http: aiohttp.ClientSession, url: str) -> None:
        """The end of the run: the server's view of this viewer, then DELETE and close."""
        if self.id is not None and self.killed_at is None:
            self.server_stats = await viewer_request(http, "GET", url, self.id, self.secret)
            await viewer_request(http, "DELETE", url, self.id, self.secret)
        if self.pc is not None:
            await self.pc.close()
        self._stop_receiving()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def post_watch(http: aiohttp.ClientSession, url: str, stream: str, sdp: str) -> dict:
    """POST the watch offer; the answer's JSON, or a ProbeError that says what went wrong."""
    endpoint = f"{url.rstrip('/')}/streams/{stream}/watch"
    try:
        async with http.post(endpoint, json={"sdp": sdp, "type": "offer"}) as resp:
            body = await resp.text()
            if resp.status >= 400:
                raise ProbeError(f"server answered {resp.status} to POST {endpoint}: {_error_text(body)}")
    except aiohttp.ClientConnectionError as exc:
        raise ProbeError(f"cannot reach the server at {url}: {exc}") from exc
    except asyncio.TimeoutError as exc:
        raise ProbeError(f"no answer from {endpoint} in time") from exc
    try:
        answer = json.loads(body)
        if answer.get("type") != "answer" or not answer.get("sdp") or not answer.get("id"):
            raise ValueError("expected {'sdp', 'type': 'answer', 'id', 'secret', 'stream'}")
    except (ValueError, AttributeError) as exc:
        raise ProbeError(f"POST {endpoint} gave no usable answer ({exc}): {body[:200]!r}") from exc
    return cast(dict, answer)


async def viewer_request(
    http: aiohttp.ClientSession, method: str, url: str, viewer_id: str, secret: str | None
) -> dict | None:
    """GET or DELETE /viewers/{id} with the viewer's secret; its JSON, or None (logged) on failure."""
    headers = {"X-Session-Secret": secret} if secret else {}
    try:
        async with http.request(method, f"{url.rstrip('/')}/viewers/{viewer_id}", headers=headers) as resp:
            if resp.status >= 400:
                if resp.status != 404:
                    log.warning("%s /viewers/%s answered %d", method, viewer_id, resp.status)
                return None
            return cast(dict, await resp.json(content_type=None))
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        log.warning("%s /viewers/%s failed: %s", method, viewer_id, exc)
        return None


async def fetch_streams(http: aiohttp.ClientSession, url: str) -> dict | None:
    """GET /streams (the operator's listing over loopback), or None when it cannot be had."""
    try:
        async with http.get(url.rstrip("/") + "/streams") as resp:
            return cast(dict, await resp.json(content_type=None)) if resp.status < 400 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        log.warning("GET /streams failed: %s", exc)
        return None


def watching(listing: dict | None, stream: str) -> int | None:
    """How many viewers the server counts on ``stream`` in a GET /streams answer (None: not listed)."""
    for entry in (listing or {}).get("streams") or []:
        if isinstance(entry, dict) and entry.get("id") == stream:
            return int(entry.get("viewers") or 0)
    return None


# --------------------------------------------------------------------------- the phases


@dataclass
class PhaseRun:
    """What one phase measured while it ran: its window and the CPU readings at its ends."""

    phase: Phase
    started: float = 0.0  # the joins (or kills) began
    start: float = 0.0  # the readings' window: after the joins and the settling
    end: float = 0.0
    joins_s: float | None = None
    joined: int = 0
    failed: int = 0
    server: tuple[dict | None, dict | None] = (None, None)
    probe: tuple[dict | None, dict | None] = (None, None)
    machine: tuple[dict | None, dict | None] = (None, None)
    listed: int | None = None  # the server's count of the stream's viewers at the end
    listed_viewers_total: int | None = None
    server_dropped_after_s: float | None = None  # kill phase: when the server's count fell to the survivors'
    loop_lag_ms: list[float] = field(default_factory=list)  # the probe's event loop: how late its timer woke
    rate: dict[str, Any] | None = None  # the shared SR-on encode's rate at the end, and who set it


class LoopLag:
    """How late the probe's event loop runs a 20 ms timer: the probe keeps up while this stays small (its
    viewers' packets are timed on this loop, and aiortc's bitrate estimate, their REMB, reads that timing)."""

    PERIOD_S = 0.02

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (when, ms late)

    async def run(self) -> None:
        while True:
            due = time.monotonic() + self.PERIOD_S
            await asyncio.sleep(self.PERIOD_S)
            now = time.monotonic()
            self.samples.append((now, max(0.0, now - due) * 1000.0))

    def between(self, start: float, end: float) -> list[float]:
        return [ms for t, ms in self.samples if start <= t < end]


async def run_phases(
    link: SenderLink,
    stream: str,
    phases: Sequence[Phase],
    viewers: list[Viewer],
    runs: list[PhaseRun],
    source: Source,
    phase_s: float,
    settle_s: float,
    kill_mode: str,
) -> None:
    """Every phase in turn, while the sender sends; the viewers are left watching (see :func:`close_viewers`)."""
    lag = LoopLag()
    timer = asyncio.ensure_future(lag.run())
    try:
        for phase in phases:
            run = PhaseRun(phase, started=time.monotonic())
            runs.append(run)
            await run_phase(link, stream, run, viewers, source, phase_s, settle_s, kill_mode)
            run.loop_lag_ms = lag.between(run.start, run.end)
    finally:
        timer.cancel()
        await asyncio.gather(timer, return_exceptions=True)


async def run_phase(
    link: SenderLink,
    stream: str,
    run: PhaseRun,
    viewers: list[Viewer],
    source: Source,
    phase_s: float,
    settle_s: float,
    kill_mode: str,
) -> None:
    """One phase: its joins or kills, the settling, and the measured window with its readings."""
    http, url, phase = link.http, link.url, run.phase
    if phase.join:
        log.info("phase %d: %d viewer(s) join to make %d", phase.index, len(phase.join), phase.viewers)
        joining = [viewers[i] for i in phase.join]
        for viewer in joining:
            viewer.phase = phase.index
        results = await asyncio.gather(
            *(v.join(http, url, stream, link.uplink, source) for v in joining), return_exceptions=True
        )
        for viewer, result in zip(joining, results):
            if isinstance(result, BaseException):
                viewer.error = viewer.error or f"{type(result).__name__}: {result}"
                log.warning("viewer %d did not join: %s", viewer.index, viewer.error)
        run.joined = sum(1 for v in joining if v.error is None)
        run.failed = len(joining) - run.joined
    for i in phase.kill:
        log.info("phase %d: viewer %d vanishes (%s)", phase.index, i, kill_mode)
        await viewers[i].vanish(kill_mode)
    run.joins_s = time.monotonic() - run.started
    survivors = sum(1 for v in viewers[: phase.viewers] if v.error is None)
    if phase.kill:
        await watch_count(http, url, stream, survivors, run, settle_s)
    else:
        await asyncio.sleep(settle_s)
    run.server = (await fetch_process(http, url), None)
    run.probe = (process_stats(1), None)
    run.machine = (machine_stats(), None)
    run.start = time.monotonic()
    log.info("phase %d: %d viewer(s), measuring for %g s", phase.index, phase.viewers, phase_s)
    if phase.kill and run.server_dropped_after_s is None:
        await watch_count(http, url, stream, survivors, run, phase_s)
        await asyncio.sleep(max(0.0, run.start + phase_s - time.monotonic()))
    else:
        await asyncio.sleep(phase_s)
    run.server = (run.server[0], await fetch_process(http, url))
    run.probe = (run.probe[0], process_stats(1))
    run.machine = (run.machine[0], machine_stats())
    run.end = time.monotonic()
    listing = await fetch_streams(http, url)
    run.listed = watching(listing, stream)
    run.listed_viewers_total = (listing or {}).get("viewers")
    session = await fetch_session_stats(http, url, link.answer.get("id"), link.answer.get("secret"))
    run.rate = encode_rate(session)


def encode_rate(session: dict | None) -> dict[str, Any] | None:
    """The shared SR-on encode's rate from the sender's ``/stats`` entry, and what set it: the sender's own
    REMB (``congested``) or the viewers' (``relay_cap_kbps``, ``limiting_viewers``)."""
    if not session:
        return None
    sr = (session.get("return_bitrate") or {}).get("sr") or {}
    relay = session.get("relay") or {}
    return {
        "target_kbps": sr.get("target_kbps"),
        "sent_kbps": sr.get("sent_kbps"),
        "sender_congested": sr.get("congested"),
        "relay_cap_kbps": relay.get("cap_kbps"),
        "limiting_viewers": relay.get("limiting_viewers"),
    }


async def watch_count(
    http: aiohttp.ClientSession, url: str, stream: str, wanted: int, run: PhaseRun, for_s: float
) -> None:
    """Poll GET /streams for up to ``for_s`` until the server counts ``wanted`` viewers on the stream; when it
    does, ``run.server_dropped_after_s`` says how long after the kills that was."""
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        count = watching(await fetch_streams(http, url), stream)
        if count is not None and count <= wanted:
            run.server_dropped_after_s = time.monotonic() - run.started
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


async def close_viewers(http: aiohttp.ClientSession, url: str, viewers: Sequence[Viewer]) -> None:
    await asyncio.gather(*(v.leave(http, url) for v in viewers if v.pc is not None), return_exceptions=True)


# --------------------------------------------------------------------------- after the run


def number_frames(viewer: Viewer, ticks_per_frame: float) -> dict[str, dict[str, int]]:
    """Number every logged frame of ``viewer`` from its keyframes and RTP timestamps; on viewer 0 check those
    numbers against the decoded ones (and then use the decoded ones). The check's counts by stream."""
    checks: dict[str, dict[str, int]] = {}
    for name, log_ in viewer.logs.items():
        anchors = read_keyframes(log_)
        log_.numbers = anchor_numbers(log_.timestamps, anchors, ticks_per_frame)
        check = {"keyframes": log_.keyframe_count, "anchors": len(anchors), "checked": 0, "mismatches": 0}
        decoded = viewer.decoded[name]
        if viewer.full:
            for i, timestamp in enumerate(log_.timestamps):
                truth = decoded.get(timestamp)
                if truth is None:
                    continue
                check["checked"] += 1
                check["mismatches"] += log_.numbers[i] != truth
                log_.numbers[i] = truth
        checks[name] = check
    return checks


def ticks_per_frame_seen(viewer: Viewer, name: str) -> float | None:
    """The median RTP-timestamp step per frame number between viewer 0's consecutive decoded frames."""
    pairs = sorted((n, ts) for ts, n in viewer.decoded[name].items())
    steps = [signed32(t1 - t0) / (n1 - n0) for (n0, t0), (n1, t1) in zip(pairs, pairs[1:]) if 0 < n1 - n0 <= 10]
    return float(statistics.median(steps)) if steps else None


def crcs_by_number(log_: FrameLog) -> dict[int, int]:
    return {n: crc for n, crc in zip(log_.numbers, log_.crcs) if n is not None}


def stream_row(
    log_: FrameLog,
    window: tuple[float, float],
    sent: Mapping[int, Any],
    reference: Mapping[int, int] | None,
    psnr_of: Mapping[int, float],
) -> dict[str, Any]:
    """One stream of one viewer over a phase's window: frames, fps, latency, freezes, same bytes, PSNR-Y.

    ``reference``: viewer 0's CRC32 by frame number (None for viewer 0 itself); ``psnr_of``: viewer 0's PSNR-Y
    by frame number, taken for this viewer's frames with the same bytes (all of viewer 0's own)."""
    start, end = window
    index = [i for i, t in enumerate(log_.arrivals) if start <= t < end]
    freezes = FreezeDetector()
    for i in index:
        freezes.frame(log_.arrivals[i])
    latencies, numbered, matched, compared, scores = [], 0, 0, 0, []
    for i in index:
        number = log_.numbers[i] if i < len(log_.numbers) else None
        if number is None or (record := sent.get(number)) is None:
            continue
        numbered += 1
        latencies.append((log_.arrivals[i] - record.time) * 1000.0)
        same = True
        if reference is not None and number in reference:
            compared += 1
            same = reference[number] == log_.crcs[i]
            matched += same
        elif reference is not None:
            same = False  # viewer 0 did not get this frame: its bytes cannot be vouched for
        if same and number in psnr_of:
            scores.append(psnr_of[number])
    seconds = end - start
    return {
        "frames": len(index),
        "size": log_.picture,
        "numbered": numbered,
        "fps": rounded(len(index) / seconds) if seconds > 0 else None,
        "kbps": rounded(sum(log_.sizes[i] for i in index) * 8 / seconds / 1000.0, 1) if seconds > 0 else None,
        "latency_ms": {"p50": rounded(percentile(latencies, 50)), "p95": rounded(percentile(latencies, 95))},
        "freezes": freezes.stats(),
        "same_bytes": rounded(matched / compared, 4) if compared else None,
        "same_bytes_frames": compared,
        "psnr_y": rounded(finite_mean(scores)),
        "psnr_frames": len(scores),
    }


def viewer_rows(
    viewers: Sequence[Viewer], run: PhaseRun, sent: Mapping[int, Any], reference: Viewer | None
) -> list[dict[str, Any]]:
    """Every viewer that watched during the phase (joined before or in it, not killed before it)."""
    rows = []
    references = {name: crcs_by_number(reference.logs[name]) for name in STREAMS} if reference else {}
    psnr = {name: reference.stats[name].psnr_of for name in STREAMS} if reference else {}
    for viewer in viewers:
        if viewer.phase is None or viewer.phase > run.phase.index:
            continue
        if viewer.killed_at is not None and viewer.killed_at < run.start:
            continue
        row: dict[str, Any] = {"viewer": viewer.index, "kind": viewer.kind, "id": viewer.id, "error": viewer.error}
        row.update(join_figures(viewer))
        for name in STREAMS:
            is_reference = reference is viewer
            row[name] = stream_row(
                viewer.logs[name],
                (run.start, run.end),
                sent,
                None if is_reference else references.get(name),
                psnr.get(name, {}),
            )
            if is_reference:  # after decoding too, as the sender measures its own streams
                row[name]["decoded_latency_ms"] = decoded_latency(viewer.stats[name], run)
        rows.append(row)
    return rows


def join_figures(viewer: Viewer) -> dict[str, Any]:
    """From the watch POST to the first SR-on frame (``join_ms``) and to the first SR-off frame."""
    out: dict[str, Any] = {"joined_phase": viewer.phase}
    for name, key in (("sr", "join_ms"), ("raw", "join_raw_ms")):
        arrivals = viewer.logs[name].arrivals
        first = arrivals[0] if arrivals else None
        ok = first is not None and viewer.posted_at is not None
        out[key] = rounded((first - viewer.posted_at) * 1000.0) if ok else None  # type: ignore[operator]
    return out


def decoded_latency(stats: StreamStats, run: PhaseRun) -> dict[str, float | None]:
    """Viewer 0's latency after decoding, over the frames sent in the phase's window."""
    lat = [ms for sent_at, ms in stats.latencies if run.start <= sent_at + ms / 1000.0 < run.end]
    return {"p50": rounded(percentile(lat, 50)), "p95": rounded(percentile(lat, 95))}


def light_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The light viewers of a phase in a few figures: medians and the worst of each."""
    light = [r for r in rows if r["kind"] == "light" and r.get("error") is None]
    if not light:
        return None
    out: dict[str, Any] = {"viewers": len(light)}
    for name in STREAMS:
        fps = [r[name]["fps"] for r in light if r[name]["fps"] is not None]
        p95 = [r[name]["latency_ms"]["p95"] for r in light if r[name]["latency_ms"]["p95"] is not None]
        same = [r[name]["same_bytes"] for r in light if r[name]["same_bytes"] is not None]
        freezes = [r[name]["freezes"]["freezeCount"] for r in light]
        out[name] = {
            "fps_median": rounded(percentile(fps, 50)),
            "fps_min": rounded(min(fps)) if fps else None,
            "latency_p95_median_ms": rounded(percentile(p95, 50)),
            "latency_p95_max_ms": rounded(max(p95)) if p95 else None,
            "freezes_total": sum(freezes),
            "same_bytes_min": min(same) if same else None,
            "no_frames": sum(1 for r in light if not r[name]["frames"]),
        }
    joins = [r["join_ms"] for r in light if r["join_ms"] is not None]
    out["join_ms_median"] = rounded(percentile(joins, 50))
    out["join_ms_max"] = rounded(max(joins)) if joins else None
    return out


def phase_report(run: PhaseRun, viewers: Sequence[Viewer], sent: Mapping[int, Any]) -> dict[str, Any]:
    reference = viewers[0] if viewers and viewers[0].error is None and viewers[0].phase is not None else None
    rows = viewer_rows(viewers, run, sent, reference)
    server, probe, machine = cores_between(*run.server), cores_between(*run.probe), cores_between(*run.machine)
    others = machine - server - probe if machine is not None and server is not None and probe is not None else None
    return {
        "phase": run.phase.index,
        "kind": run.phase.kind,
        "viewers": run.phase.viewers,
        "joined": run.joined,
        "failed": run.failed,
        "killed": len(run.phase.kill),
        "joins_s": rounded(run.joins_s),
        "seconds": rounded(run.end - run.start),
        "server_cores": rounded(server, 3),
        "server_viewers_counted": (run.server[1] or {}).get("viewers"),
        "probe_cores": rounded(probe, 3),
        "machine_cores": rounded(machine, 3),  # the whole machine's, from /proc/stat
        "other_cores": rounded(others, 3),  # the machine's less the server's and the probe's (when both are here)
        "server_listed_viewers": run.listed,
        "server_dropped_after_s": rounded(run.server_dropped_after_s),
        "sr_encode": run.rate,
        "probe_loop_lag_ms": {
            "p50": rounded(percentile(run.loop_lag_ms, 50)),
            "p95": rounded(percentile(run.loop_lag_ms, 95)),
            "max": rounded(max(run.loop_lag_ms)) if run.loop_lag_ms else None,
        },
        "per_viewer": rows,
        "light": light_summary(rows),
    }


# --------------------------------------------------------------------------- the run


async def run_viewers(
    url: str,
    counts: Sequence[int],
    phase_s: float = PHASE_SECONDS,
    settle_s: float = SETTLE_S,
    kill: int = 0,
    kill_mode: str = "close",
    source: str | Path | Source | None = None,
    fps: float = 30.0,
    psnr_every: int = 5,
    uplink: str = "live",
    uplink_kbps: float | None = None,
    network_changes: Sequence[tuple[float, dict]] = (),
    vmaf: bool | None = False,
    generator: Upscaler | None = None,
    replay_keyframe_s: float = REPLAY_KEYFRAME_S,
) -> ViewersReport:
    """One sender and its viewers in phases (see the module docstring); the sender's report and the phases'.

    ``replay_keyframe_s``: the replayed uplink's keyframe interval, where it resumes after a keyframe request
    made it live (0: one keyframe, so the first request makes it live for the rest of the run)."""
    phases = plan_phases(counts, kill)
    if kill_mode not in KILL_MODES:
        raise ValueError(f"kill_mode must be one of {', '.join(KILL_MODES)}")
    src = source if isinstance(source, Source) else load_source(source, fps, psnr_every)
    seconds = uplink_seconds(phases, phase_s, settle_s, JOIN_TIMEOUT_S)
    replay = None
    if uplink == "replay":
        cap = await server_cap_kbps(url)
        kbps = uplink_kbps or (TARGET_SHARE * cap if cap else DEFAULT_REPLAY_KBPS)
        keyframe_every = max(1, round(replay_keyframe_s * fps)) if replay_keyframe_s > 0 else 0
        replay = await asyncio.get_running_loop().run_in_executor(
            None, pre_encode, src, fps, seconds, kbps, keyframe_every
        )
    viewers = [Viewer(i, full=i == 0) for i in range(counts[-1])]
    runs: list[PhaseRun] = []
    context: dict[str, Any] = {}

    async def alongside(link: SenderLink) -> None:
        stream = link.answer.get("stream")
        if not stream:
            raise ProbeError("the server's answer to POST /offer names no stream to watch (no relay?)")
        context.update(stream=str(stream), sent=link.uplink.sent)
        try:
            await run_phases(link, str(stream), phases, viewers, runs, src, phase_s, settle_s, kill_mode)
        finally:
            await close_viewers(link.http, link.url, viewers)

    sender = await run_probe(
        url,
        seconds,
        source=src,
        fps=fps,
        psnr_every=psnr_every,
        network_changes=network_changes,
        vmaf=vmaf,
        generator=generator,
        replay=replay,
        alongside=alongside,
        steady_pts=True,
    )
    return analyse(url, context.get("stream"), sender, viewers, runs, src, fps, phase_s, settle_s, kill_mode,
                   context.get("sent", {}))  # fmt: skip


def analyse(
    url: str,
    stream: str | None,
    sender: Any,
    viewers: Sequence[Viewer],
    runs: Sequence[PhaseRun],
    source: Source,
    fps: float,
    phase_s: float,
    settle_s: float,
    kill_mode: str,
    sent: Mapping[int, Any],
) -> ViewersReport:
    """Number the viewers' frames, score viewer 0's, and put the phases' figures together."""
    ticks = CLOCK_RATE / fps
    checks: dict[str, dict[str, int]] = {name: {"checked": 0, "mismatches": 0} for name in STREAMS}
    for viewer in viewers:
        for name, check in number_frames(viewer, ticks).items():
            if viewer.full:
                checks[name] = check
    if viewers and viewers[0].later is not None:
        viewers[0].later.score(viewers[0].stats, source, None)
    phases = [phase_report(run, viewers, sent) for run in runs]
    cost = viewer_cost([(p["viewers"], p["server_cores"]) for p in phases if p["kind"] == "join"])
    probe_cost = viewer_cost([(p["viewers"], p["probe_cores"]) for p in phases if p["kind"] == "join"])
    full = viewers[0] if viewers else None
    anchoring = {
        "ticks_per_frame": ticks,
        **{
            name: {
                **checks[name],
                "ticks_per_frame_seen": rounded(ticks_per_frame_seen(full, name)) if full is not None else None,
            }
            for name in STREAMS
        },
    }
    return ViewersReport(
        url=url,
        stream=stream,
        counts=[r.phase.viewers for r in runs if r.phase.kind == "join"],
        phase_seconds=phase_s,
        settle_seconds=settle_s,
        kill=sum(len(r.phase.kill) for r in runs),
        kill_mode=kill_mode,
        phases=phases,
        viewers=[
            {
                "viewer": v.index,
                "kind": v.kind,
                "id": v.id,
                "joined_phase": v.phase,
                "error": v.error,
                "killed": v.killed_at is not None,
                "frames": {name: len(v.logs[name]) for name in STREAMS},
                "keyframes": {name: v.logs[name].keyframe_count for name in STREAMS},
                **join_figures(v),
                "server": v.server_stats,
                "receiver": v.receiver_stats,
            }
            for v in viewers
            if v.phase is not None
        ],
        server_cost=cost,
        probe_cost=probe_cost,
        anchoring=anchoring,
        viewer0={name: full.stats[name].report() for name in STREAMS} if full is not None else None,
        sender=sender.to_dict(),
        sender_text=sender.to_text(),
    )
