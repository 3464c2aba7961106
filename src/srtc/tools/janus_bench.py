"""Publishers, SR workers and viewers through one Janus room: for each publisher, the frame rate of its SR feed
at the viewer (1280x720 frames decoded per second) and the latency from the publisher's send to the viewer's
decode; and the cores each worker used meanwhile.

    python -m srtc.tools.janus_bench --janus http://127.0.0.1:8088/janus --room 1234 --publishers 4 --seconds 30 \\
        --worker-stats http://127.0.0.1:8090/stats --worker-stats http://127.0.0.1:8091/stats

It starts no worker: run them first (``python -m server.worker``, one ``--port`` each). Each publisher is the
probe's numbered uplink (:class:`srtc.tools.probe_source.NumberedTrack`, real content, 640x360); each viewer
subscribes through Janus to the SR feed the claim rule keeps for its publisher (following it when it changes)
and reads every decoded frame's number from its pixels (:mod:`srtc.tools.framecode`). Publishers and viewers
share this process and its clock, so a latency is one clock's difference. docs/SFU.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import cast

import aiohttp
import aioice.ice
import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from srtc.server.config import ConfigError
from srtc.server.ice import bind_media
from srtc.server.janus import JanusHandle, JanusSession, Jsep
from srtc.server.worker import VIDEOROOM, ClaimBeats, WorkerConfig, keeper, parse_participants

from . import framecode
from .probe import luma_plane, wait_connected
from .probe_source import FULL_H, FULL_W, NumberedTrack, Source, load_source

log = logging.getLogger("server.janus_bench")

KEEPALIVE_S = 3.0
POLL_S = 0.3  # how often a viewer reads the room for its SR feed
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
STATS_EVERY_S = 2.0  # a worker's `cores` is its CPU over the last 2 s or more


@dataclass(frozen=True)
class BenchConfig:
    """One run's settings, validated before anything connects."""

    janus_url: str = "http://127.0.0.1:8088/janus"
    room: int = 1234
    publishers: int = 4
    seconds: float = 30.0  # the measured window
    warmup_s: float = 5.0  # after every SR feed is watched, before the window opens
    settle_s: float = 60.0  # at most this long for the workers to take every publisher
    fps: float = 30.0  # each publisher's frame rate
    source: str | None = None  # the probe's source (default: Big Buck Bunny)
    media_host: str | None = None  # default: the machine's first IPv4 address, where Janus's media is
    worker_stats: tuple[str, ...] = ()  # the workers' GET /stats URLs, for their cores

    def __post_init__(self) -> None:
        if not self.janus_url.startswith(("http://", "https://")):
            raise ConfigError(f"janus_url must be Janus's HTTP API, got {self.janus_url!r}")
        if not 1 <= self.publishers <= 16:
            raise ConfigError(f"publishers must be in 1..16, got {self.publishers}")
        if not 5.0 <= self.seconds <= 600.0:
            raise ConfigError(f"seconds must be in 5..600, got {self.seconds}")
        if not 0.0 <= self.warmup_s <= 120.0 or not 5.0 <= self.settle_s <= 600.0:
            raise ConfigError("warmup_s must be in 0..120 and settle_s in 5..600")
        if not 5.0 <= self.fps <= 60.0:
            raise ConfigError(f"fps must be in 5..60, got {self.fps}")
        # frame numbers wrap at framecode.MODULUS: the whole run must fit before they do
        if (self.settle_s + self.warmup_s + self.seconds) * self.fps >= framecode.MODULUS:
            raise ConfigError("the run is too long for the frame numbers at this fps")


# ------------------------------------------------------------------------------------------------ arithmetic


@dataclass(frozen=True)
class Seen:
    """A frame the viewer decoded: when, its size, the number drawn in it (None: unreadable), from which feed."""

    at: float
    width: int
    height: int
    number: int | None
    feed: int


@dataclass(frozen=True)
class FeedReport:
    """One publisher's SR feed as its viewer saw it over the window."""

    frames: int  # decoded in the window, any size
    fps_720: float  # decoded 1280x720 frames per second
    latency_p50_ms: float | None  # publisher's send -> viewer's decode, readable frames seen once
    latency_p95_ms: float | None
    unreadable: int
    out_of_order: int
    sent_fps: float  # what the publisher sent over the window
    feeds: int  # SR feeds watched (more than one: the feed changed)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile ``q`` (0..100) of ``values``, None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def summarize(seen: Sequence[Seen], sent: Mapping[int, float], start: float, end: float) -> FeedReport:
    """The viewer's frames within ``[start, end)`` against ``sent`` (frame number -> when it was sent)."""
    window = [frame for frame in seen if start <= frame.at < end]
    span = end - start
    latencies, numbers, out_of_order, last = [], set(), 0, -1
    for frame in window:
        if frame.number is None or frame.number in numbers or frame.number not in sent:
            continue
        numbers.add(frame.number)
        out_of_order += frame.number < last
        last = max(last, frame.number)
        latencies.append((frame.at - sent[frame.number]) * 1000.0)
    full = sum(1 for frame in window if (frame.width, frame.height) == (FULL_W, FULL_H))
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    return FeedReport(
        frames=len(window),
        fps_720=round(full / span, 1),
        latency_p50_ms=round(p50) if p50 is not None else None,
        latency_p95_ms=round(p95) if p95 is not None else None,
        unreadable=sum(1 for frame in window if frame.number is None),
        out_of_order=out_of_order,
        sent_fps=round(sum(1 for at in sent.values() if start <= at < end) / span, 1),
        feeds=len({frame.feed for frame in seen}),
    )


def mean_cores(samples: Sequence[float]) -> float | None:
    return round(sum(samples) / len(samples), 2) if samples else None


def busy_cores(before: tuple[int, int] | None, after: tuple[int, int] | None, seconds: float) -> float | None:
    """The machine's busy cores between two :func:`cpu_ticks` readings ``seconds`` apart."""
    if before is None or after is None or seconds <= 0:
        return None
    return round((after[0] - before[0]) / CLOCK_TICKS / seconds, 2)


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of the whole machine since boot (Linux's /proc/stat), None elsewhere."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


# ----------------------------------------------------------------------------------------- publishers, viewers


@dataclass
class Publisher:
    session: JanusSession
    pc: RTCPeerConnection
    feed: int
    track: NumberedTrack

    async def close(self) -> None:
        await self.pc.close()
        await self.session.destroy()


async def publish(config: BenchConfig, display: str, source: Source, duration_s: float) -> Publisher:
    """The probe's numbered uplink as a publisher of the room."""
    session = JanusSession(config.janus_url, keepalive_s=KEEPALIVE_S)
    await session.create()
    handle = await session.attach(VIDEOROOM)
    joined = await handle.message({"request": "join", "ptype": "publisher", "room": config.room, "display": display})
    pc = RTCPeerConnection()
    track = NumberedTrack(source, fps=config.fps, duration_s=duration_s)
    pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    reply = await handle.message({"request": "publish"}, jsep=Jsep("offer", pc.localDescription.sdp))
    if reply.jsep is None:
        raise RuntimeError(f"publisher {display}: Janus sent no answer")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.jsep.sdp, type="answer"))
    await wait_connected(pc, 20.0)
    return Publisher(session, pc, int(joined.data["id"]), track)


@dataclass
class Viewer:
    """Watches the SR feed the claim rule keeps for one publisher, subscribing again when it changes."""

    config: BenchConfig
    original: int
    seen: list[Seen] = field(default_factory=list)
    feeds: list[int] = field(default_factory=list)
    session: JanusSession | None = None
    handle: JanusHandle | None = None
    pc: RTCPeerConnection | None = None

    async def run(self) -> None:
        self.session = JanusSession(self.config.janus_url, keepalive_s=KEEPALIVE_S)
        await self.session.create()
        control = await self.session.attach(VIDEOROOM)
        beats = ClaimBeats(WorkerConfig().stale_s)
        while True:
            data = await control.request({"request": "listparticipants", "room": self.config.room})
            people = parse_participants(data)
            feed = keeper(people, self.original, beats.observe(people, time.monotonic()))
            if feed is not None and (not self.feeds or feed != self.feeds[-1]):
                await self._subscribe(feed)
            await asyncio.sleep(POLL_S)

    async def _subscribe(self, feed: int) -> None:
        assert self.session is not None  # run() created it
        if self.pc is not None:
            await self.pc.close()
        if self.handle is not None:
            await self.handle.detach()
        self.feeds.append(feed)
        log.info("viewer of %d: watching SR feed %d", self.original, feed)
        self.handle = await self.session.attach(VIDEOROOM)
        body = {"request": "join", "ptype": "subscriber", "room": self.config.room, "streams": [{"feed": feed}]}
        reply = await self.handle.message(body)
        if reply.jsep is None:
            raise RuntimeError(f"subscribing to {feed}: Janus sent no offer")
        self.pc = pc = RTCPeerConnection()
        pc.on("track", lambda track: asyncio.ensure_future(self._read(track, feed)))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.jsep.sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = Jsep("answer", pc.localDescription.sdp)
        await self.handle.message({"request": "start", "room": self.config.room}, jsep=answer)

    async def _read(self, track: MediaStreamTrack, feed: int) -> None:
        try:
            while True:
                frame = cast(av.VideoFrame, await track.recv())  # a subscription's video track
                at = time.monotonic()
                number = framecode.read(luma_plane(frame))
                self.seen.append(Seen(at, frame.width, frame.height, number, feed))
        except MediaStreamError:
            pass

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
        if self.session is not None:
            await self.session.destroy()


async def sample_workers(urls: Sequence[str], samples: dict[str, list[float]], last: dict[str, dict]) -> None:
    """Every STATS_EVERY_S, each worker's ``cores`` (kept) and its whole /stats (the latest kept)."""
    async with aiohttp.ClientSession() as http:
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            for url in urls:
                try:
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=2.0)) as response:
                        stats = await response.json()
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                    log.warning("worker stats %s: %s", url, exc)
                    continue
                samples.setdefault(url, []).append(float(stats["worker"]["cores"]))
                last[url] = stats


# ------------------------------------------------------------------------------------------------------ the run


async def wait_for_sr_feeds(config: BenchConfig, originals: Sequence[int]) -> dict[int, int]:
    """Until every publisher's SR feed publishes (or settle_s): publisher -> the feed the rule keeps."""
    session = JanusSession(config.janus_url, keepalive_s=KEEPALIVE_S)
    await session.create()
    try:
        control = await session.attach(VIDEOROOM)
        beats = ClaimBeats(WorkerConfig().stale_s)
        deadline = time.monotonic() + config.settle_s
        found: dict[int, int] = {}
        while time.monotonic() < deadline:
            people = parse_participants(await control.request({"request": "listparticipants", "room": config.room}))
            dead = beats.observe(people, time.monotonic())
            found = {o: f for o in originals if (f := keeper(people, o, dead)) is not None}
            if len(found) == len(originals):
                break
            await asyncio.sleep(0.5)
        return found
    finally:
        await session.destroy()


async def run_bench(config: BenchConfig) -> dict:
    """Publish, wait for the SR feeds, watch each, measure the window; the report as a dict."""
    source = load_source(config.source, fps=config.fps)
    duration = config.settle_s + config.warmup_s + config.seconds + 30.0
    publishers: list[Publisher] = []
    viewers: list[Viewer] = []
    tasks: list[asyncio.Task] = []
    samples: dict[str, list[float]] = {}
    last: dict[str, dict] = {}
    try:
        for index in range(config.publishers):
            publishers.append(await publish(config, f"bench-{index}", source, duration))
        log.info("%d publishers in room %d; waiting for their SR feeds", len(publishers), config.room)
        taken = await wait_for_sr_feeds(config, [p.feed for p in publishers])
        for publisher in publishers:
            viewers.append(Viewer(config, publisher.feed))
            tasks.append(asyncio.ensure_future(viewers[-1].run()))
        await asyncio.sleep(config.warmup_s)
        start, ticks, cpu = time.monotonic(), cpu_ticks(), time.process_time()
        tasks.append(asyncio.ensure_future(sample_workers(config.worker_stats, samples, last)))
        await asyncio.sleep(config.seconds)
        end = time.monotonic()
        own = round((time.process_time() - cpu) / (end - start), 2)
        machine = busy_cores(ticks, cpu_ticks(), end - start)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for viewer in viewers:
            await viewer.close()
        for publisher in publishers:
            await publisher.close()
    feeds = []
    for publisher, viewer in zip(publishers, viewers, strict=True):
        sent = {number: record.time for number, record in publisher.track.sent.items()}
        report = summarize(viewer.seen, sent, start, end)
        feeds.append({"publisher": publisher.feed, "sr_feed": taken.get(publisher.feed), **asdict(report)})
    workers = [worker_report(url, samples.get(url, []), last.get(url) or {}) for url in config.worker_stats]
    return {
        "config": asdict(config),
        "seconds": round(end - start, 1),
        "feeds": feeds,
        "workers": workers,
        "bench_cores": own,  # the publishers and viewers of this process
        "machine_cores": machine,  # everything on this machine: Janus, local workers, this process
        "cpu_count": os.cpu_count(),
    }


def worker_report(url: str, cores: Sequence[float], stats: dict) -> dict:
    """One worker over the window: its mean cores, and each stream's rate and governor mode at the end."""
    streams = stats.get("streams") or []
    return {
        "stats": url,
        "cores": mean_cores(cores),
        "publishers": (stats.get("worker") or {}).get("publishers"),
        "fps_out": [stream.get("fps_out") for stream in streams],
        "governor": [(stream.get("governor") or {}).get("mode") for stream in streams],
    }


def table(report: dict) -> str:
    """The report as a Markdown table, one row per publisher, then the workers."""
    rows = ["| publisher | SR feed fps at 1280x720 | sent fps | latency p50 / p95 (ms) | unreadable | out of order |",
            "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for i, feed in enumerate(report["feeds"]):
        latency = f"{feed['latency_p50_ms']} / {feed['latency_p95_ms']}"
        rows.append(f"| {i} | {feed['fps_720']} | {feed['sent_fps']} | {latency} | {feed['unreadable']} "
                    f"| {feed['out_of_order']} |")  # fmt: skip
    for worker in report["workers"]:
        rows.append(f"\nworker {worker['stats']}: {worker['cores']} cores, {worker['publishers']} publishers, "
                    f"fps_out {worker['fps_out']}, governor {worker['governor']}")  # fmt: skip
    rows.append(f"\nthis process (publishers, viewers): {report['bench_cores']} cores; the machine: "
                f"{report['machine_cores']} of {report['cpu_count']} cores busy")  # fmt: skip
    return "\n".join(rows)


def default_media_host() -> str:
    """The machine's first IPv4 address: Janus gathers no candidate on loopback (docs/SFU.md, Addresses)."""
    addresses = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
    if not addresses:
        raise ConfigError("no IPv4 address but loopback: Janus's media is not reachable; pass --media-host")
    return addresses[0]


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, bool]:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(prog="python -m srtc.tools.janus_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--janus", default=defaults.janus_url, help="Janus's HTTP API (default %(default)s)")
    parser.add_argument("--room", type=int, default=defaults.room)
    parser.add_argument("--publishers", type=int, default=defaults.publishers)
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="the measured window")
    parser.add_argument("--warmup-s", type=float, default=defaults.warmup_s)
    parser.add_argument("--settle-s", type=float, default=defaults.settle_s)
    parser.add_argument("--fps", type=float, default=defaults.fps, help="each publisher's frame rate")
    parser.add_argument("--source", default=None, help="the probe's source (default: Big Buck Bunny)")
    parser.add_argument("--media-host", default=None, help="where media binds (default: the first IPv4 address)")
    parser.add_argument("--worker-stats", action="append", default=[], help="a worker's GET /stats URL (repeat)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON rather than a table")
    args = parser.parse_args(argv)
    try:
        config = BenchConfig(
            janus_url=args.janus,
            room=args.room,
            publishers=args.publishers,
            seconds=args.seconds,
            warmup_s=args.warmup_s,
            settle_s=args.settle_s,
            fps=args.fps,
            source=args.source,
            media_host=args.media_host or default_media_host(),
            worker_stats=tuple(args.worker_stats),
        )
    except ConfigError as exc:
        parser.error(str(exc))
    return config, args.json


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)
    config, as_json = parse_args(argv)
    assert config.media_host is not None  # parse_args fills it
    bind_media(config.media_host)
    report = asyncio.run(run_bench(config))
    print(json.dumps(report, indent=2) if as_json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
