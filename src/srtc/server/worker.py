"""An SR worker: a client of a Janus VideoRoom that super-resolves the room's publishers back into the room.

For each publisher it takes, the worker subscribes to the publisher's feed, runs the server's receive
path on it (the resilient receiver, the fanout, the SR track with its governor, the return VP8 encoder:
:class:`srtc.server.pipeline.SrPipeline`) and publishes the 1280x720 result into the same room as a
publisher of its own, displayed as ``sr:<feed id of the original>``. Viewers subscribe to that feed
through Janus, as to any other: each stream is encoded once, whatever the number of viewers.

Who takes a publisher (several workers in one room): the display name is the claim everyone sees. A
worker claims a publisher no live worker has claimed by joining the room as ``sr:<its feed id>#<beat>``
(before it subscribes or encodes anything), and renames each of its claims every ``heartbeat_s`` with the
next beat. A claim whose beat has stood still for ``stale_s`` is dead: its worker died, and Janus, which
only drops the session after ``session_timeout``, still lists it. Every worker applies the rule
(:func:`plan`) to the room's participant list every ``reconcile_s``: a publisher with no live claim is
claimed again, and when several live claims hold one publisher, the lowest Janus feed id keeps it and the
other workers leave. docs/SFU.md has the rule, the failover time and how to run Janus for it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole

from .budget import ArrivalLog
from .config import ConfigError
from .decoder import guard_decoders
from .engine import ModelError, Upscaler
from .governor import GovernorPolicy
from .ice import bind_media
from .janus import JanusError, JanusHandle, JanusSession, JanusSessionLost, Jsep
from .memory import tune_allocator
from .pipeline import SrPipeline
from .receiver import ResilientReceiver, attach, sender_rtt_ms
from .registry import open_fast_model, open_model
from .return_rate import ReturnBitrates
from .session import UPLINK_POLICY

log = logging.getLogger(__name__)

VIDEOROOM = "janus.plugin.videoroom"
SR_PREFIX = "sr:"  # an SR feed's display name: this prefix and the feed id of the publisher it upscales
RETRY_S = 2.0  # after losing the Janus session (or never reaching Janus), before starting over


@dataclass(frozen=True)
class WorkerConfig:
    """Settings of one worker process, validated so a bad value fails at start."""

    janus_url: str = "http://127.0.0.1:8088/janus"
    room: int = 1234
    max_publishers: int = max(1, os.cpu_count() or 1)  # one stream per core: each takes about one
    host: str = "127.0.0.1"  # where GET /stats listens
    port: int = 8090  # 0: no stats listener
    # Where media binds (srtc.server.ice): "0.0.0.0" is every interface but loopback, as Janus gathers (its ICE
    # skips loopback interfaces, so a loopback-only worker could not reach it even on the same machine).
    media_host: str = "0.0.0.0"
    model: str | None = None
    fast_model: str = "auto"
    threads: int = max(1, min(4, os.cpu_count() or 2))
    sr_headroom: float = 0.85
    encoder_nice: int = 0
    feed_kbps: float = 4000.0  # the SR feed's encode rate, at most (Janus's REMB may lower it)
    keepalive_s: float = 3.0  # below Janus's session_timeout
    reconcile_s: float = 0.5  # how often the room's participants are read and the claim rule applied
    heartbeat_s: float = 1.0  # how often each claim's display name takes the next beat
    stale_s: float = 2.5  # a claim whose beat stood still this long is dead (its worker is)
    timeout_s: float = 10.0  # every Janus request and answer

    def __post_init__(self) -> None:
        parts = urlsplit(self.janus_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"janus_url must be Janus's HTTP API, e.g. http://127.0.0.1:8088/janus, got {self.janus_url!r}"
            )
        if not 1 <= self.room < 2**63:
            raise ConfigError(f"room must be a positive room number, got {self.room}")
        if not 1 <= self.max_publishers <= 64:
            raise ConfigError(f"max_publishers must be in 1..64, got {self.max_publishers}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if not 1 <= self.threads <= 64:
            raise ConfigError(f"threads must be in 1..64, got {self.threads}")
        if not 0.1 <= self.sr_headroom <= 1.0:
            raise ConfigError(f"sr_headroom must be in 0.1..1.0, got {self.sr_headroom}")
        if not 0 <= self.encoder_nice <= 19:
            raise ConfigError(f"encoder_nice must be in 0..19, got {self.encoder_nice}")
        if not 300.0 <= self.feed_kbps <= 100000.0:
            raise ConfigError(f"feed_kbps must be in 300..100000, got {self.feed_kbps}")
        if not 0.5 <= self.keepalive_s <= 55.0:
            raise ConfigError(f"keepalive_s must be in 0.5..55 (below Janus's session_timeout), got {self.keepalive_s}")
        if not 0.1 <= self.reconcile_s <= 30.0:
            raise ConfigError(f"reconcile_s must be in 0.1..30, got {self.reconcile_s}")
        if not 0.2 <= self.heartbeat_s <= 10.0:
            raise ConfigError(f"heartbeat_s must be in 0.2..10, got {self.heartbeat_s}")
        # a live claim's beat is seen to change at least every heartbeat_s + reconcile_s; slack beyond that
        # keeps a slow beat (a loaded machine, a slow Janus answer) from passing for a dead worker
        if not self.heartbeat_s + self.reconcile_s < self.stale_s <= 120.0:
            raise ConfigError(
                f"stale_s must exceed heartbeat_s + reconcile_s ({self.heartbeat_s + self.reconcile_s:g}) "
                f"and be at most 120, got {self.stale_s}"
            )
        if not 1.0 <= self.timeout_s <= 120.0:
            raise ConfigError(f"timeout_s must be in 1..120, got {self.timeout_s}")


# ------------------------------------------------------------------------------------------- the claim rule


@dataclass(frozen=True)
class Participant:
    """A participant of the room as ``listparticipants`` gives it."""

    id: int
    display: str
    publishing: bool


@dataclass(frozen=True)
class Plan:
    """What one worker does after reading the room: the publishers it claims, and those it gives up."""

    claim: tuple[int, ...]
    release: tuple[int, ...]


def sr_display(original: int, beat: int = 0) -> str:
    """A claim's display name: the publisher it upscales and its worker's heartbeat."""
    return f"{SR_PREFIX}{original}#{beat}"


def parse_claim(display: str) -> tuple[int, int] | None:
    """``(publisher, beat)`` of a claim's display name (``sr:<id>`` alone is beat 0), or None for no claim."""
    if not display.startswith(SR_PREFIX):
        return None
    target, _, beat = display[len(SR_PREFIX) :].partition("#")
    try:
        return int(target), int(beat or 0)
    except ValueError:
        return None


def sr_target(display: str) -> int | None:
    """The publisher an SR feed's display name claims, or None for a display that is no claim."""
    claim = parse_claim(display)
    return claim[0] if claim is not None else None


class ClaimBeats:
    """Which claims are dead, as one observer sees the room: a claim whose beat has not changed for ``stale_s``
    of this observer's readings. Only the observer's clock counts (workers' clocks need not agree); a claim
    first seen, or whose beat moved, is live from that reading on."""

    def __init__(self, stale_s: float) -> None:
        self.stale_s = stale_s
        self._seen: dict[int, tuple[int, float]] = {}  # claim's feed id -> (its beat, when that beat was first seen)

    def observe(self, participants: Iterable[Participant], now: float) -> frozenset[int]:
        """Record one reading of the room; the feed ids of the claims that are dead at ``now``."""
        seen: dict[int, tuple[int, float]] = {}
        dead = set()
        for p in participants:
            claim = parse_claim(p.display)
            if claim is None:
                continue
            beat = claim[1]
            last = self._seen.get(p.id)
            since = last[1] if last is not None and last[0] == beat else now
            seen[p.id] = (beat, since)
            if now - since >= self.stale_s:
                dead.add(p.id)
        self._seen = seen  # claims gone from the room are forgotten
        return frozenset(dead)


def live_claims(participants: Iterable[Participant], original: int, dead: frozenset[int]) -> list[int]:
    """The feed ids of the live claims on ``original``, lowest (the one that keeps it) first."""
    return sorted(p.id for p in participants if sr_target(p.display) == original and p.id not in dead)


def keeper(participants: Iterable[Participant], original: int, dead: frozenset[int]) -> int | None:
    """The SR feed a viewer of ``original`` watches: the lowest live claim that publishes, if any."""
    people = [p for p in participants if p.publishing]
    feeds = live_claims(people, original, dead)
    return feeds[0] if feeds else None


def plan(
    participants: Iterable[Participant],
    mine: dict[int, int | None],
    capacity: int,
    order: Callable[[int], int],
    dead: frozenset[int] = frozenset(),
) -> Plan:
    """The claim rule, for one worker.

    ``mine``: the publishers this worker holds, each with its SR feed's id (None while its join is under
    way); ``dead``: the claims whose beat stood still (:class:`ClaimBeats`), which count for nothing. A
    publisher is an *original* when it publishes and its display does not start with ``sr:``. A publisher
    this worker holds is given up when it is no longer an original in the room, or when another live claim
    on it has a lower feed id (the lower id keeps it). Originals without a live claim are claimed, as far
    as ``capacity`` allows, in ``order`` (which spreads workers over the publishers)."""
    people = list(participants)
    originals = {p.id for p in people if p.publishing and sr_target(p.display) is None}
    live: dict[int, list[int]] = {}
    for p in people:
        target = sr_target(p.display)
        if target is not None and p.id not in dead:
            live.setdefault(target, []).append(p.id)
    release = []
    for original, feed in mine.items():
        rivals = live.get(original, [])
        if original not in originals or (feed is not None and any(rival < feed for rival in rivals)):
            release.append(original)
    free = sorted((o for o in originals if o not in live and o not in mine), key=order)
    room = max(0, capacity - (len(mine) - len(release)))
    return Plan(tuple(free[:room]), tuple(sorted(release)))


def parse_participants(data: dict[str, Any]) -> list[Participant]:
    """``listparticipants``'s answer, read defensively (a malformed entry is skipped)."""
    out = []
    for entry in data.get("participants") or []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), int):
            out.append(Participant(entry["id"], str(entry.get("display") or ""), bool(entry.get("publisher"))))
    return out


# -------------------------------------------------------------------------------------------- one SR feed


class SrFeed:
    """One publisher taken: the subscription to it, the SR pipeline, and the SR feed published back."""

    def __init__(self, worker: Worker, original: int) -> None:
        self.worker = worker
        self.original = original
        self.feed_id: int | None = None  # the SR feed's Janus id, once joined: the claim
        self.display = sr_display(original)  # the claim's display name, with its latest beat
        self.state = "joining"
        self.failed = False  # Janus or a peer connection hung up: the worker gives it up
        self.started = time.monotonic()
        self.live_at: float | None = None
        self._publisher: JanusHandle | None = None
        self._subscriber: JanusHandle | None = None
        self.pub_pc = RTCPeerConnection()  # created first: the receiver takes its RTT from it
        self.sub_pc: RTCPeerConnection | None = None
        self.pipeline: SrPipeline | None = None
        self.receiver: ResilientReceiver | None = None
        self.arrivals = ArrivalLog()
        self._blackhole = MediaBlackhole()  # audio, if the original sends any: drained, not used
        self._stopped = False

    async def join(self) -> int:
        """The claim: join the room as the SR feed of the original; returns its feed id."""
        session = self.worker.janus
        self._publisher = await session.attach(VIDEOROOM)
        self._publisher.on_event = self._on_janus_event
        room = self.worker.config.room
        reply = await self._publisher.message(
            {"request": "join", "ptype": "publisher", "room": room, "display": self.display}
        )
        self.feed_id = int(reply.data["id"])
        log.info("claimed publisher %d as SR feed %d", self.original, self.feed_id)
        return self.feed_id

    async def beat(self, beat: int) -> None:
        """Rename the claim with the worker's next beat: the other workers see it is alive. Joined or not yet
        publishing alike (Janus takes a display change from any participant)."""
        if self._publisher is None or self.feed_id is None or self._stopped:
            return
        display = sr_display(self.original, beat)
        await self._publisher.message({"request": "configure", "display": display})
        self.display = display

    async def start(self) -> None:
        """Subscribe to the original, wire the SR pipeline, and publish its output."""
        config, worker = self.worker.config, self.worker
        self.state = "subscribing"
        self._subscriber = await worker.janus.attach(VIDEOROOM)
        self._subscriber.on_event = self._on_janus_event
        attached = await self._subscriber.message(
            {"request": "join", "ptype": "subscriber", "room": config.room, "streams": [{"feed": self.original}]}
        )
        if attached.jsep is None or attached.jsep.type != "offer":
            raise JanusError(f"subscribing to {self.original}: Janus sent no offer")
        self.sub_pc = RTCPeerConnection()
        self.sub_pc.on("connectionstatechange", self._on_pc_state)
        await self.sub_pc.setRemoteDescription(RTCSessionDescription(sdp=attached.jsep.sdp, type="offer"))
        video = _video_receiver(self.sub_pc)
        for transceiver in self.sub_pc.getTransceivers():
            if transceiver is not video:
                self._blackhole.addTrack(transceiver.receiver.track)
        # NACK within an RTT-tied budget, PLI and skip-to-keyframe, as a session's uplink; Janus answers the
        # NACKs from its own buffer, so the RTT that matters is the one to Janus, which the SR feed measures
        self.receiver = attach(video.receiver, rtt_ms=sender_rtt_ms(self.pub_pc), policy=UPLINK_POLICY,
                               arrivals=self.arrivals)  # fmt: skip
        self.pipeline = SrPipeline(
            video.receiver.track,
            worker.upscaler,
            name=str(self.original),
            fast=worker.fast,
            governor=GovernorPolicy(headroom=config.sr_headroom),
            arrivals=self.arrivals,
        )
        await self.sub_pc.setLocalDescription(await self.sub_pc.createAnswer())
        await self._subscriber.message({"request": "start", "room": config.room}, jsep=_jsep(self.sub_pc))
        await self._blackhole.start()
        self.state = "publishing"
        self.pub_pc.on("connectionstatechange", self._on_pc_state)
        sending = self.pub_pc.addTransceiver("video", direction="sendonly")
        self.pipeline.send_on(sending, ReturnBitrates(int(config.feed_kbps * 1000)), config.encoder_nice)
        await self.pub_pc.setLocalDescription(await self.pub_pc.createOffer())
        assert self._publisher is not None  # joined before it starts
        published = await self._publisher.message({"request": "publish"}, jsep=_jsep(self.pub_pc))
        if published.jsep is None:
            raise JanusError(f"publishing the SR feed of {self.original}: Janus sent no answer")
        await self.pub_pc.setRemoteDescription(RTCSessionDescription(sdp=published.jsep.sdp, type="answer"))
        self.state = "live"
        self.live_at = time.monotonic()
        log.info("SR feed %s of publisher %d is live (%.1f s after the claim)", self.feed_id, self.original,
                 self.live_at - self.started)  # fmt: skip

    def _on_janus_event(self, event: dict[str, Any]) -> None:
        if event.get("janus") in ("hangup", "detached"):
            log.warning("publisher %d: Janus hung up (%s)", self.original, event.get("reason") or event.get("janus"))
            self.failed = True

    async def _on_pc_state(self) -> None:
        for pc in (self.pub_pc, self.sub_pc):
            if pc is not None and pc.connectionState in ("failed", "closed") and not self._stopped:
                log.warning("publisher %d: a peer connection is %s", self.original, pc.connectionState)
                self.failed = True

    async def stop(self) -> None:
        """Give the publisher up: leave the room (the claim disappears) and let everything go. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.state = "stopped"
        for handle in (self._subscriber, self._publisher):
            if handle is not None:
                await handle.detach()
        if self.pipeline is not None:
            await self.pipeline.stop()
        await self._blackhole.stop()
        if self.receiver is not None:
            self.receiver.stop()
        for pc in (self.pub_pc, self.sub_pc):
            if pc is not None:
                await pc.close()
        log.info("gave up publisher %d (SR feed %s)", self.original, self.feed_id)

    def stats(self) -> dict:
        return {
            "original": self.original,
            "sr_feed": self.feed_id,
            "display": self.display,
            "state": self.state,
            "age_s": round(time.monotonic() - self.started, 1),
            # from the claim to the SR feed's publication answered by Janus
            "setup_s": round(self.live_at - self.started, 2) if self.live_at is not None else None,
            **(self.pipeline.stats() if self.pipeline is not None else {}),
            "receiver": self.receiver.stats() if self.receiver is not None else None,
        }


def _video_receiver(pc: RTCPeerConnection) -> RTCRtpTransceiver:
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "video":
            return transceiver
    raise JanusError("the subscription offers no video")


def _jsep(pc: RTCPeerConnection) -> Jsep:
    description = pc.localDescription
    return Jsep(description.type, description.sdp)


# ------------------------------------------------------------------------------------------------- the worker


class CoreMeter:
    """The cores this process uses: CPU time over wall time between two readings about ``window_s`` apart."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._last = (time.monotonic(), time.process_time())
        self.cores = 0.0

    def read(self) -> float:
        now, cpu = time.monotonic(), time.process_time()
        then, cpu_then = self._last
        if now - then >= self.window_s:
            self.cores = (cpu - cpu_then) / (now - then)
            self._last = (now, cpu)
        return self.cores


class Worker:
    """The worker's Janus session, its SR feeds, and the loop that applies the claim rule."""

    def __init__(self, config: WorkerConfig, upscaler: Upscaler, fast: Upscaler | None = None) -> None:
        self.config = config
        self.upscaler = upscaler
        self.fast = fast
        self.janus = JanusSession(config.janus_url, keepalive_s=config.keepalive_s, timeout_s=config.timeout_s)
        self.feeds: dict[int, SrFeed] = {}  # by the original's feed id
        self._tasks: dict[int, asyncio.Task[None]] = {}  # a feed's claim and start, while under way
        self._salt = random.getrandbits(63)  # this worker's order over the free publishers
        self.beats = ClaimBeats(config.stale_s)
        self.dead: frozenset[int] = frozenset()  # the claims found dead at the latest reading of the room
        self.beat = 0
        self.late_beats = 0  # heartbeats Janus did not confirm in time
        self._beating: set[asyncio.Task[None]] = set()  # heartbeats under way
        self.cores = CoreMeter()
        self.sessions = 0  # Janus sessions opened (more than one: Janus dropped one)
        self.taken = 0  # publishers taken so far
        self.released = 0
        self._control: JanusHandle | None = None
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Serve the room until :meth:`stop`: a lost Janus session drops every feed and starts over."""
        guard_decoders()
        while not self._stopping.is_set():
            try:
                await self._serve()
            except (JanusError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                log.warning("janus at %s: %s; starting over in %.0f s", self.config.janus_url, exc, RETRY_S)
            self._control = None
            await self._release_all()
            await self.janus.destroy()
            self.janus = JanusSession(self.config.janus_url, self.config.keepalive_s, self.config.timeout_s)
            if not self._stopping.is_set():
                try:
                    await asyncio.wait_for(self._stopping.wait(), RETRY_S)
                except asyncio.TimeoutError:
                    pass

    def stop(self) -> None:
        self._stopping.set()

    async def _serve(self) -> None:
        await self.janus.create()
        self.sessions += 1
        self._control = control = await self.janus.attach(VIDEOROOM)  # reads the room; never joins it
        log.info("worker on room %d: up to %d publishers", self.config.room, self.config.max_publishers)
        heart = asyncio.ensure_future(self._heartbeat())
        try:
            while not self._stopping.is_set():
                participants = await self._participants(control)
                mine = self._mine()
                await self._apply(plan(participants, mine, self.config.max_publishers, self._order, self.dead))
                try:
                    await asyncio.wait_for(self._stopping.wait(), self.config.reconcile_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            heart.cancel()
            await asyncio.gather(heart, return_exceptions=True)

    async def _heartbeat(self) -> None:
        """Every ``heartbeat_s``, rename every claim with the next beat, each on its own (one slow answer
        must not hold the others' beats back), keeping to the cadence."""
        period = self.config.heartbeat_s
        next_at = time.monotonic()
        while True:
            next_at += period
            self.beat += 1
            for feed in list(self.feeds.values()):
                task = asyncio.ensure_future(self._beat(feed, self.beat, period))
                self._beating.add(task)
                task.add_done_callback(self._beating.discard)
            next_at = max(next_at, time.monotonic())  # after a stall, beat at once, then on the cadence again
            await asyncio.sleep(next_at - time.monotonic())

    async def _beat(self, feed: SrFeed, beat: int, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(feed.beat(beat), max(timeout_s, 1.0))
        except (JanusError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            if feed.state == "stopped":
                return  # given up meanwhile: its handle is gone, and so is the claim
            self.late_beats += 1
            log.warning("publisher %d: heartbeat %d: %s", feed.original, beat, exc or type(exc).__name__)

    async def _participants(self, control: JanusHandle) -> list[Participant]:
        """One reading of the room; it also tells which claims' beats stood still too long."""
        data = await control.request({"request": "listparticipants", "room": self.config.room})
        participants = parse_participants(data)
        self.dead = self.beats.observe(participants, time.monotonic())
        return participants

    def _mine(self) -> dict[int, int | None]:
        return {original: feed.feed_id for original, feed in self.feeds.items()}

    def _order(self, original: int) -> int:
        return (original ^ self._salt) * 0x9E3779B97F4A7C15 % (1 << 64)

    async def _apply(self, decided: Plan) -> None:
        for original, feed in list(self.feeds.items()):
            if feed.failed and original not in decided.release:
                await self._release(original, "its stream failed")
        for original in decided.release:
            await self._release(original, "the publisher left, or a lower claim keeps it")
        for original in decided.claim:
            self.feeds[original] = SrFeed(self, original)
            self._tasks[original] = asyncio.ensure_future(self._take(self.feeds[original]))

    async def _take(self, feed: SrFeed) -> None:
        """Claim, check the claim holds, then start; a feed that fails is given up (the rule may retake it)."""
        try:
            feed_id = await feed.join()
            if self._control is not None:  # before any work: a claim that loses a race costs a join only
                participants = await self._participants(self._control)
                if any(rival < feed_id for rival in live_claims(participants, feed.original, self.dead)):
                    log.info("publisher %d: a lower live claim keeps it; leaving", feed.original)
                    feed.failed = True
                    return
            await feed.start()
            self.taken += 1
        except asyncio.CancelledError:
            raise
        except JanusSessionLost:
            feed.failed = True
        except Exception as exc:  # one publisher's failure must not stop the others
            log.warning("publisher %d: could not take it: %s", feed.original, exc)
            feed.failed = True
        finally:
            self._tasks.pop(feed.original, None)

    async def _release(self, original: int, why: str) -> None:
        feed = self.feeds.pop(original, None)
        task = self._tasks.pop(original, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if feed is not None:
            log.info("giving up publisher %d: %s", original, why)
            await feed.stop()
            self.released += 1

    async def _release_all(self) -> None:
        for original in list(self.feeds):
            await self._release(original, "the worker stops or lost its Janus session")

    def stats(self) -> dict:
        feeds = [feed.stats() for feed in self.feeds.values()]
        return {
            "worker": {
                "janus": self.config.janus_url,
                "room": self.config.room,
                "session": self.janus.id,
                "sessions": self.sessions,
                "max_publishers": self.config.max_publishers,
                "publishers": len(self.feeds),
                "live": sum(1 for feed in self.feeds.values() if feed.state == "live"),
                "full": len(self.feeds) >= self.config.max_publishers,
                "taken": self.taken,
                "released": self.released,
                "beat": self.beat,
                "late_beats": self.late_beats,
                "dead_claims": len(self.dead),
                "cores": round(self.cores.read(), 2),
                "cpu_count": os.cpu_count(),
                "model": self.upscaler.name,
                "fast_model": self.fast.name if self.fast is not None else None,
            },
            "streams": feeds,
        }


# ------------------------------------------------------------------------------------------- command line


WORKER = web.AppKey("worker", Worker)


def stats_app(worker: Worker) -> web.Application:
    """``GET /stats``: the worker's load (publishers taken, cores used) and each stream's figures."""
    app = web.Application()
    app[WORKER] = worker
    app.router.add_get("/stats", _stats)
    return app


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[WORKER].stats())


def parse_args(argv: list[str] | None = None) -> tuple[WorkerConfig, str]:
    defaults = WorkerConfig()
    parser = argparse.ArgumentParser(
        prog="python -m server.worker",
        description="Super-resolve the publishers of a Janus VideoRoom: subscribe to each publisher this worker "
        "takes, upscale it 2x and publish the result into the room as 'sr:<feed id>' (docs/SFU.md).",
    )
    parser.add_argument("--janus", default=defaults.janus_url, help="Janus's HTTP API (default %(default)s)")
    parser.add_argument("--room", type=int, default=defaults.room, help="the VideoRoom (default %(default)s)")
    parser.add_argument(
        "--max-publishers",
        type=int,
        default=defaults.max_publishers,
        help="publishers this worker takes at most, 1..64 (default: one per core, %(default)s)",
    )
    parser.add_argument("--host", default=defaults.host, help="where GET /stats listens (default %(default)s)")
    parser.add_argument("--port", type=int, default=defaults.port, help="its port, 0 for none (default %(default)s)")
    parser.add_argument(
        "--media-host",
        default=defaults.media_host,
        help="the address media binds on; 0.0.0.0: every interface but loopback, where Janus gathers too "
        "(default %(default)s)",
    )
    parser.add_argument("--model", default=None, help="a manifest name or an .onnx path (default: the manifest's)")
    parser.add_argument(
        "--fast-model", default=defaults.fast_model, help="the governor's faster model (default %(default)s)"
    )
    parser.add_argument(
        "--threads", type=int, default=defaults.threads, help="onnxruntime threads (default %(default)s)"
    )
    parser.add_argument(
        "--sr-headroom", type=float, default=defaults.sr_headroom, help="the governor's share of the frame interval"
    )
    parser.add_argument(
        "--encoder-nice",
        type=int,
        default=defaults.encoder_nice,
        help="encoder threads' nice levels below the SR stage",
    )
    parser.add_argument(
        "--feed-kbps",
        type=float,
        default=defaults.feed_kbps,
        help="the SR feed's encode rate at most (default %(default)s)",
    )
    parser.add_argument(
        "--keepalive-s",
        type=float,
        default=defaults.keepalive_s,
        help="Janus keepalive interval, below its session_timeout (default %(default)s)",
    )
    parser.add_argument(
        "--reconcile-s",
        type=float,
        default=defaults.reconcile_s,
        help="how often the room is read (default %(default)s)",
    )
    parser.add_argument(
        "--heartbeat-s",
        type=float,
        default=defaults.heartbeat_s,
        help="how often each claim's display takes the next beat (default %(default)s)",
    )
    parser.add_argument(
        "--stale-s",
        type=float,
        default=defaults.stale_s,
        help="a claim whose beat stood still this long is dead and its publisher is taken over; above "
        "heartbeat + reconcile (default %(default)s)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    try:
        config = WorkerConfig(
            janus_url=args.janus,
            room=args.room,
            max_publishers=args.max_publishers,
            host=args.host,
            port=args.port,
            media_host=args.media_host,
            model=args.model,
            fast_model=args.fast_model,
            threads=args.threads,
            sr_headroom=args.sr_headroom,
            encoder_nice=args.encoder_nice,
            feed_kbps=args.feed_kbps,
            keepalive_s=args.keepalive_s,
            reconcile_s=args.reconcile_s,
            heartbeat_s=args.heartbeat_s,
            stale_s=args.stale_s,
        )
    except ConfigError as exc:
        parser.error(str(exc))
    return config, args.log_level


async def serve(config: WorkerConfig, upscaler: Upscaler, fast: Upscaler | None) -> None:
    """Run a worker (and its stats listener) until SIGINT or SIGTERM, then leave the room cleanly."""
    bind_media(config.media_host)
    worker = Worker(config, upscaler, fast)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop)
    runner: web.AppRunner | None = None
    if config.port:
        runner = web.AppRunner(stats_app(worker))
        await runner.setup()
        await web.TCPSite(runner, config.host, config.port).start()
        log.info("stats on http://%s:%d/stats", config.host, config.port)
    try:
        await worker.run()
    finally:
        if runner is not None:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    config, level = parse_args(argv)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        logging.getLogger("aioice").setLevel(logging.WARNING)  # a line per ICE check otherwise
    tune_allocator()
    try:
        upscaler, info = open_model(config.model, config.threads)
        fast, _ = open_fast_model(config.fast_model, info, config.threads)
    except ModelError as exc:
        log.error("cannot start: %s", exc)
        return 2
    log.info("model %s (%s, %s)", info.name, info.kind, info.precision)
    try:
        asyncio.run(serve(config, upscaler, fast))
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc.strerror or exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
