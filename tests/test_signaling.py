"""Signaling errors get clear 4xx answers, and the server keeps serving afterwards."""

from __future__ import annotations

import dataclasses

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from srtc.server.app import SESSIONS, create_app
from srtc.server.config import ConfigError, NetworkConfig, ServerConfig
from srtc.server.registry import describe


@pytest.fixture
async def client(upscaler, default_model_path):
    config = ServerConfig(port=0, max_body_bytes=16 * 1024)
    app = create_app(config, upscaler, describe(str(default_model_path)))
    async with TestClient(TestServer(app)) as client:
        yield client


JSON = {"Content-Type": "application/json"}


async def expect_error(response, status: int, fragment: str) -> None:
    assert response.status == status, await response.text()
    body = await response.json()
    assert fragment in body["error"], body


async def test_malformed_json_is_a_400(client):
    await expect_error(await client.post("/offer", data=b"{not json", headers=JSON), 400, "not valid JSON")


@pytest.mark.parametrize(
    "body, fragment",
    [
        ([1, 2], "JSON object"),
        ({"sdp": "v=0\r\n", "type": "answer"}, '"type" must be "offer"'),
        ({"sdp": "hello", "type": "offer"}, "SDP"),
        ({"sdp": 42, "type": "offer"}, "SDP"),
        (
            {
                "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n",
                "type": "offer",
            },
            "no video",
        ),
        ({"sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "type": "offer"}, "no DTLS fingerprint"),
        ({"sdp": "v=0\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\na=fingerprint:sha-256 AB\r\n", "type": "offer"}, "port 0"),
        (
            {"sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=fingerprint:sha-256 AB:CD\r\n", "type": "offer"},
            "cannot apply the offer",
        ),
        ({"sdp": "v=0\r\nm=video 9\r\n", "type": "offer", "sr": "yes"}, '"sr" must be'),
    ],
)
async def test_a_body_that_is_not_an_sdp_offer_is_a_400(client, body, fragment):
    """... and leaves no session behind: an offer that fails after its session was made closes it."""
    await expect_error(await client.post("/offer", json=body), 400, fragment)
    assert client.app[SESSIONS] == {}
    assert (await (await client.get("/stats")).json())["totals"]["sessions"] == 0


async def test_an_oversized_body_is_a_413_and_the_server_keeps_serving(client):
    await expect_error(await client.post("/offer", data=b"x" * 64 * 1024, headers=JSON), 413, "too large")
    response = await client.get("/stats")
    assert response.status == 200
    assert (await response.json())["sessions"] == []


async def test_unknown_session_and_bad_sr_switch(client):
    await expect_error(await client.post("/sessions/nope/sr", json={"enabled": False}), 404, "no session")
    await expect_error(await client.delete("/sessions/nope"), 404, "no session")


async def test_the_page_and_its_assets_are_served(client):
    page = await client.get("/")
    assert page.status == 200 and "<video" in await page.text()
    script = await client.get("/static/app.js")
    assert script.status == 200


def test_the_start_up_log_names_the_fast_model_only_when_it_is_used():
    """A fast model that failed its self-check comes back as its info without an upscaler: not a step."""
    from srtc.server.__main__ import governor_steps
    from srtc.server.engine import BicubicUpscaler
    from srtc.server.registry import BICUBIC

    int8 = dataclasses.replace(BICUBIC, name="fast-int8", precision="int8")
    assert "steps down to fast-int8 (int8)" in governor_steps(BicubicUpscaler(), int8)
    refused = governor_steps(None, int8)
    assert "straight to bicubic" in refused and "fast-int8 failed its self-check" in refused
    assert "steps down to" not in refused
    assert "no fast model" in governor_steps(None, None)


def test_out_of_range_settings_are_refused():
    with pytest.raises(ConfigError, match="port"):
        ServerConfig(port=70000)
    with pytest.raises(ConfigError, match="threads"):
        ServerConfig(threads=0)
    with pytest.raises(ConfigError, match="encoder_nice"):
        ServerConfig(encoder_nice=20)
    with pytest.raises(ConfigError, match="encoder_nice"):
        ServerConfig(encoder_nice=-1)
    for seed in (-1, 2**32, 10**400):  # a seed is stored and echoed: only what the generators take
        with pytest.raises(ConfigError, match="seed"):
            NetworkConfig(seed=seed)


async def test_only_the_client_that_opened_a_session_can_switch_it_or_end_it(client):
    """Session ids are listed in /stats; the secret in the offer's answer is what proves ownership."""
    from aiortc import RTCPeerConnection, VideoStreamTrack

    pc = RTCPeerConnection()
    try:
        pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        answer = await (await client.post("/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})).json()
        sid, secret = answer["id"], answer["secret"]
        assert len(secret) >= 20 and sid in {s["id"] for s in (await (await client.get("/stats")).json())["sessions"]}
        for headers in ({}, {"X-Session-Secret": "guess"}, {"X-Session-Secret": secret[:-1]}):
            await expect_error(
                await client.post(f"/sessions/{sid}/sr", json={"enabled": False}, headers=headers),
                403,
                "belongs to the client that opened it",
            )
            await expect_error(await client.delete(f"/sessions/{sid}", headers=headers), 403, "X-Session-Secret")
        stats = (await (await client.get("/stats", params={"id": sid})).json())["sessions"][0]
        assert stats["sr_enabled"] is True  # untouched by the others
        mine = {"X-Session-Secret": secret}
        response = await client.post(f"/sessions/{sid}/sr", json={"enabled": False}, headers=mine)
        assert response.status == 200 and (await response.json())["sr_enabled"] is False
        assert (await client.delete(f"/sessions/{sid}", headers=mine)).status == 200
    finally:
        await pc.close()


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"[" * 12_000, "nested too deeply"),  # within the body limit, far past the JSON parser's depth
        (b'{"enabled": ' + b"9" * 5000 + b"}", "not usable JSON"),
    ],
)
async def test_pathological_json_is_a_400_not_a_500(client, body, fragment):
    for route in ("/offer", "/network"):
        await expect_error(
            await client.post(route, data=body, headers={"Content-Type": "application/json"}), 400, fragment
        )


async def test_another_sites_page_cannot_change_this_server(client):
    """A cross-site form or text/plain POST, a POST with a foreign Origin, and a DNS-rebound Host are refused,
    and nothing changes; the same request from this server's own page is served."""
    offer = '{"sdp": "v=0", "type": "offer"}'
    await expect_error(
        await client.post("/network", data='{"loss": 1}', headers={"Content-Type": "text/plain"}),
        415,
        "application/json",
    )
    await expect_error(await client.post("/offer", data=offer, headers={"Content-Type": "text/plain"}), 415, "JSON")
    evil = {"Origin": "http://evil.example", **JSON}
    await expect_error(await client.post("/network", data='{"loss": 1}', headers=evil), 403, "cross-origin")
    await expect_error(await client.delete("/sessions/anything", headers=evil), 403, "cross-origin")
    rebound = {"Host": "attacker.example:8080", **JSON}
    await expect_error(await client.post("/network", data='{"loss": 1}', headers=rebound), 403, "not served here")
    await expect_error(await client.get("/stats", headers={"Host": "attacker.example"}), 403, "not served here")
    assert (await (await client.get("/network")).json())["settings"]["loss"] == 0
    own = {"Origin": str(client.make_url("")).rstrip("/"), **JSON}
    response = await client.post("/network", data='{"loss": 0.01}', headers=own)
    assert response.status == 200 and (await response.json())["settings"]["loss"] == 0.01


async def test_the_simulated_network_is_changed_only_from_the_servers_machine(upscaler, default_model_path):
    """POST /network changes every client's link: a peer that is not on loopback gets 403 and nothing changes."""
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    from srtc.server.app import NETWORK, set_network

    app = create_app(ServerConfig(port=0, host="0.0.0.0"), upscaler, describe(str(default_model_path)))
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        ("192.0.2.7", 40000) if name == "peername" else default
    )
    request = make_mocked_request("POST", "/network", headers=JSON, app=app, transport=transport)
    with pytest.raises(web.HTTPForbidden) as refused:
        await set_network(request)
    assert "operator" in refused.value.text and app[NETWORK].config.loss == 0
