"""Who may do what, and how much: the operator, a client's own session in /stats, per-address limits, the
slot a never-connected session frees, no version or path in answers, and no 500 for any malformed body.

Test clients run on loopback, which is the operator's machine; "another machine" is simulated by making
the loopback check answer no (the only thing that differs for a remote peer)."""

from __future__ import annotations

import asyncio
import json
import random
import string

import pytest
from aiohttp.test_utils import TestClient, TestServer

from srtc.server import access
from srtc.server import app as app_module
from srtc.server.access import Admission
from srtc.server.app import SESSIONS, create_app
from srtc.server.config import ConfigError, ServerConfig
from srtc.server.registry import describe

TOKEN = "operator-token-for-tests-0123456789"


@pytest.fixture
def remote(monkeypatch):
    """Requests look as if they came from another machine."""
    monkeypatch.setattr(access, "is_loopback_peer", lambda remote: False)
    monkeypatch.setattr(app_module, "is_loopback_peer", lambda remote: False)


async def make_client(upscaler, default_model_path, **settings) -> TestClient:
    config = ServerConfig(port=0, max_body_bytes=16 * 1024, **settings)
    client = TestClient(TestServer(create_app(config, upscaler, describe(str(default_model_path)))))
    await client.start_server()
    return client


async def open_session(client: TestClient):
    """A real aiortc offer (it never connects: nobody answers ICE on the client's side)."""
    from aiortc import RTCPeerConnection, VideoStreamTrack

    pc = RTCPeerConnection()
    pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    response = await client.post("/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
    return pc, response


def test_admission_limits_sessions_held_and_offers_a_minute() -> None:
    now = [0.0]
    admission = Admission(max_per_address=2, offers_per_minute=3, clock=lambda: now[0])
    assert admission.check("10.0.0.1", held=0) is None
    refusal = admission.check("10.0.0.1", held=2)
    assert refusal is not None and refusal.status == 429 and "at most 2 per address" in refusal.message
    assert admission.check("10.0.0.1", held=1) is None and admission.check("10.0.0.1", held=1) is None
    refusal = admission.check("10.0.0.1", held=0)  # the fourth offer within the minute
    assert refusal is not None and "3 a minute" in refusal.message and refusal.retry_after_s == 60
    assert admission.check("10.0.0.2", held=0) is None  # another address has its own budget
    now[0] = 30.0
    assert admission.check("10.0.0.1", held=0).retry_after_s == 30
    now[0] = 60.0  # the first offers left the window
    assert admission.check("10.0.0.1", held=0) is None


def test_the_operator_is_this_machine_or_the_token() -> None:
    assert access.is_operator("127.0.0.1", None, None) and access.is_operator("::1", None, TOKEN)
    assert not access.is_operator("192.0.2.7", None, None)
    assert not access.is_operator("192.0.2.7", TOKEN, None)  # no token configured: none is accepted
    assert not access.is_operator("192.0.2.7", TOKEN[:-1], TOKEN)
    assert access.is_operator("192.0.2.7", TOKEN, TOKEN)
    with pytest.raises(ConfigError, match="16 characters"):
        ServerConfig(operator_token="short")


async def test_another_machine_sees_only_its_own_session_and_the_totals(upscaler, default_model_path, remote):
    client = await make_client(upscaler, default_model_path)
    pcs = []
    try:
        answers = []
        for _ in range(2):
            pc, response = await open_session(client)
            pcs.append(pc)
            assert response.status == 200, await response.text()
            answers.append(await response.json())
        anonymous = await (await client.get("/stats")).json()
        assert anonymous["sessions"] == [] and anonymous["totals"]["sessions"] == 2
        assert answers[0]["id"] not in json.dumps(anonymous)  # no other session's id leaks
        mine = await client.get(
            "/stats", params={"id": answers[0]["id"]}, headers={"X-Session-Secret": answers[0]["secret"]}
        )
        assert [s["id"] for s in (await mine.json())["sessions"]] == [answers[0]["id"]]
        guessed = await client.get("/stats", params={"id": answers[1]["id"]}, headers={"X-Session-Secret": "x"})
        assert (await guessed.json())["sessions"] == []
        operator = await client.get("/stats", headers={"X-Operator-Token": TOKEN})
        assert (await operator.json())["sessions"] == []  # no token configured on this server
    finally:
        for pc in pcs:
            await pc.close()
        await client.close()


async def test_the_operator_token_opens_the_network_and_every_session(upscaler, default_model_path, remote):
    client = await make_client(upscaler, default_model_path, operator_token=TOKEN)
    pc = None
    try:
        refused = await client.post("/network", json={"loss": 0.1})
        assert refused.status == 403 and "X-Operator-Token" in (await refused.json())["error"]
        allowed = await client.post("/network", json={"loss": 0.1}, headers={"X-Operator-Token": TOKEN})
        assert allowed.status == 200 and (await allowed.json())["settings"]["loss"] == 0.1
        pc, response = await open_session(client)
        sid = (await response.json())["id"]
        every = await (await client.get("/stats", headers={"X-Operator-Token": TOKEN})).json()
        assert [s["id"] for s in every["sessions"]] == [sid]
    finally:
        if pc is not None:
            await pc.close()
        await client.close()


async def test_one_address_cannot_take_every_slot(upscaler, default_model_path, remote):
    """Without the limit, one client's two offers would hold both slots; with it, the second is a 429 and
    a slot stays free for someone else."""
    client = await make_client(upscaler, default_model_path, max_sessions=2, max_sessions_per_address=1)
    pcs = []
    try:
        pc, first = await open_session(client)
        pcs.append(pc)
        assert first.status == 200
        pc, second = await open_session(client)
        pcs.append(pc)
        assert second.status == 429 and "at most 1 per address" in (await second.json())["error"]
        assert len(client.app[SESSIONS]) == 1
    finally:
        for pc in pcs:
            await pc.close()
        await client.close()


async def test_too_many_offers_a_minute_is_a_429_with_retry_after(upscaler, default_model_path, remote):
    client = await make_client(upscaler, default_model_path, offers_per_minute=2)
    pcs = []
    try:
        statuses = []
        for _ in range(3):
            pc, response = await open_session(client)
            pcs.append(pc)
            statuses.append(response.status)
        assert statuses == [200, 200, 429] and int(response.headers["Retry-After"]) > 0
    finally:
        for pc in pcs:
            await pc.close()
        await client.close()


async def test_a_session_that_never_connects_frees_its_slot(upscaler, default_model_path):
    client = await make_client(upscaler, default_model_path, max_sessions=1, connect_timeout_s=1.0)
    pc = None
    try:
        pc, first = await open_session(client)
        assert first.status == 200
        await pc.close()  # the client goes away before ICE completes
        _, full = await open_session(client)
        assert full.status == 503
        for _ in range(40):  # bounded: 4 s
            if not client.app[SESSIONS]:
                break
            await asyncio.sleep(0.1)
        assert not client.app[SESSIONS], "the unconnected session still holds the slot"
        pc, again = await open_session(client)
        assert again.status == 200
    finally:
        if pc is not None:
            await pc.close()
        await client.close()


async def test_no_versions_or_paths_in_answers_and_no_cors(upscaler, default_model_path):
    client = await make_client(upscaler, default_model_path)
    try:
        response = await client.get("/stats")
        assert response.headers["Server"] == "srtc"
        model = (await response.json())["model"]
        assert model["path"] == default_model_path.name and str(default_model_path.parent) not in json.dumps(model)
        preflight = await client.options("/offer", headers={"Origin": "http://evil.example"})
        assert preflight.status == 403 and "Access-Control-Allow-Origin" not in preflight.headers
        assert "cross-origin" in (await preflight.json())["error"]
        missing = await client.get("/no-such-page")
        assert missing.status == 404 and "error" in await missing.json()
    finally:
        await client.close()


def malformed_bodies(seed: int, count: int) -> list[bytes]:
    """Seeded junk: random bytes, truncated and mistyped JSON, deep nesting, huge numbers, wrong shapes."""
    rng = random.Random(seed)
    shapes = [
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200))),
        lambda: json.dumps({"sdp": rng.random(), "type": rng.choice(["offer", 1, None, []])}).encode(),
        lambda: json.dumps(rng.choice([[], {}, 1, "x", None, True, {"enabled": "yes"}])).encode(),
        lambda: json.dumps(
            {"sdp": "".join(rng.choices(string.printable, k=rng.randint(0, 300))), "type": "offer"}
        ).encode(),
        lambda: b"{" * rng.randint(1, 3000),
        lambda: b'{"loss": ' + b"9" * rng.randint(1, 6000) + b"}",
        lambda: json.dumps(
            {k: rng.random() * 10 ** rng.randint(0, 40) for k in ("loss", "kbps", "seed", "burst")}
        ).encode(),
        lambda: b'{"sdp": "v=0\\r\\n' + bytes(rng.getrandbits(7) for _ in range(100)) + b'", "type": "offer"}',
        lambda: json.dumps({"enabled": rng.choice([1, 0, "true", None])})[: rng.randint(1, 20)].encode(),
    ]
    return [rng.choice(shapes)() for _ in range(count)]


async def test_a_thousand_malformed_bodies_per_route_get_no_500(upscaler, default_model_path):
    client = await make_client(upscaler, default_model_path)
    try:
        routes = [("POST", "/offer"), ("POST", "/network"), ("POST", "/sessions/nosuch/sr"), ("DELETE", "/sessions/x")]
        for index, (method, path) in enumerate(routes):
            for body in malformed_bodies(seed=index, count=1000):
                response = await client.request(method, path, data=body, headers={"Content-Type": "application/json"})
                assert response.status < 500, (method, path, body[:80], await response.text())
                if response.status >= 400:
                    assert "error" in await response.json()
        assert client.app[SESSIONS] == {}  # no junk became a session
    finally:
        await client.close()
