"""A client that vanishes mid-call is forgotten, and the server keeps serving the others."""

from __future__ import annotations

import asyncio
import gc
import os
import threading

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from srtc.server.app import SESSIONS, create_app
from srtc.server.config import ServerConfig
from srtc.server.registry import describe
from srtc.tools.probe import load_source, post_offer, run_probe, wait_connected
from srtc.tools.probe_source import NumberedTrack

from .conftest import serving


async def connect(url: str, http: aiohttp.ClientSession) -> tuple[RTCPeerConnection, str]:
    """An aiortc client sending real numbered frames, connected to the server; no clean-up of its own."""
    pc = RTCPeerConnection()
    pc.addTransceiver(NumberedTrack(load_source(None, fps=15.0), fps=15.0, duration_s=30.0), direction="sendonly")
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    answer = await post_offer(http, url, pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    await wait_connected(pc, 20.0)
    return pc, answer["id"]


async def test_a_vanished_client_is_closed_and_others_are_served(upscaler, default_model_path):
    app = create_app(ServerConfig(port=0), upscaler, describe(str(default_model_path)))
    async with serving(app) as url, aiohttp.ClientSession() as http:
        pc, session_id = await connect(url, http)
        assert session_id in app[SESSIONS]
        await asyncio.sleep(1.0)
        await pc.close()  # gone without DELETE /sessions/{id}
        for _ in range(50):
            if session_id not in app[SESSIONS]:
                break
            await asyncio.sleep(0.1)
        assert session_id not in app[SESSIONS], "the server must notice the peer left and close its session"
        # Another client is served normally afterwards.
        report = await run_probe(url, seconds=2.0, fps=15.0, psnr_every=5)
        assert report.streams["sr"]["numbered"] >= 10 and report.streams["sr"]["width"] == 1280


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc (Linux)")
async def test_threads_and_sockets_return_to_baseline_after_sessions(upscaler, default_model_path):
    """Sessions opened and ended leave no worker threads, sockets or files behind (measured after one
    warm-up session, since libraries start their own pools on first use)."""
    app = create_app(ServerConfig(port=0), upscaler, describe(str(default_model_path)))
    async with serving(app) as url, aiohttp.ClientSession() as http:
        baseline: tuple[int, int] | None = None
        for cycle in range(4):
            pc, session_id = await connect(url, http)
            await asyncio.sleep(0.5)
            await pc.close()
            for _ in range(50):
                if session_id not in app[SESSIONS]:
                    break
                await asyncio.sleep(0.1)
            assert session_id not in app[SESSIONS]
            await asyncio.sleep(0.5)  # let closed transports and finished threads go
            gc.collect()
            now = (threading.active_count(), open_fds())
            if baseline is None:
                baseline = now
            else:
                assert now[0] <= baseline[0] + 1 and now[1] <= baseline[1] + 4, (cycle, baseline, now)


async def test_shutting_down_closes_every_session(upscaler, default_model_path):
    app = create_app(ServerConfig(port=0), upscaler, describe(str(default_model_path)))
    async with aiohttp.ClientSession() as http:
        async with serving(app) as url:
            pc, session_id = await connect(url, http)
            session = app[SESSIONS][session_id]
        assert app[SESSIONS] == {} and session.pc.connectionState == "closed"
        await pc.close()
