"""End to end at 10% loss in bursts: the resilient receiver keeps the picture moving (no stall over 1 s)."""

from __future__ import annotations

from srtc.server.app import NETWORK, create_app
from srtc.server.config import NetworkConfig, ServerConfig
from srtc.server.registry import describe
from srtc.tools.probe import run_probe

from .conftest import serving


async def test_ten_percent_bursty_loss_never_stalls_a_second(upscaler, default_model_path):
    network = NetworkConfig(loss=0.10, burst=2.0, delay_ms=20.0, jitter_ms=5.0, seed=7)
    app = create_app(ServerConfig(port=0), upscaler, describe(str(default_model_path)), network)
    async with serving(app) as url:
        report = await run_probe(url, seconds=8.0, fps=20.0, psnr_every=5)
    counters = app[NETWORK].stats()["counters"]
    assert counters["lost_packets"] >= 5, counters  # the loss really happened
    receiver = report.server_session["receiver"]
    assert receiver["packetsRecovered"] > 0 and receiver["nackCount"] > 0, receiver
    for name in ("sr", "raw"):
        stream = report.streams[name]
        assert stream["freezes"]["longestGapMs"] < 1000, (name, stream["freezes"])
        # A stall that lasts to the end shows no gap between frames: the last frames sent must come back.
        assert stream["last_number"] >= report.sent - 20, (name, stream["last_number"], report.sent)
        assert stream["numbered"] >= 0.5 * report.sent, (name, stream["numbered"], report.sent)
        assert stream["out_of_order"] == 0
    assert report.server_session["freezes_in"]["longestGapMs"] < 1000
