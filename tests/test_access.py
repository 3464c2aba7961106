"""Who may do what, and how much: the operator, a client's own session in /stats, per-address limits, the
client behind a trusted proxy, the allowed Host names, the slot a never-connected session frees, no version
or path in answers, and no 500 for any malformed body.

Test clients run on loopback, which is the operator's machine; "another machine" is simulated by making
the loopback check answer no (the only thing that differs for a remote peer), or by a trusted proxy on
loopback forwarding another address."""

from __future__ import annotations

import asyncio
import json
import random
import string

import pytest
from aiohttp.test_utils import TestClient, TestServer

from srtc.server import access
from srtc.server.access import Admission, Client, parse_networks, resolve_client
from srtc.server.app import SESSIONS, VIEWERS, create_app
from srtc.server.config import ConfigError, ServerConfig
from srtc.server.registry import describe

TOKEN = "operator-token-for-tests-0123456789"


@pytest.fixture
def remote(monkeypatch):
    """Requests look as if they came from another machine."""
    monkeypatch.setattr(access, "is_loopback_peer", lambda remote: False)


async def make_client(upscaler, default_model_path, **settings) -> TestClient:
    config = ServerConfig(port=0, **{"max_body_bytes": 16 * 1024, **settings})
    client = TestClient(TestServer(create_app(config, upscaler, describe(str(default_model_path)))))
    await client.start_server()
    return client


async def open_session(client: TestClient, headers: dict[str, str] | None = None):
    """A real aiortc offer (it never connects: nobody answers ICE on the client's side)."""
    from aiortc import RTCPeerConnection, VideoStreamTrack

    pc = RTCPeerConnection()
    pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    response = await client.post("/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}, headers=headers)
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
    assert access.is_operator(Client("127.0.0.1"), None, None) and access.is_operator(Client("::1"), None, TOKEN)
    assert not access.is_operator(Client("192.0.2.7"), None, None)
    assert not access.is_operator(Client("192.0.2.7"), TOKEN, None)  # no token configured: none is accepted
    assert not access.is_operator(Client("192.0.2.7"), TOKEN[:-1], TOKEN)
    assert access.is_operator(Client("192.0.2.7"), TOKEN, TOKEN)
    # what a proxy on this machine passes on is not this machine, whatever address it forwards
    assert not access.is_operator(Client("127.0.0.1", proxied=True), None, None)
    assert access.is_operator(Client("127.0.0.1", proxied=True), TOKEN, TOKEN)
    with pytest.raises(ConfigError, match="16 characters"):
        ServerConfig(operator_token="short")


def test_behind_a_trusted_proxy_the_client_is_the_rightmost_address_it_did_not_add_itself() -> None:
    proxies = parse_networks(["127.0.0.1", "10.0.0.0/8"])
    # the client put 198.51.100.1 in front; the outer proxy appended the client, the inner one the outer proxy
    chain = ["198.51.100.1, 203.0.113.5", "10.1.2.3"]
    assert resolve_client("127.0.0.1", chain, proxies) == Client("203.0.113.5", proxied=True)
    assert resolve_client("127.0.0.1", ["2001:db8::7"], proxies) == Client("2001:db8::7", proxied=True)
    assert resolve_client("127.0.0.1", [], proxies) == Client("127.0.0.1", proxied=True)  # the proxy itself
    assert resolve_client("127.0.0.1", ["not-an-address"], proxies) == Client("unknown", proxied=True)
    # from a peer that is no trusted proxy, the header is the client's own claim: ignored
    assert resolve_client("192.0.2.7", ["203.0.113.5"], proxies) == Client("192.0.2.7")
    assert resolve_client("127.0.0.2", ["203.0.113.5"], proxies) == Client("127.0.0.2")
    assert resolve_client("127.0.0.1", ["203.0.113.5"], ()) == Client("127.0.0.1")
    assert resolve_client(None, [], proxies) == Client("unknown")
    assert Client("127.0.0.1").local and not Client("127.0.0.1", proxied=True).local
    for bad in (("localhost",), ("10.0.0.0/33",), ("",)):
        with pytest.raises(ConfigError, match="trusted_proxies"):
            ServerConfig(trusted_proxies=bad)
    for bad in (("sr.example.org:443",), ("https://sr.example.org",), ("[::1]",), ("*.example.org",), ("",)):
        with pytest.raises(ConfigError, match="allowed_hosts"):
            ServerConfig(allowed_hosts=bad)
    assert ServerConfig(allowed_hosts=("sr.example.org", "127.0.0.1", "::1")).allowed_hosts[0] == "sr.example.org"


def test_the_command_line_takes_the_proxies_and_the_allowed_hosts() -> None:
    from srtc.server.__main__ import parse_args

    config = parse_args(["--trusted-proxy", "127.0.0.1", "::1", "--allowed-hosts", "sr.example.org", "localhost"])
    assert config.trusted_proxies == ("127.0.0.1", "::1") and config.allowed_hosts == ("sr.example.org", "localhost")
    assert parse_args([]).trusted_proxies == () and parse_args([]).allowed_hosts == ()
    with pytest.raises(SystemExit):
        parse_args(["--trusted-proxy", "proxy.example.org"])


async def test_a_trusted_proxy_on_this_machine_forwards_clients_not_the_operator(upscaler, default_model_path):
    """Through a proxy on loopback, each forwarded address has its own limits and owns its sessions, and none
    is the operator but by the token; a peer that is no trusted proxy cannot claim an address."""
    client = await make_client(
        upscaler, default_model_path, trusted_proxies=("127.0.0.1",), max_sessions_per_address=1, operator_token=TOKEN
    )
    alice, bob = {"X-Forwarded-For": "198.51.100.1, 203.0.113.5"}, {"X-Forwarded-For": "203.0.113.6"}
    pcs = []
    try:
        pc, first = await open_session(client, alice)
        pcs.append(pc)
        assert first.status == 200, await first.text()
        assert client.app[SESSIONS][(await first.json())["id"]].peer_address == "203.0.113.5"
        pc, again = await open_session(client, {"X-Forwarded-For": "203.0.113.5"})
        pcs.append(pc)
        assert again.status == 429 and "203.0.113.5 already holds 1" in (await again.json())["error"]
        pc, other = await open_session(client, bob)
        pcs.append(pc)
        assert other.status == 200 and client.app[SESSIONS][(await other.json())["id"]].peer_address == "203.0.113.6"
        for headers in (alice, {"X-Forwarded-For": "127.0.0.1"}, {}):  # the proxy's own requests too
            refused = await client.post("/network", json={"loss": 0.1}, headers=headers)
            assert refused.status == 403 and "operator" in (await refused.json())["error"]
            assert (await (await client.get("/stats", headers=headers)).json())["sessions"] == []
        allowed = await client.post("/network", json={"loss": 0.1}, headers={**alice, "X-Operator-Token": TOKEN})
        assert allowed.status == 200
    finally:
        for pc in pcs:
            await pc.close()
        await client.close()


async def test_x_forwarded_for_from_a_peer_that_is_no_trusted_proxy_is_ignored(upscaler, default_model_path):
    client = await make_client(upscaler, default_model_path, trusted_proxies=("10.0.0.0/8",))
    pc = None
    try:
        forged = {"X-Forwarded-For": "203.0.113.5"}
        pc, response = await open_session(client, forged)
        assert response.status == 200
        assert client.app[SESSIONS][(await response.json())["id"]].peer_address == "127.0.0.1"
        changed = await client.post("/network", json={"loss": 0.1}, headers=forged)  # still this machine
        assert changed.status == 200
    finally:
        if pc is not None:
            await pc.close()
        await client.close()


async def test_only_the_allowed_host_names_are_served(upscaler, default_model_path):
    """With --allowed-hosts, another Host is a 403 on every route, and a POST's Origin may name an allowed host
    (the proxy's public name) whatever Host reached the server."""
    client = await make_client(upscaler, default_model_path, allowed_hosts=("sr.example.org", "127.0.0.1"))
    json_type = {"Content-Type": "application/json"}
    try:
        for host in ("sr.example.org", "SR.example.org:443", "127.0.0.1:8080"):
            assert (await client.get("/stats", headers={"Host": host})).status == 200, host
        for host in ("localhost", "evil.example", "sr.example.org.evil.example"):
            for method, path in (("GET", "/"), ("GET", "/stats"), ("POST", "/network")):
                response = await client.request(method, path, data="{}", headers={"Host": host, **json_type})
                assert response.status == 403, (host, path)
                assert "not among the server's --allowed-hosts" in (await response.json())["error"]
        proxied = {"Host": "127.0.0.1", "Origin": "https://sr.example.org", **json_type}
        response = await client.post("/network", data='{"loss": 0.01}', headers=proxied)
        assert response.status == 200, await response.text()
        for origin in ("https://evil.example", "http://[", "null"):
            refused = await client.post("/network", data='{"loss": 0.5}', headers={**proxied, "Origin": origin})
            assert refused.status == 403 and "cross-origin" in (await refused.json())["error"]
        assert (await (await client.get("/network")).json())["settings"]["loss"] == 0.01
    finally:
        await client.close()


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


def nested(rng: random.Random) -> bytes:
    """Arrays or objects nested far past the JSON parser's depth (up to 50,000 deep), closed or not."""
    depth = rng.randint(1_000, 50_000)
    if rng.random() < 0.5:
        opened, closed = b"[" * depth, b"]" * depth
    else:
        depth //= 6  # 6 bytes a level: within the body limit
        opened, closed = b'{"a": ' * depth, b"}" * depth
    return opened + b"1" + (closed if rng.random() < 0.5 else b"")


def huge_number(rng: random.Random) -> bytes:
    """Integers past Python's 4,300-digit limit and just within it, huge exponents, NaN and Infinity."""
    key = rng.choice([b"enabled", b"loss", b"seed", b"kbps", b"sdp", b"type"])
    value = rng.choice(
        [
            b"9" * rng.randint(4_000, 20_000),
            b"-" + b"1" * rng.randint(4_300, 9_000),
            b"1e" + str(rng.randint(300, 10**6)).encode(),
            b"NaN",
            b"-Infinity",
        ]
    )
    return b'{"' + key + b'": ' + value + b"}" if rng.random() < 0.8 else value


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
        lambda: nested(rng),
        lambda: huge_number(rng),
    ]
    return [rng.choice(shapes)() for _ in range(count)]


async def test_a_thousand_malformed_bodies_per_route_get_no_500(upscaler, default_model_path):
    """Every body parser sees the junk: the SR switch and the watch route are asked of a live session and
    stream, with the session's secret, so nothing is refused before its body is read."""
    client = await make_client(upscaler, default_model_path, max_body_bytes=64 * 1024, connect_timeout_s=600.0)
    pc = None
    try:
        pc, response = await open_session(client)
        answer = await response.json()
        owner = {"X-Session-Secret": answer["secret"]}
        routes = [
            ("POST", "/offer", {}),
            ("POST", "/network", {}),
            ("POST", f"/sessions/{answer['id']}/sr", owner),
            ("POST", f"/streams/{answer['stream']}/watch", {}),
            ("DELETE", "/sessions/x", {}),
        ]
        for index, (method, path, headers) in enumerate(routes):
            unparsable = 0  # bodies the route's parser read and refused: it was reached
            for body in malformed_bodies(seed=index, count=1000):
                sent = {**headers, "Content-Type": "application/json"}
                response = await client.request(method, path, data=body, headers=sent)
                assert response.status < 500, (method, path, body[:80], await response.text())
                if response.status >= 400:
                    error = (await response.json())["error"]
                    unparsable += error.startswith(("body is not", "body is nested"))
            assert method == "DELETE" or unparsable > 300, (path, unparsable)
        assert list(client.app[SESSIONS]) == [answer["id"]] and client.app[VIEWERS] == {}  # no junk became one
    finally:
        if pc is not None:
            await pc.close()
        await client.close()
