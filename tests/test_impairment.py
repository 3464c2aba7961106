"""The network impairment simulator: its models (seeded, so every figure here repeats exactly), the hook
into aiortc's ICE transport, and ``GET``/``POST /network``.

Tolerances: the loss models are checked over 100k packets to 10% (relative) of the set loss rate and mean
burst length, which is 4 standard errors or more for every setting tested; the link's throughput under
2x overload to 3% of its capacity (the only error is the packet that straddles the window's end).
"""

from __future__ import annotations

import asyncio
import statistics

import av
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCPeerConnection, VideoStreamTrack

from srtc.server.__main__ import parse_command_line
from srtc.server.app import NETWORK, create_app
from srtc.server.config import ConfigError, NetworkConfig, ServerConfig
from srtc.server.impairment import (
    GilbertElliottLoss,
    Impairment,
    NetworkControl,
    attach,
    classify,
)
from srtc.server.registry import describe

N = 100_000


def loss_pattern(config: NetworkConfig, n: int = N) -> list[bool]:
    impairment = Impairment(config)
    return [impairment.admit(1000, i * 0.001) is None for i in range(n)]


def burst_lengths(pattern: list[bool]) -> list[int]:
    runs, run = [], 0
    for lost in pattern:
        if lost:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    return runs + ([run] if run else [])


# ---------------------------------------------------------------------------------------- loss model


@pytest.mark.parametrize("p, b", [(0.05, 1), (0.05, 2), (0.2, 4)])
def test_long_run_loss_rate_and_mean_burst_length(p, b):
    pattern = loss_pattern(NetworkConfig(loss=p, burst=b, seed=7))
    bursts = burst_lengths(pattern)
    rate, mean_burst = sum(pattern) / len(pattern), statistics.fmean(bursts)
    # b = 1 is independent loss, whose runs of losses have mean 1 / (1 - p)
    expected_burst = 1 / (1 - p) if b == 1 else b
    assert rate == pytest.approx(p, rel=0.10), rate
    assert mean_burst == pytest.approx(expected_burst, rel=0.10), mean_burst


def test_independent_loss_has_no_memory_and_bursty_loss_has():
    def p_loss_after_loss(pattern):
        after = [b for a, b in zip(pattern, pattern[1:]) if a]
        return sum(after) / len(after)

    assert p_loss_after_loss(loss_pattern(NetworkConfig(loss=0.2, burst=1, seed=3))) == pytest.approx(0.2, abs=0.02)
    # in the bad state a loss is followed by another with probability 1 - 1/b
    assert p_loss_after_loss(loss_pattern(NetworkConfig(loss=0.2, burst=4, seed=3))) == pytest.approx(0.75, abs=0.03)


def test_the_same_seed_repeats_the_drop_pattern_exactly():
    config = NetworkConfig(loss=0.1, burst=3, seed=42)
    assert loss_pattern(config, 20_000) == loss_pattern(config, 20_000)
    assert loss_pattern(config, 20_000) != loss_pattern(NetworkConfig(loss=0.1, burst=3, seed=43), 20_000)
    # jitter draws from its own stream: the drop pattern does not depend on the delay settings
    jittered = NetworkConfig(loss=0.1, burst=3, seed=42, delay_ms=30, jitter_ms=10)
    assert loss_pattern(jittered, 20_000) == loss_pattern(config, 20_000)


def test_loss_zero_and_one():
    assert not any(loss_pattern(NetworkConfig(loss=0.0, burst=5), 5000))
    assert all(loss_pattern(NetworkConfig(loss=1.0, burst=5), 5000))
    assert all(loss_pattern(NetworkConfig(loss=1.0), 5000))


def test_gilbert_probabilities_follow_the_documented_formulas():
    model = GilbertElliottLoss(0.2, 4, rng=None)
    assert model.p_bad_good == pytest.approx(1 / 4)
    assert model.p_good_bad == pytest.approx(0.2 / (4 * 0.8))
    stationary_bad = model.p_good_bad / (model.p_good_bad + model.p_bad_good)
    assert stationary_bad == pytest.approx(0.2)


# ---------------------------------------------------------------------------------------- link


def offer_at_rate(impairment: Impairment, kbps: float, seconds: float, size: int = 1200):
    """Packets of ``size`` bytes at a constant ``kbps`` for ``seconds``: a list of (sent, delivered or None)."""
    interval = size * 8 / (kbps * 1000)
    return [(i * interval, impairment.admit(size, i * interval)) for i in range(int(seconds / interval))]


def test_link_under_2x_overload_delivers_its_capacity_queues_up_to_queue_ms_then_drops():
    capacity, queue_ms = 1000, 200
    impairment = Impairment(NetworkConfig(kbps=capacity, queue_ms=queue_ms))
    results = offer_at_rate(impairment, 2 * capacity, seconds=10.0)
    delivered = [(sent, at) for sent, at in results if at is not None]

    # throughput in the steady part (after the queue has filled): the capacity, within 3%
    window = [at for sent, at in delivered if 1.0 <= at <= 9.0]
    throughput_kbps = len(window) * 1200 * 8 / (window[-1] - window[0]) / 1000
    assert throughput_kbps == pytest.approx(capacity, rel=0.03)

    # queueing delay grows at 1 s per s (arrivals at twice the service rate) until it reaches queue_ms ...
    waits = [(at - sent) * 1000 for sent, at in delivered]
    assert max(waits) <= queue_ms + 10  # + one packet's serialisation (9.6 ms)
    stats = impairment.stats()
    assert stats["queue_delay_ms"]["p50"] >= 0.95 * queue_ms and stats["queue_delay_ms"]["p95"] <= queue_ms
    # ... and only then does the queue drop packets: the first drop comes when the queue is full
    first_drop = next(sent for sent, at in results if at is None)
    assert first_drop == pytest.approx(queue_ms / 1000, abs=0.02)
    assert stats["lost_packets"] == 0
    assert stats["queue_dropped_packets"] / stats["offered_packets"] == pytest.approx(0.5, abs=0.03)
    assert stats["delivered_packets"] + stats["queue_dropped_packets"] == stats["offered_packets"]


def test_link_below_capacity_adds_only_serialisation_and_never_drops():
    impairment = Impairment(NetworkConfig(kbps=2000, queue_ms=50))
    results = offer_at_rate(impairment, 1000, seconds=5.0)
    assert all(at is not None for _, at in results)
    assert max(at - sent for sent, at in results) == pytest.approx(1200 * 8 / 2e6)  # 4.8 ms per packet
    assert impairment.stats()["queue_delay_ms"]["p95"] == 0.0


def test_unlimited_link_has_no_queue():
    impairment = Impairment(NetworkConfig(kbps=0))
    results = offer_at_rate(impairment, 100_000, seconds=0.5)
    assert all(at == sent for sent, at in results)


# ---------------------------------------------------------------------------------------- delay and jitter


def test_delay_and_jitter_statistics():
    impairment = Impairment(NetworkConfig(delay_ms=100, jitter_ms=10, reorder=True, seed=5))
    delays = np.array([(impairment.admit(1000, i * 0.01) - i * 0.01) * 1000 for i in range(20_000)])
    assert delays.mean() == pytest.approx(100, abs=0.5)
    assert delays.std() == pytest.approx(10, rel=0.05)
    steady = Impairment(NetworkConfig(delay_ms=40))
    assert steady.admit(500, 3.0) == pytest.approx(3.04)


def test_jitter_never_makes_a_delay_negative():
    impairment = Impairment(NetworkConfig(delay_ms=5, jitter_ms=20, reorder=True, seed=1))
    assert all(impairment.admit(100, i * 0.01) >= i * 0.01 for i in range(5000))


def test_no_reordering_by_default_and_reordering_when_asked():
    def delivery_times(reorder: bool) -> list[float]:
        impairment = Impairment(NetworkConfig(delay_ms=50, jitter_ms=30, reorder=reorder, seed=2))
        return [impairment.admit(1200, i * 0.002) for i in range(5000)]

    in_order = delivery_times(False)
    assert all(b >= a for a, b in zip(in_order, in_order[1:]))
    shuffled = delivery_times(True)
    assert sum(b < a for a, b in zip(shuffled, shuffled[1:])) > 100


# ---------------------------------------------------------------------------------------- settings


def test_network_config_validation_names_the_field_and_its_range():
    with pytest.raises(ConfigError, match=r"loss must be in 0\.\.1, got 1\.5"):
        NetworkConfig(loss=1.5)
    with pytest.raises(ConfigError, match=r"burst must be in 1\.\.100"):
        NetworkConfig(burst=0.5)
    with pytest.raises(ConfigError, match=r"kbps must be in 10\.\.100000 \(or 0 = unlimited\)"):
        NetworkConfig(kbps=5)
    with pytest.raises(ConfigError, match=r"queue_ms must be in 1\.\.10000"):
        NetworkConfig(queue_ms=0)
    with pytest.raises(ConfigError, match="delay_ms"):
        NetworkConfig(delay_ms=-1)
    with pytest.raises(ConfigError, match="jitter_ms"):
        NetworkConfig(jitter_ms=2000)
    with pytest.raises(ConfigError, match="seed must be an integer"):
        NetworkConfig(seed=1.5)
    with pytest.raises(ConfigError, match="reorder must be true or false"):
        NetworkConfig(reorder="yes")
    with pytest.raises(ConfigError, match="loss must be a number"):
        NetworkConfig(loss=True)
    with pytest.raises(ConfigError, match=r"burst must be >= loss/\(1-loss\)"):
        NetworkConfig(loss=0.9, burst=2)  # P(good->bad) would exceed 1
    with pytest.raises(ConfigError, match="unknown network setting"):
        NetworkConfig.from_json({"los": 0.1})
    assert NetworkConfig.from_json({"kbps": None}, NetworkConfig(kbps=500, loss=0.1)) == NetworkConfig(loss=0.1)
    assert NetworkConfig().replace(delay_ms=20).delay_ms == 20
    assert not NetworkConfig().active and NetworkConfig(delay_ms=1).active


def test_impairment_update_applies_to_the_next_packet_and_keeps_the_queue():
    impairment = Impairment(NetworkConfig(kbps=100, queue_ms=1000))
    impairment.admit(1250, 0.0)  # 100 ms on the wire
    impairment.update({"delay_ms": 30})
    assert impairment.admit(1250, 0.0) == pytest.approx(0.2 + 0.03)  # behind the first packet, then delayed
    impairment.update({"loss": 1.0})
    assert impairment.admit(1250, 0.0) is None
    with pytest.raises(ConfigError, match="loss"):
        impairment.update({"loss": 2})
    assert impairment.config.loss == 1.0


def test_command_line_flags_build_the_network_config():
    _, network = parse_command_line(
        [
            "--loss",
            "0.05",
            "--burst",
            "2",
            "--kbps",
            "800",
            "--delay-ms",
            "40",
            "--jitter-ms",
            "5",
            "--queue-ms",
            "300",
            "--seed",
            "9",
            "--reorder",
        ]
    )
    assert network == NetworkConfig(
        loss=0.05, burst=2, kbps=800, delay_ms=40, jitter_ms=5, queue_ms=300, seed=9, reorder=True
    )
    assert parse_command_line([])[1] == NetworkConfig()


# ---------------------------------------------------------------------------------------- the aiortc hook

STUN = bytes([0x00, 0x01]) + bytes(18)
DTLS = bytes([22, 0xFE, 0xFD]) + bytes(20)
RTP = bytes([0x80, 96]) + bytes(100)
RTP_MARKER = bytes([0x80, 0x80 | 96]) + bytes(100)
RTCP = bytes([0x81, 201]) + bytes(30)


class FakeIce:
    """Stands in for aiortc's RTCIceTransport: ``_recv`` reads datagrams, ConnectionError when closed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._recv = self._read

    async def _read(self) -> bytes:
        data = await self.queue.get()
        if data is None:
            raise ConnectionError("Connection lost while receiving data")
        return data

    def feed(self, *datagrams: bytes | None) -> None:
        for datagram in datagrams:
            self.queue.put_nowait(datagram)


async def read_all(ice: FakeIce, timeout: float = 0.3) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(await asyncio.wait_for(ice._recv(), timeout))
        except asyncio.TimeoutError:
            return out


def test_classification_follows_rfc_7983():
    assert [classify(d) for d in (STUN, DTLS, RTP, RTP_MARKER, RTCP, b"\x40\x00", b"")] == [
        "stun",
        "dtls",
        "rtp",
        "rtp",
        "rtcp",
        "other",
        "other",
    ]
    assert classify(bytes([0x80, 200])) == "rtcp" and classify(bytes([0x80, 223])) == "rtcp"


async def test_stun_and_dtls_pass_at_loss_one_rtp_and_rtcp_do_not():
    ice = FakeIce()
    handle = attach(ice, Impairment(NetworkConfig(loss=1.0)))
    ice.feed(STUN, RTP, DTLS, RTCP, RTP_MARKER, DTLS)
    assert await read_all(ice) == [STUN, DTLS, DTLS]
    stats = handle.stats()
    assert stats["rtp"] == {"packets": 2, "bytes": 2 * len(RTP), "dropped": 2, "delivered": 0}
    assert stats["rtcp"]["dropped"] == 1 and stats["stun"]["delivered"] == 1 and stats["dtls"]["delivered"] == 2
    handle.stop()


async def test_rtcp_bypasses_the_impairment_when_impair_rtcp_is_off():
    ice = FakeIce()
    handle = attach(ice, Impairment(NetworkConfig(loss=1.0, impair_rtcp=False)))
    ice.feed(RTP, RTCP)
    assert await read_all(ice) == [RTCP]
    handle.stop()


async def test_rtp_is_delayed_in_order_while_dtls_passes_at_once():
    loop = asyncio.get_running_loop()
    ice = FakeIce()
    handle = attach(ice, Impairment(NetworkConfig(delay_ms=80)))
    rtp = [bytes([0x80, 96, 0, n]) + bytes(50) for n in range(5)]
    start = loop.time()
    ice.feed(*rtp[:3], DTLS, *rtp[3:])
    arrivals = []
    for _ in range(6):
        data = await asyncio.wait_for(ice._recv(), 1.0)
        arrivals.append((data, loop.time() - start))
    assert arrivals[0] == (DTLS, pytest.approx(0.0, abs=0.03))  # not held behind the delayed RTP
    assert [data for data, _ in arrivals[1:]] == rtp  # in order
    assert all(0.075 <= at <= 0.2 for _, at in arrivals[1:]), arrivals
    handle.stop()


async def test_a_waiting_read_can_be_cancelled_without_losing_a_packet():
    ice = FakeIce()
    handle = attach(ice, Impairment(NetworkConfig(delay_ms=100)))
    ice.feed(RTP)
    with pytest.raises(asyncio.TimeoutError):  # as aiortc's DTLS handshake does with its retransmit timer
        await asyncio.wait_for(ice._recv(), 0.02)
    assert await asyncio.wait_for(ice._recv(), 1.0) == RTP
    handle.stop()


async def test_connection_error_reaches_the_reader_and_stop_restores_the_transport():
    ice = FakeIce()
    original = ice._recv
    handle = attach(ice, Impairment())
    ice.feed(RTP, None)
    assert await asyncio.wait_for(ice._recv(), 1.0) == RTP  # what was due is delivered first
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(ice._recv(), 1.0)
    with pytest.raises(ConnectionError):  # and on every read after
        await asyncio.wait_for(ice._recv(), 1.0)
    handle.stop()
    assert ice._recv == original

    # a packet still in flight when the transport closes is lost with the link
    ice1 = FakeIce()
    handle1 = attach(ice1, Impairment(NetworkConfig(delay_ms=50)))
    ice1.feed(RTP, None)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(ice1._recv(), 1.0)
    assert handle1.stats()["rtp"]["dropped"] == 1
    handle1.stop()

    ice2 = FakeIce()
    handle2 = attach(ice2, Impairment())
    reader = asyncio.ensure_future(ice2._recv())
    await asyncio.sleep(0.01)
    pump = handle2._pump
    handle2.stop()  # a reader still waiting falls through to the original _recv
    await asyncio.sleep(0)
    assert pump.cancelled() or pump.done()
    ice2.feed(DTLS)
    assert await asyncio.wait_for(reader, 1.0) == DTLS
    handle2.stop()  # idempotent


async def test_a_runtime_update_reaches_an_attached_path():
    control = NetworkControl()
    ice = FakeIce()
    impairment = control.new_impairment()
    handle = attach(ice, impairment)
    ice.feed(RTP)
    assert await read_all(ice, 0.1) == [RTP]
    control.update({"loss": 1.0})
    ice.feed(RTP, DTLS)
    assert await read_all(ice, 0.1) == [DTLS]
    assert impairment.config.loss == 1.0 and impairment.stats()["lost_packets"] == 1
    handle.stop()


# ---------------------------------------------------------------------------------------- a real aiortc pair


class SmallFrames(VideoStreamTrack):
    """A tiny video source so that encoding costs nothing: 64x64 grey frames at 30 fps."""

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8), format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


async def test_attach_peer_on_real_aiortc_peers_sees_every_class_and_stops_on_close():
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    control = NetworkControl(NetworkConfig(delay_ms=20, jitter_ms=5, seed=1))
    frames = asyncio.Queue()

    @receiver.on("track")
    def on_track(track):
        async def drain():
            while True:
                try:
                    frames.put_nowait(await track.recv())
                except Exception:
                    return

        asyncio.ensure_future(drain())

    try:
        sender.addTransceiver(SmallFrames(), direction="sendonly")
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        path = control.attach_peer(receiver)  # the wiring session.py does after setRemoteDescription
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        for _ in range(5):
            await asyncio.wait_for(frames.get(), 10.0)
        classes = control.stats()["classes"]
        assert classes["dtls"]["delivered"] > 0 and classes["rtp"]["delivered"] > 0
        control.update({"loss": 1.0})
        dropped = classes["rtp"]["dropped"]
        await asyncio.sleep(0.3)
        assert control.stats()["classes"]["rtp"]["dropped"] > dropped
    finally:
        await sender.close()
        await receiver.close()
    await asyncio.sleep(0.05)
    stats = control.stats()
    assert stats["sessions"] == 0 and stats["sessions_total"] == 1 and stats["counters"]["offered_packets"] > 0
    assert all(h.stopped for h in path.handles)


# ---------------------------------------------------------------------------------------- GET / POST /network


@pytest.fixture
async def client(upscaler, default_model_path):
    app = create_app(ServerConfig(port=0), upscaler, describe(str(default_model_path)), NetworkConfig(delay_ms=10))
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_get_network_shape(client):
    response = await client.get("/network")
    assert response.status == 200
    body = await response.json()
    assert set(body) == {"settings", "active", "sessions", "sessions_total", "counters", "queue_delay_ms", "classes"}
    assert body["settings"] == NetworkConfig(delay_ms=10).to_json() and body["active"] is True
    assert body["sessions"] == 0
    assert {"offered_packets", "lost_packets", "queue_dropped_packets", "delivered_packets", "loss_fraction"} <= set(
        body["counters"]
    )
    assert set(body["queue_delay_ms"]) == {"p50", "p95", "current"}
    assert set(body["classes"]) == {"stun", "dtls", "rtp", "rtcp", "other"}


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"loss": 1.5}, "loss must be in 0..1, got 1.5"),
        ({"kbps": 1}, "kbps must be in 10..100000"),
        ({"queue_ms": 0}, "queue_ms must be in 1..10000"),
        ({"burst": "long"}, "burst must be a number"),
        ({"reorder": 1}, "reorder must be true or false"),
        ({"lossy": 0.1}, "unknown network setting(s) 'lossy'"),
        ([0.1], "expected a JSON object"),
    ],
)
async def test_post_network_rejects_bad_values_with_the_field_and_range(client, body, fragment):
    response = await client.post("/network", json=body)
    assert response.status == 400
    assert fragment in (await response.json())["error"]
    assert (await (await client.get("/network")).json())["settings"]["delay_ms"] == 10  # nothing changed


async def test_post_network_malformed_json_is_a_400(client):
    response = await client.post("/network", data=b"{nope", headers={"Content-Type": "application/json"})
    assert response.status == 400 and "not valid JSON" in (await response.json())["error"]


async def test_post_network_updates_live_impairments(client):
    control = client.server.app[NETWORK]
    existing = control.new_impairment()  # as a live session's
    response = await client.post("/network", json={"loss": 0.1, "burst": 3, "kbps": 800})
    assert response.status == 200
    settings = (await response.json())["settings"]
    assert settings["loss"] == 0.1 and settings["burst"] == 3 and settings["kbps"] == 800
    assert settings["delay_ms"] == 10  # a partial update keeps the rest
    assert existing.config.loss == 0.1 and existing.config.kbps == 800
    assert existing.link.kbps == 800 and existing.loss.p == 0.1
