"""SR workers as clients of Janus: the claim rule alone, then Debian's Janus on loopback with real publishers,
workers and a viewer (one worker end to end; two workers sharing a room; one killed and its publisher retaken)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import aioice.ice
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from srtc.server.config import ConfigError
from srtc.server.ice import bind_media
from srtc.server.janus import JanusHandle, JanusSession, Jsep
from srtc.server.worker import (
    VIDEOROOM,
    ClaimBeats,
    Participant,
    Worker,
    WorkerConfig,
    keeper,
    parse_claim,
    parse_participants,
    plan,
    sr_display,
    sr_target,
    stats_app,
)
from srtc.tools import framecode
from srtc.tools.probe import load_source, wait_connected
from srtc.tools.probe_source import NumberedTrack

from .conftest import REPO, free_port, serving

ROOM = 1234  # the room deploy/janus/janus.plugin.videoroom.jcfg defines
# Janus drops a silent session after this long: deploy/janus's value, which the failover no longer waits for
# (the heartbeat tells a dead worker's claims first); it only cleans the room up
SESSION_TIMEOUT_S = 10
FAILOVER_S = 5.0  # a killed worker's publisher is back on a viewer's screen within this long
KEEPALIVE_S = 1.5

# ---------------------------------------------------------------------------------------------- the rule


def order(original: int) -> int:
    return original


def test_a_worker_claims_free_originals_up_to_its_capacity_and_never_an_sr_feed():
    room = [Participant(10, "alice", True), Participant(20, "bob", True), Participant(30, "carol", True)]
    room += [Participant(40, "sr:30", True), Participant(50, "sr:99", False), Participant(60, "dave", False)]
    decided = plan(room, mine={}, capacity=1, order=order)
    assert decided.claim == (10,) and decided.release == ()  # 30 is claimed, 60 does not publish
    assert plan(room, mine={}, capacity=5, order=order).claim == (10, 20)
    # full: nothing more, whatever is free
    assert plan(room, mine={10: 70}, capacity=1, order=order).claim == ()
    # a publisher whose own display looks like a claim is an SR feed, never an original
    assert plan([Participant(1, "sr:2#4", True)], mine={}, capacity=4, order=order).claim == ()


def test_two_claims_on_one_publisher_the_lower_feed_id_keeps_it_and_a_gone_publisher_is_given_up():
    room = [Participant(10, "alice", True), Participant(71, "sr:10#0", False), Participant(72, "sr:10#3", True)]
    assert plan(room, mine={10: 72}, capacity=2, order=order).release == (10,)  # 71 < 72: the other keeps it
    assert plan(room, mine={10: 71}, capacity=2, order=order).release == ()
    # a claim still joining (its id not known yet) is kept; the publisher leaving releases it
    assert plan(room, mine={10: None}, capacity=2, order=order).release == ()
    assert plan(room[1:], mine={10: 71}, capacity=2, order=order).release == (10,)
    # a dead worker's claim gone from the room: the publisher is free again for the others
    assert plan(room[:1], mine={}, capacity=1, order=order).claim == (10,)


def test_a_dead_claim_counts_for_nothing_and_among_live_double_claims_the_lower_feed_id_keeps_it():
    room = [Participant(10, "alice", True), Participant(5, "sr:10#7", True)]
    # the claim 5 is dead (its beat stood still): the publisher is free, though Janus still lists 5
    assert plan(room, mine={}, capacity=1, order=order, dead=frozenset({5})).claim == (10,)
    assert plan(room, mine={}, capacity=1, order=order).claim == ()
    # the new claim 80 holds it against the dead lower one, and viewers watch 80 once it publishes
    room.append(Participant(80, "sr:10#1", False))
    assert plan(room, mine={10: 80}, capacity=1, order=order, dead=frozenset({5})).release == ()
    assert keeper(room, 10, dead=frozenset({5})) is None  # 80 joined, not publishing yet
    room[-1] = Participant(80, "sr:10#2", True)
    assert keeper(room, 10, dead=frozenset({5})) == 80
    # two live claims: the lower id keeps it, whichever came first; a higher one never takes it over
    room.append(Participant(90, "sr:10#1", True))
    assert plan(room, mine={10: 90}, capacity=1, order=order, dead=frozenset({5})).release == (10,)
    assert plan(room, mine={10: 80}, capacity=1, order=order, dead=frozenset({5})).release == ()
    # the stale claim 5 beats again (its worker had stalled): live and lowest, it keeps the publisher
    assert plan(room, mine={10: 80}, capacity=1, order=order).release == (10,)
    assert plan(room, mine={10: 5}, capacity=1, order=order).release == ()
    assert keeper(room, 10, dead=frozenset()) == 5


def test_a_claim_is_dead_once_its_beat_stood_still_for_stale_s_of_the_observers_readings():
    beats = ClaimBeats(stale_s=2.5)

    def room(beat: int, other: int = 0) -> list[Participant]:
        return [
            Participant(10, "alice", True),
            Participant(5, f"sr:10#{beat}", True),
            Participant(6, f"sr:11#{other}", True),
        ]

    assert beats.observe(room(3), now=100.0) == frozenset()  # first seen: live, whatever its beat
    assert beats.observe(room(4, 1), now=101.0) == frozenset()
    assert beats.observe(room(4, 2), now=103.0) == frozenset()  # 2.0 s without a change: not yet
    assert beats.observe(room(4, 3), now=103.5) == frozenset({5})  # 2.5 s: dead
    assert beats.observe(room(4, 3), now=106.0) == frozenset({5, 6})
    assert beats.observe(room(5, 4), now=106.5) == frozenset()  # both beat again: live again at once
    # a claim that left and joins again with the same id starts over as first seen
    assert beats.observe(room(5)[:1], now=110.0) == frozenset()
    assert beats.observe(room(5), now=110.5) == frozenset()


def test_participants_are_read_defensively_and_the_settings_validated():
    data = {"participants": [{"id": 1, "display": "a", "publisher": True}, {"id": "x"}, "junk", {"id": 2}]}
    assert parse_participants(data) == [Participant(1, "a", True), Participant(2, "", False)]
    assert sr_display(7) == "sr:7#0" and sr_display(7, 12) == "sr:7#12"
    assert parse_claim("sr:7#12") == (7, 12) and parse_claim("sr:7") == (7, 0)
    assert parse_claim("sr:7#x") is None and parse_claim("sr:") is None and parse_claim("alice") is None
    assert sr_target("sr:7#3") == 7
    with pytest.raises(ConfigError, match="stale_s"):
        WorkerConfig(heartbeat_s=1.0, reconcile_s=1.0, stale_s=2.0)
    with pytest.raises(ConfigError, match="janus_url"):
        WorkerConfig(janus_url="ws://127.0.0.1:8188")
    with pytest.raises(ConfigError, match="max_publishers"):
        WorkerConfig(max_publishers=0)
    with pytest.raises(ConfigError, match="keepalive_s"):
        WorkerConfig(keepalive_s=0.1)


# ---------------------------------------------------------------------------------------------- Janus


@dataclass
class Janus:
    url: str
    log: Path
    process: subprocess.Popen


def janus_config(directory: Path, port: int, session_timeout_s: int) -> None:
    """deploy/janus's configuration, with the HTTP port, the session timeout and the plugin folders of this
    machine's install put in (everything else is the deployed file's)."""
    binary = shutil.which("janus")
    assert binary is not None
    libs = sorted(Path("/usr/lib").glob("*/janus/plugins/libjanus_videoroom.so")) + sorted(
        Path("/usr/lib/janus/plugins").glob("libjanus_videoroom.so")
    )
    if not libs:
        pytest.skip("janus is installed but its VideoRoom plugin is not where Debian puts it")
    lib = libs[0].parent.parent
    deploy = REPO / "deploy" / "janus"
    general = (deploy / "janus.jcfg").read_text()
    general = re.sub(r"session_timeout = \d+", f"session_timeout = {session_timeout_s}", general)
    general = re.sub(r'"/usr/lib/[^"]*/janus/', f'"{lib}/', general)
    (directory / "janus.jcfg").write_text(general)
    http = re.sub(r"\bport = 8088", f"port = {port}", (deploy / "janus.transport.http.jcfg").read_text())
    (directory / "janus.transport.http.jcfg").write_text(http)
    shutil.copy(deploy / "janus.plugin.videoroom.jcfg", directory / "janus.plugin.videoroom.jcfg")


@pytest.fixture
def janus(tmp_path) -> Iterator[Janus]:
    """Debian's Janus with deploy/janus's configuration on a free loopback port, stopped at the end."""
    binary = shutil.which("janus")
    if binary is None:
        pytest.skip("janus is not installed: `apt-get install janus` (scripts/test.sh does it as root)")
    port, folder = free_port(), tmp_path / "janus"
    folder.mkdir()
    janus_config(folder, port, SESSION_TIMEOUT_S)
    log = tmp_path / "janus.log"
    with log.open("w") as out:
        process = subprocess.Popen([binary, "-F", str(folder), "-o"], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}/janus"
    try:
        deadline = time.monotonic() + 15.0
        while "HTTP webserver started" not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"janus did not start (exit {process.poll()}):\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)
        yield Janus(url, log, process)
    finally:
        process.terminate()
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)


@pytest.fixture
def media_host() -> Iterator[str]:
    """The machine's own address, where Janus gathers its candidates (it skips loopback interfaces): every
    peer connection of the test, and an in-process worker's, binds there; nothing leaves the machine."""
    bind_media("0.0.0.0")
    addresses = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
    if not addresses:
        pytest.skip("no IPv4 address but loopback: Janus gathers no ICE candidate on loopback interfaces")
    bind_media(addresses[0])
    yield addresses[0]
    bind_media("127.0.0.1")


# ------------------------------------------------------------------------------------- publishers, viewers


@dataclass
class Publisher:
    session: JanusSession
    pc: RTCPeerConnection
    feed: int
    track: NumberedTrack  # when each numbered frame went out

    async def close(self) -> None:
        await self.pc.close()
        await self.session.destroy()


async def publish(url: str, display: str, seconds: float = 120.0) -> Publisher:
    """An aiortc publisher in the room: real numbered frames at 15 fps, 640x360."""
    session = JanusSession(url, keepalive_s=KEEPALIVE_S)
    await session.create()
    handle = await session.attach(VIDEOROOM)
    joined = await handle.message({"request": "join", "ptype": "publisher", "room": ROOM, "display": display})
    pc = RTCPeerConnection()
    track = NumberedTrack(load_source(None, fps=15.0), fps=15.0, duration_s=seconds)
    pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    reply = await handle.message({"request": "publish"}, jsep=Jsep("offer", pc.localDescription.sdp))
    assert reply.jsep is not None
    await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.jsep.sdp, type="answer"))
    await wait_connected(pc, 20.0)
    return Publisher(session, pc, int(joined.data["id"]), track)


@dataclass
class Viewer:
    """Watches the SR feed of one publisher through Janus, subscribing again when the feed changes."""

    url: str
    original: int
    frames: list[tuple[float, int, int, int | None, int]] = field(default_factory=list)  # time, w, h, number, feed
    feeds: list[int] = field(default_factory=list)
    session: JanusSession | None = None
    handle: JanusHandle | None = None
    pc: RTCPeerConnection | None = None
    task: asyncio.Task | None = None

    def count(self, feed: int | None = None) -> int:
        return sum(1 for f in self.frames if feed is None or f[4] == feed)

    async def run(self) -> None:
        self.session = JanusSession(self.url, keepalive_s=KEEPALIVE_S)
        await self.session.create()
        control = await self.session.attach(VIDEOROOM)
        beats = ClaimBeats(WorkerConfig().stale_s)
        while True:
            feed = await sr_feed(control, self.original, beats)
            if feed is not None and (not self.feeds or feed != self.feeds[-1]):
                await self._subscribe(feed)
            await asyncio.sleep(0.3)

    async def _subscribe(self, feed: int) -> None:
        assert self.session is not None
        if self.pc is not None:
            await self.pc.close()
        if self.handle is not None:
            await self.handle.detach()
        self.feeds.append(feed)
        self.handle = await self.session.attach(VIDEOROOM)
        reply = await self.handle.message(
            {"request": "join", "ptype": "subscriber", "room": ROOM, "streams": [{"feed": feed}]}
        )
        assert reply.jsep is not None
        self.pc = pc = RTCPeerConnection()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            asyncio.ensure_future(self._read(track, feed))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.jsep.sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.handle.message({"request": "start", "room": ROOM}, jsep=Jsep("answer", pc.localDescription.sdp))

    async def _read(self, track: MediaStreamTrack, feed: int) -> None:
        try:
            while True:
                frame = await track.recv()
                y = frame.to_ndarray(format="yuv420p")[: frame.height]
                self.frames.append((time.monotonic(), frame.width, frame.height, framecode.read(y), feed))
        except MediaStreamError:
            pass

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.pc is not None:
            await self.pc.close()
        if self.session is not None:
            await self.session.destroy()


@contextlib.asynccontextmanager
async def watching(url: str, original: int) -> AsyncIterator[Viewer]:
    viewer = Viewer(url, original)
    viewer.task = asyncio.ensure_future(viewer.run())
    try:
        yield viewer
    finally:
        await viewer.close()


async def room_participants(control: JanusHandle) -> list[Participant]:
    return parse_participants(await control.request({"request": "listparticipants", "room": ROOM}))


async def sr_feed(control: JanusHandle, original: int, beats: ClaimBeats) -> int | None:
    """The SR feed of ``original`` that the claim rule keeps (the lowest live one that publishes), if any."""
    people = await room_participants(control)
    return keeper(people, original, beats.observe(people, time.monotonic()))


async def until(condition, timeout_s: float, step_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(step_s)
    return condition()


def assert_sr_frames(frames: list[tuple[float, int, int, int | None, int]], at_least: int) -> None:
    assert {(w, h) for _, w, h, _, _ in frames} == {(1280, 720)}, "the SR feed is 1280x720"
    numbers = [n for _, _, _, n, _ in frames if n is not None]
    assert len(numbers) >= at_least, f"readable frame numbers: {len(numbers)} of {len(frames)}"
    assert numbers == sorted(numbers), "the publisher's frames, in order"


# ------------------------------------------------------------------------------------------------ end to end


async def test_a_worker_super_resolves_a_publisher_for_a_viewer_through_janus_and_takes_no_more_than_it_can(
    janus, upscaler, media_host
):
    config = WorkerConfig(
        janus_url=janus.url, room=ROOM, max_publishers=1, port=0, keepalive_s=KEEPALIVE_S, media_host=media_host
    )
    worker = Worker(config, upscaler)
    running = asyncio.ensure_future(worker.run())
    publishers = [await publish(janus.url, "alice"), await publish(janus.url, "bob")]
    try:
        assert await until(lambda: len(worker.feeds) == 1 and worker.taken == 1, 20.0), worker.stats()
        original = next(iter(worker.feeds))
        async with watching(janus.url, original) as viewer:
            assert await until(lambda: viewer.count() >= 45, 30.0), f"{viewer.count()} frames: {worker.stats()}"
            assert_sr_frames(viewer.frames, at_least=40)
            sent = next(p for p in publishers if p.feed == original).track.sent
            # publisher -> Janus -> worker (decode, SR, encode) -> Janus -> viewer, decoded: one clock, one process
            glass = sorted((t - sent[n].time) * 1000.0 for t, _, _, n, _ in viewer.frames if n in sent)
            latency_ms = {"p50": round(glass[len(glass) // 2]), "p95": round(glass[int(len(glass) * 0.95)])}
            assert latency_ms["p50"] < 500, latency_ms
            async with serving(stats_app(worker)) as url, aiohttp.ClientSession() as http:
                async with http.get(f"{url}/stats") as response:
                    stats = await response.json()
        # Full at one publisher: the other one stays unclaimed, and /stats says so.
        assert stats["worker"]["publishers"] == 1 and stats["worker"]["live"] == 1 and stats["worker"]["full"]
        stream = stats["streams"][0]
        assert stream["original"] == original and stream["sr_feed"] == viewer.feeds[0]
        assert stream["output"] == {"width": 1280, "height": 720} and stream["governor"]["mode"]
        assert stream["fps_out"] > 10.0, stream
        session = JanusSession(janus.url)
        await session.create()
        people = await room_participants(await session.attach(VIDEOROOM))
        await session.destroy()
        assert sorted(str(sr_target(p.display) or p.display) for p in people) == sorted(["alice", "bob", str(original)])
        figures = {"end_to_end_ms": latency_ms, "fps_out": stream["fps_out"], "sr_ms": stream["sr_ms"]}
        figures |= {"worker_ms": stream["budget_ms"]["total"], "cores": stats["worker"]["cores"]}
        print(json.dumps(figures))
        # The publisher leaves: the worker gives its stream up (its SR feed leaves) and takes the other one.
        taken = next(p for p in publishers if p.feed == original)
        await taken.close()
        other = next(p.feed for p in publishers if p.feed != original)
        assert await until(lambda: set(worker.feeds) == {other}, 10.0), worker.stats()
    finally:
        worker.stop()
        await asyncio.wait_for(running, 15.0)
        for publisher in publishers:
            await publisher.close()


WORKER_ARGS = ["--room", str(ROOM), "--port", "0", "--keepalive-s", str(KEEPALIVE_S), "--fast-model", "none"]


def start_worker(url: str, max_publishers: int, log: Path, media_host: str) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.worker",
                "--janus",
                url,
                "--max-publishers",
                str(max_publishers),
                "--threads",
                "1",
                "--media-host",
                media_host,
                *WORKER_ARGS,
            ],  # fmt: skip
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO / "src",
        )


async def test_two_workers_share_a_room_and_a_killed_workers_publisher_is_taken_over(janus, tmp_path, media_host):
    logs = [tmp_path / "worker-0.log", tmp_path / "worker-1.log"]
    workers = [start_worker(janus.url, 2, log, media_host) for log in logs]
    publishers: list[Publisher] = []
    session = JanusSession(janus.url, keepalive_s=KEEPALIVE_S)
    try:
        publishers = [await publish(janus.url, "alice"), await publish(janus.url, "bob")]
        await session.create()
        control = await session.attach(VIDEOROOM)
        originals = [p.feed for p in publishers]

        async def claims() -> dict[int, list[int]]:
            people = await room_participants(control)
            return {o: sorted(p.id for p in people if sr_target(p.display) == o) for o in originals}

        # Each publisher taken by exactly one worker: one SR feed each, publishing, and it stays that way.
        deadline = time.monotonic() + 40.0
        while time.monotonic() < deadline:
            people = await room_participants(control)
            if all(any(sr_target(p.display) == o and p.publishing for p in people) for o in originals):
                break
            await asyncio.sleep(0.3)
        await asyncio.sleep(2.0)  # any race between the two workers is settled within a reconcile or two
        settled = await claims()
        assert all(len(feeds) == 1 for feeds in settled.values()), settled
        async with watching(janus.url, originals[0]) as viewer:
            assert await until(lambda: viewer.count() >= 20, 20.0), f"{viewer.count()} frames"
            assert_sr_frames(viewer.frames, at_least=15)
            # Kill the worker that holds the watched publisher: no leave, no goodbye.
            dead = settled[originals[0]][0]
            holder = next(i for i, log in enumerate(logs) if f"SR feed {dead} " in log.read_text())
            first_feed = viewer.feeds[-1]
            killed_at = time.monotonic()
            workers[holder].send_signal(signal.SIGKILL)
            workers[holder].wait(10)
            # Its beat stands still, the other worker claims the publisher while Janus still lists the dead claim,
            # and the viewer resumes on the new SR feed.
            resumed = await until(lambda: len(viewer.feeds) > 1 and viewer.count(viewer.feeds[-1]) >= 1, 15.0)
            during = await claims()
            other = logs[1 - holder].read_text()
            assert resumed, f"no takeover; the other worker's log:\n{other[-3000:]}"
            back = next(t for t, *_, feed in viewer.frames if feed != first_feed)
            print(
                json.dumps(
                    {"failover_s": round(back - killed_at, 2), "dead_claim_listed": dead in during[originals[0]]}
                )
            )
            assert back - killed_at < FAILOVER_S, f"failover took {back - killed_at:.2f} s"
            assert await until(lambda: viewer.count(viewer.feeds[-1]) >= 15, 10.0)
            assert_sr_frames(viewer.frames, at_least=25)  # both feeds' frames, one ordered sequence
            # Janus drops the dead session in the end: one claim per publisher again, the new one
            deadline = time.monotonic() + SESSION_TIMEOUT_S + 5.0
            while (after := await claims())[originals[0]] != [viewer.feeds[-1]] and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert all(len(feeds) == 1 for feeds in after.values()) and after[originals[0]] == [viewer.feeds[-1]], after
    finally:
        for process in workers:
            if process.poll() is None:
                process.terminate()
        for process in workers:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        for publisher in publishers:
            await publisher.close()
        await session.destroy()
