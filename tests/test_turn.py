"""TURN: time-limited credentials (coturn's use-auth-secret), their settings, ``GET /ice-servers``, and a call
relayed through Debian's coturn on loopback, relay-only, that still gets its 720p SR-on stream back."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from srtc.server.__main__ import parse_command_line
from srtc.server.app import SESSIONS, VIEWERS, create_app
from srtc.server.config import ConfigError, ServerConfig
from srtc.server.registry import describe
from srtc.server.turn import IceServers, turn_credential
from srtc.tools import framecode
from srtc.tools.probe_source import NumberedTrack, load_source

from .conftest import TURN_SECRET as SECRET
from .conftest import serving

TURN_URL = "turn:127.0.0.1:3478?transport=udp"

# ------------------------------------------------------------------------------------------ credentials


def test_a_credential_is_its_expiry_and_label_signed_with_the_shared_secret():
    credential = turn_credential(SECRET, 3600, "srtc-client", now=1_699_996_400.7)
    assert credential.username == "1700000000:srtc-client" and credential.expires == 1_700_000_000
    # printf '%s' '1700000000:srtc-client' | openssl dgst -sha1 -hmac 'correct-horse-battery-staple' -binary | base64
    assert credential.credential == "6itWzyuf1bVJNPRbkL4jRPTYi68="
    by_hand = hmac.new(SECRET.encode(), b"1700000000:srtc-client", hashlib.sha1).digest()
    assert base64.b64decode(credential.credential) == by_hand


def test_each_listing_has_fresh_credentials_valid_for_the_ttl_and_never_the_secret():
    ice = IceServers((TURN_URL, "turns:turn.example.org:5349?transport=tcp"), SECRET, 600, ("stun:turn.example.org",))
    before = time.time()
    servers = ice.listing()
    after = time.time()
    assert servers[0] == {"urls": ["stun:turn.example.org"]}
    turn = servers[1]
    assert turn["urls"] == [TURN_URL, "turns:turn.example.org:5349?transport=tcp"]
    expiry, label = turn["username"].split(":")
    assert int(before) + 600 <= int(expiry) <= after + 600 and label == "srtc-client"
    signed = hmac.new(SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest()
    assert base64.b64decode(turn["credential"]) == signed
    assert SECRET not in json.dumps(servers) and SECRET not in repr(ice)
    later = ice.listing(now=before + 30)[1]
    assert later["username"] != turn["username"] and later["credential"] != turn["credential"]


def test_the_servers_own_peer_connections_get_what_aiortc_can_parse_and_nothing_without_settings():
    unset = IceServers.from_config(ServerConfig())
    assert unset.listing() == [] and unset.rtc() is None
    ice = IceServers(("turn:[::1]:3478", TURN_URL), SECRET, 600)
    (server,) = ice.rtc() or []
    assert isinstance(server, RTCIceServer) and server.urls == [TURN_URL]  # aiortc cannot parse an [IPv6] host
    assert server.username is not None and server.username.endswith(":srtc-server")


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"turn_urls": ("stun:127.0.0.1:3478",), "turn_secret": SECRET}, "turn_urls"),
        ({"turn_urls": ("turn:127.0.0.1:3478?transport=sctp",), "turn_secret": SECRET}, "turn_urls"),
        ({"turn_urls": ("turn:127.0.0.1:70000",), "turn_secret": SECRET}, "turn_urls"),
        ({"turn_urls": ("turn:two words",), "turn_secret": SECRET}, "turn_urls"),
        ({"turn_urls": [TURN_URL], "turn_secret": SECRET}, "tuple"),
        ({"turn_urls": (TURN_URL,)}, "turn_secret"),
        ({"turn_urls": (TURN_URL,), "turn_secret": "short"}, "turn_secret"),
        ({"turn_secret": SECRET}, "no turn_urls"),
        ({"turn_urls": (TURN_URL,), "turn_secret": SECRET, "turn_ttl_s": 59}, "turn_ttl_s"),
        ({"turn_urls": (TURN_URL,), "turn_secret": SECRET, "turn_ttl_s": 86_401}, "turn_ttl_s"),
        ({"stun_urls": ("turn:127.0.0.1",)}, "stun_urls"),
    ],
)
def test_turn_settings_are_validated(settings, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ServerConfig(**settings)


def test_turn_settings_that_are_well_formed_are_accepted():
    config = ServerConfig(
        turn_urls=("turn:turn.example.org", "turns:[2001:db8::1]:5349?transport=tcp", TURN_URL),
        turn_secret=SECRET,
        turn_ttl_s=86_400,
        stun_urls=("stun:turn.example.org:3478",),
    )
    assert SECRET not in repr(config)


def test_the_command_line_takes_the_secret_from_the_environment_only(monkeypatch, capsys):
    monkeypatch.setenv("SRTC_TURN_SECRET", SECRET)
    urls = ["--turn-url", TURN_URL, "--turn-url", "turn:127.0.0.1:3478?transport=tcp"]
    config, _ = parse_command_line([*urls, "--turn-ttl-s", "600", "--stun-url", "stun:127.0.0.1:3478"])
    assert config.turn_urls == (TURN_URL, "turn:127.0.0.1:3478?transport=tcp") and config.turn_secret == SECRET
    assert config.turn_ttl_s == 600 and config.stun_urls == ("stun:127.0.0.1:3478",)
    with pytest.raises(SystemExit):  # a secret in the arguments would show in ps
        parse_command_line([*urls, "--turn-secret", SECRET])
    monkeypatch.delenv("SRTC_TURN_SECRET")
    with pytest.raises(SystemExit):
        parse_command_line(urls)
    assert "SRTC_TURN_SECRET" in capsys.readouterr().err
    assert parse_command_line([])[0].turn_urls == ()


async def test_get_ice_servers_hands_out_fresh_credentials_and_an_empty_list_without_turn(upscaler, default_model_path):
    model = describe(str(default_model_path))
    async with TestClient(TestServer(create_app(ServerConfig(port=0), upscaler, model))) as client:
        response = await client.get("/ice-servers")
        assert response.status == 200 and await response.json() == {"iceServers": []}
    config = ServerConfig(port=0, turn_urls=(TURN_URL,), turn_secret=SECRET, turn_ttl_s=120)
    async with TestClient(TestServer(create_app(config, upscaler, model))) as client:
        response = await client.get("/ice-servers")
        body = await response.json()
        assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
        (turn,) = body["iceServers"]
        assert turn["urls"] == [TURN_URL] and set(turn) == {"urls", "username", "credential"}
        assert 0 < int(turn["username"].split(":")[0]) - time.time() <= 120
        assert SECRET not in await response.text()


# ------------------------------------------------------------------------------ through coturn, relay-only


async def until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not condition():
        await asyncio.sleep(0.1)
    return condition()


async def relay_only(http: aiohttp.ClientSession, url: str) -> RTCPeerConnection:
    """A client peer connection that uses only relay candidates, with the servers ``GET /ice-servers`` gives.

    aiortc 1.16 has WebRTC's ``iceTransportPolicy``: "relay" gathers no host or server-reflexive candidates
    (aioice ``TransportPolicy.RELAY``), so media can only flow through the TURN server."""
    async with http.get(f"{url}/ice-servers") as response:
        servers = (await response.json())["iceServers"]
    assert servers and all("username" in s for s in servers)
    return RTCPeerConnection(
        RTCConfiguration(
            iceServers=[RTCIceServer(**server) for server in servers],
            iceTransportPolicy=RTCIceTransportPolicy.RELAY,
        )
    )


async def call(http: aiohttp.ClientSession, url: str, pc: RTCPeerConnection) -> dict:
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(url, json={"sdp": pc.localDescription.sdp, "type": "offer"}) as response:
        body = await response.json()
        assert response.status == 200, body
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
    return body


def read_into(pc: RTCPeerConnection, index: int, frames: list[tuple[int, int, int | None]]) -> None:
    """Record (width, height, frame number) of every frame of the ``index``-th transceiver's incoming track."""

    async def read(track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                y = frame.to_ndarray(format="yuv420p")[: frame.height]
                frames.append((frame.width, frame.height, framecode.read(y)))
        except MediaStreamError:
            pass

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if [t.receiver.track for t in pc.getTransceivers()].index(track) == index:
            asyncio.ensure_future(read(track))


def selected_pair_types(pc: RTCPeerConnection) -> tuple[str, str]:
    """(local, remote) candidate types of the pair ICE nominated (aioice's connection under aiortc's)."""
    connection = pc.getTransceivers()[0].receiver.transport.transport._connection
    pair = connection._nominated[1]
    return pair.local_candidate.type, pair.remote_candidate.type


def local_candidate_types(pc: RTCPeerConnection) -> set[str]:
    return {c.type for c in pc.getTransceivers()[0].receiver.transport.transport.iceGatherer.getLocalCandidates()}


def assert_sr_frames(frames: list[tuple[int, int, int | None]]) -> None:
    assert {(w, h) for w, h, _ in frames} == {(1280, 720)}
    numbers = [n for *_, n in frames if n is not None]
    assert len(numbers) >= 0.8 * len(frames) and numbers == sorted(numbers), "the sender's numbered frames, in order"


async def test_a_relay_only_client_and_viewer_get_the_sr_stream_through_coturn(coturn, upscaler, default_model_path):
    config = ServerConfig(port=0, turn_urls=(coturn.url,), turn_secret=SECRET)
    app = create_app(config, upscaler, describe(str(default_model_path)))
    async with serving(app) as url, aiohttp.ClientSession() as http:
        sender = await relay_only(http, url)
        uplink = NumberedTrack(load_source(None, fps=15.0), fps=15.0, duration_s=60.0)
        sender.addTransceiver(uplink, direction="sendonly")
        sender.addTransceiver("video", direction="recvonly")
        sender.addTransceiver("video", direction="recvonly")
        sr_frames: list[tuple[int, int, int | None]] = []
        read_into(sender, 1, sr_frames)
        answer = await call(http, f"{url}/offer", sender)
        assert await until(lambda: len(sr_frames) >= 30, 30.0), f"{len(sr_frames)} SR frames ({sender.connectionState})"
        assert_sr_frames(sr_frames)
        assert selected_pair_types(sender)[0] == "relay"
        assert local_candidate_types(sender) == {"relay"}
        session = next(iter(app[SESSIONS].values()))
        assert "relay" in local_candidate_types(session.pc), "the server allocates its own relay too"

        viewer = await relay_only(http, url)
        viewer.addTransceiver("video", direction="recvonly")
        viewed: list[tuple[int, int, int | None]] = []
        read_into(viewer, 0, viewed)
        await call(http, f"{url}/streams/{answer['stream']}/watch", viewer)
        assert await until(lambda: len(viewed) >= 15, 30.0), f"{len(viewed)} relayed frames ({viewer.connectionState})"
        assert_sr_frames(viewed)
        assert selected_pair_types(viewer)[0] == "relay"
        assert "relay" in local_candidate_types(next(iter(app[VIEWERS].values())).pc)

        # a relay each for the sender, the viewer and the server's two peer connections; channels for the media
        assert coturn.granted("srtc-client") >= 2 and coturn.granted("srtc-server") >= 2, coturn.log.read_text()[-3000:]
        assert coturn.granted("srtc-client", "CHANNEL_BIND") >= 2
        await viewer.close()
        await sender.close()
