"""The relay: a sender's stream watched by many, super-resolved and encoded once, the same frames to all."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.vpx import vp8_depayload
from aiortc.mediastreams import MediaStreamError

from srtc.server import app as app_module
from srtc.server.app import SESSIONS, VIEWERS, create_app
from srtc.server.config import ConfigError, ServerConfig
from srtc.server.encoder import ReturnVp8Encoder
from srtc.server.registry import describe
from srtc.server.relay import CONGESTION_HOLD_S, KEYFRAME_INTERVAL_S, Relay, is_vp8_keyframe
from srtc.tools import framecode
from srtc.tools.probe import load_source, wait_connected
from srtc.tools.probe_source import NumberedTrack

from .conftest import photo_frame, serving

# ------------------------------------------------------------------------------------------ the relay alone


class FakeViewer:
    """A watcher that records what the relay hands it and reports a settable REMB."""

    def __init__(self, estimate: float | None = None, received: float = 0.0) -> None:
        self.estimate, self.received = estimate, received
        self.sr: list[tuple[bytes, int, bool]] = []
        self.raw: list[tuple[str, bytes, int, bool]] = []
        self.ended = False

    def push_sr(self, data: bytes, timestamp: int, keyframe: bool) -> None:
        self.sr.append((data, timestamp, keyframe))

    def push_raw(self, codec: str, data: bytes, timestamp: int, keyframe: bool) -> None:
        self.raw.append((codec, data, timestamp, keyframe))

    def sr_estimate_bps(self) -> float | None:
        return self.estimate

    def sr_received_bps(self) -> float:
        return self.received

    def end_stream(self) -> None:
        self.ended = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_relay(clock: Clock, asked: list[str], floor_bps: int = 1_500_000) -> Relay:
    return Relay(
        "vp8",
        "vp8",
        request_sr_keyframe=lambda: asked.append("sr"),
        request_raw_keyframe=lambda: asked.append("raw"),
        figures=lambda: {"width": 1280, "height": 720},
        floor_bps=floor_bps,
        clock=clock,
    )


def test_every_viewer_gets_every_frame_until_it_leaves_and_all_are_told_when_the_stream_ends():
    relay = make_relay(Clock(), [])
    one, two = FakeViewer(), FakeViewer()
    relay.add(one)
    relay.add(two)
    relay.publish_sr(b"\x10frame", 3000, False)
    relay.publish_raw("VP8", b"\x00key", 1234, True)
    relay.remove(one)
    relay.publish_sr(b"\x00next", 6000, True)
    assert one.sr == [(b"\x10frame", 3000, False)] and len(one.raw) == 1
    assert two.sr == [(b"\x10frame", 3000, False), (b"\x00next", 6000, True)] and len(two.raw) == 1
    assert relay.listing()["viewers"] == 1 and relay.stats()["sr_frames"] == 2
    relay.end()
    assert two.ended and not one.ended and relay.ended


def test_many_viewers_asking_for_keyframes_cost_one_per_interval_per_stream():
    clock, asked = Clock(), []
    relay = make_relay(clock, asked)
    for _ in range(20):  # twenty viewers join at once
        relay.request_keyframe("sr")
        relay.request_keyframe("raw")
    assert asked == ["sr", "raw"]
    clock.now += KEYFRAME_INTERVAL_S / 2
    relay.request_keyframe("sr")
    assert asked == ["sr", "raw"]
    clock.now += KEYFRAME_INTERVAL_S
    relay.request_keyframe("sr")
    assert asked == ["sr", "raw", "sr"]
    assert relay.stats()["keyframes"] == {"sr": 2, "raw": 1}
    assert relay.stats()["keyframe_requests"] == {"sr": 22, "raw": 20}


def test_the_encode_follows_the_slowest_congested_viewer_but_never_below_the_floor():
    clock = Clock()
    relay = make_relay(clock, [], floor_bps=1_500_000)
    wanted = 5_000_000
    fine = FakeViewer(estimate=5_400_000, received=5_000_000)  # its REMB is above what it gets: no limit
    relay.add(fine)
    assert relay.rate_cap(wanted) is None
    slow = FakeViewer(estimate=3_000_000, received=5_000_000)  # under 85% of what it gets
    relay.add(slow)
    assert relay.rate_cap(wanted) is None, "one low REMB is not congestion yet"
    clock.now += CONGESTION_HOLD_S / 2
    slow.estimate = 4_900_000  # a dip that recovered: its clock starts again
    assert relay.rate_cap(wanted) is None
    slow.estimate = 3_000_000
    assert relay.rate_cap(wanted) is None
    clock.now += CONGESTION_HOLD_S
    assert relay.rate_cap(wanted) == 3_000_000, "under its share for the hold: congested"
    # its REMB then follows what it receives: it stays the limit until it is back at what the encode wants
    slow.estimate, slow.received = 3_200_000, 3_000_000
    assert relay.rate_cap(wanted) == 3_200_000
    slow.estimate = 5_000_000
    assert relay.rate_cap(wanted) is None and relay.stats()["limiting_viewers"] == 0
    # a viewer far below the floor does not take everyone else down with it
    poor = FakeViewer(estimate=400_000, received=5_000_000)
    relay.add(poor)
    relay.rate_cap(wanted)
    clock.now += CONGESTION_HOLD_S
    assert relay.rate_cap(wanted) == 1_500_000
    relay.remove(poor)
    assert relay.rate_cap(wanted) is None


def test_the_encoder_keeps_each_coded_frame_and_its_keyframe_flag_for_the_relay():
    encoder = ReturnVp8Encoder()
    encoder.relay_cap = lambda wanted: 1_000_000
    coded = []
    for index in range(3):
        payloads, _ = encoder.encode(photo_frame(1280, 720, index=0, pts=index * 3000))
        assert encoder.encoded is not None
        # the coded frame is exactly what the sender's own packets carry
        assert b"".join(vp8_depayload(p) for p in payloads) == encoder.encoded
        coded.append(encoder.encoded)
    assert [is_vp8_keyframe(c) for c in coded] == [True, False, False]
    assert encoder.target_bitrate == 1_000_000 and encoder.stats()["relay_cap_kbps"] == 1000


def test_viewer_limits_are_validated():
    with pytest.raises(ConfigError, match="max_viewers"):
        ServerConfig(max_viewers=-1)
    with pytest.raises(ConfigError, match="relay_floor_kbps"):
        ServerConfig(relay_floor_kbps=10)


# ------------------------------------------------------------------------------------------------ loopback


@dataclass
class Watching:
    """An aiortc viewer: what its SR-on and SR-off tracks delivered, as (time, width, height, number)."""

    pc: RTCPeerConnection
    answer: dict
    joined: float
    frames: dict[str, list[tuple[float, int, int, int | None]]] = field(default_factory=lambda: {"sr": [], "raw": []})
    ended: dict[str, bool] = field(default_factory=lambda: {"sr": False, "raw": False})
    tasks: list[asyncio.Task] = field(default_factory=list)

    def count(self, name: str) -> int:
        return len(self.frames[name])


async def start_sender(url: str, http: aiohttp.ClientSession, seconds: float = 60.0) -> tuple[RTCPeerConnection, dict]:
    """A sending client (real numbered frames at 15 fps), its own two return streams drained."""
    pc = RTCPeerConnection()
    pc.addTransceiver(NumberedTrack(load_source(None, fps=15.0), fps=15.0, duration_s=seconds), direction="sendonly")
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    own: list[int] = []

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        asyncio.ensure_future(_drain(track, own))

    answer = await _post(http, f"{url}/offer", pc)
    await wait_connected(pc, 20.0)
    answer["own_frames"] = own
    return pc, answer


async def _drain(track: MediaStreamTrack, count: list[int]) -> None:
    try:
        while True:
            await track.recv()
            count.append(1)
    except MediaStreamError:
        pass


async def _post(http: aiohttp.ClientSession, url: str, pc: RTCPeerConnection) -> dict:
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(url, json={"sdp": pc.localDescription.sdp, "type": "offer"}) as response:
        body = await response.json()
        assert response.status == 200, body
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
    return body


async def watch(url: str, http: aiohttp.ClientSession, stream: str) -> Watching:
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    holder: list[Watching] = []

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        index = [t.receiver.track for t in pc.getTransceivers()].index(track)
        viewing = holder[0]
        viewing.tasks.append(asyncio.ensure_future(_read(track, viewing, "sr" if index == 0 else "raw")))

    joined = time.monotonic()
    holder.append(Watching(pc, {}, joined))
    holder[0].answer = await _post(http, f"{url}/streams/{stream}/watch", pc)
    return holder[0]


async def _read(track: MediaStreamTrack, viewing: Watching, name: str) -> None:
    try:
        while True:
            frame = await track.recv()
            y = frame.to_ndarray(format="yuv420p")[: frame.height]
            viewing.frames[name].append((time.monotonic(), frame.width, frame.height, framecode.read(y)))
    except MediaStreamError:
        viewing.ended[name] = True


async def until(condition, timeout_s: float, step_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(step_s)
    return condition()


def relay_app(upscaler, default_model_path, **config) -> object:
    return create_app(ServerConfig(port=0, **config), upscaler, describe(str(default_model_path)))


async def test_viewers_join_mid_stream_get_both_streams_and_leave_without_disturbing_others(
    upscaler, default_model_path
):
    app = relay_app(upscaler, default_model_path)
    async with serving(app) as url, aiohttp.ClientSession() as http:
        sender, answer = await start_sender(url, http)
        await asyncio.sleep(1.5)  # the stream is running before anyone watches
        first, second = await watch(url, http, answer["stream"]), await watch(url, http, answer["stream"])
        assert await until(lambda: first.count("sr") >= 30 and second.count("sr") >= 30, 10.0)
        for viewing in (first, second):
            sr, raw = viewing.frames["sr"], viewing.frames["raw"]
            assert {(w, h) for _, w, h, _ in sr} == {(1280, 720)} and {(w, h) for _, w, h, _ in raw} == {(640, 360)}
            assert sr[0][0] - viewing.joined < 1.0, "a viewer joining mid-stream shows a picture within 1 s"
            numbers = [n for *_, n in sr if n is not None]
            assert len(numbers) >= 25 and numbers == sorted(numbers), "the sender's frames, in order"
        # The same frames reach both: encode once.
        assert {n for *_, n in first.frames["sr"]} & {n for *_, n in second.frames["sr"]}
        async with http.get(f"{url}/streams") as response:
            listing = await response.json()
        assert listing["count"] == 1 and listing["viewers"] == 2
        assert listing["streams"][0]["viewers"] == 2 and listing["streams"][0]["width"] == 1280
        session = next(iter(app[SESSIONS].values()))
        encoded_before = session.stats()["streams"]["sr"]["frames_out"]
        # One viewer leaves (DELETE, its own secret): the other goes on at the same pace.
        secret = {"X-Session-Secret": first.answer["secret"]}
        async with http.delete(f"{url}/viewers/{first.answer['id']}", headers=secret) as response:
            assert response.status == 200
        await first.pc.close()
        before = second.count("sr")
        await asyncio.sleep(2.0)
        assert second.count("sr") - before >= 20, "the remaining viewer keeps receiving at ~15 fps"
        assert len(app[VIEWERS]) == 1 and session.relay is not None and len(session.relay.viewers) == 1
        # The sender's own return streams went on all along, and one encode served everyone.
        relay = session.relay.stats()
        assert len(answer["own_frames"]) > 2 * 45 and relay["sr_frames"] >= session.stats()["frames_out"] - 1
        assert session.stats()["streams"]["sr"]["frames_out"] > encoded_before
        assert set(session.stats()["return_bitrate"]) == {"sr"}, "no encoder per viewer"
        await second.pc.close()
        await sender.close()


async def test_when_the_sender_leaves_its_viewers_tracks_end_and_their_calls_close(upscaler, default_model_path):
    app = relay_app(upscaler, default_model_path)
    async with serving(app) as url, aiohttp.ClientSession() as http:
        sender, answer = await start_sender(url, http)
        viewing = await watch(url, http, answer["stream"])
        assert await until(lambda: viewing.count("sr") >= 5, 10.0)
        await sender.close()
        assert await until(lambda: all(viewing.ended.values()), 10.0), viewing.ended
        assert await until(lambda: not app[VIEWERS], 5.0), "the server closes the viewers' calls"
        async with http.get(f"{url}/streams/{answer['stream']}") as response:
            assert response.status == 404 and "ended" in (await response.json())["error"]
        await viewing.pc.close()


async def test_limits_unknown_streams_bad_offers_and_other_viewers_secrets(upscaler, default_model_path, monkeypatch):
    app = relay_app(upscaler, default_model_path, max_viewers_per_stream=1, max_viewers=2)
    async with serving(app) as url, aiohttp.ClientSession() as http:
        sender, answer = await start_sender(url, http)
        stream = answer["stream"]
        # a watch offer that sends video is not a viewer's
        pc = RTCPeerConnection()
        pc.addTransceiver(NumberedTrack(load_source(None, fps=15.0), fps=15.0, duration_s=5.0), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": "offer"}
        async with http.post(f"{url}/streams/{stream}/watch", json=body) as response:
            assert response.status == 400 and "recvonly" in (await response.json())["error"]
        await pc.close()
        assert not app[VIEWERS], "a refused offer leaves no viewer behind"
        viewing = await watch(url, http, stream)
        offer = {"sdp": viewing.pc.localDescription.sdp, "type": "offer"}
        async with http.post(f"{url}/streams/{stream}/watch", json=offer) as response:
            assert response.status == 503 and "most viewers (1)" in (await response.json())["error"]
        async with http.post(f"{url}/streams/not-a-stream/watch", json=offer) as response:
            assert response.status == 404
        other_sender, other = await start_sender(url, http)
        other_viewing = await watch(url, http, other["stream"])
        async with http.post(f"{url}/streams/{other['stream']}/watch", json=offer) as response:
            assert response.status == 503 and "server has its most viewers (2)" in (await response.json())["error"]
        await other_viewing.pc.close()
        await other_sender.close()
        # a viewer's figures and its end are its own page's
        path = f"{url}/viewers/{viewing.answer['id']}"
        async with http.get(path, headers={"X-Session-Secret": "guess"}) as response:
            assert response.status == 403
        async with http.delete(path) as response:
            assert response.status == 403
        async with http.get(path, headers={"X-Session-Secret": viewing.answer["secret"]}) as response:
            figures = await response.json()
            assert response.status == 200 and figures["stream"] == stream and figures["stream_state"] == "live"
        # the ids are the capability to watch: only the operator sees them listed
        monkeypatch.setattr(app_module, "_operator", lambda request: False)
        async with http.get(f"{url}/streams") as response:
            listing = await response.json()
        assert listing["streams"] == [] and listing["count"] >= 1 and listing["viewers"] >= 1
        await viewing.pc.close()
        await sender.close()


VIEWER_SCRIPT = """
import asyncio, sys
from aiortc import RTCPeerConnection, RTCSessionDescription
import aiohttp

async def main(url):
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    got = asyncio.Event()

    @pc.on("track")
    def on_track(track):
        async def read():
            await track.recv()
            got.set()
            while True:
                await track.recv()
        asyncio.ensure_future(read())

    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r:
            body = await r.json()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
    await asyncio.wait_for(got.wait(), 20)
    print("watching", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1]))
"""


async def test_a_killed_viewer_is_cleaned_up_and_the_others_keep_their_pace(upscaler, default_model_path):
    app = relay_app(upscaler, default_model_path)
    async with serving(app) as url, aiohttp.ClientSession() as http:
        sender, answer = await start_sender(url, http)
        stream = answer["stream"]
        staying = await watch(url, http, stream)
        process = subprocess.Popen(
            [sys.executable, "-c", VIEWER_SCRIPT, f"{url}/streams/{stream}/watch"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 30.0)
            assert line.strip() == "watching"
            assert len(app[VIEWERS]) == 2
            process.send_signal(signal.SIGKILL)  # no DELETE, no DTLS close: the process is just gone
            process.wait(10)
            before, started = staying.count("sr"), time.monotonic()
            assert await until(lambda: len(app[VIEWERS]) == 1, 15.0), "the killed viewer is closed"
            elapsed = time.monotonic() - started
            rate = (staying.count("sr") - before) / elapsed
            assert rate > 12.0, f"the other viewer kept ~15 fps ({rate:.1f})"
            session = next(iter(app[SESSIONS].values()))
            assert session.relay is not None and len(session.relay.viewers) == 1
        finally:
            if process.poll() is None:
                process.kill()
        await staying.pc.close()
        await sender.close()
