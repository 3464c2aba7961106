"""Media sockets bind on the listening address: a loopback server takes no media on other interfaces."""

from __future__ import annotations

import re

import pytest
from aiortc import RTCPeerConnection

from srtc.server.ice import bind_media, media_addresses


def test_media_addresses_follow_the_listening_host():
    assert media_addresses("0.0.0.0") is None and media_addresses("::") is None  # every interface
    assert media_addresses("127.0.0.1") == ["127.0.0.1"]
    assert media_addresses("::1") == ["::1"]
    assert "127.0.0.1" in (media_addresses("localhost") or [])
    with pytest.raises(ValueError, match="cannot resolve"):
        media_addresses("no-such-host.invalid")


async def _host_candidates() -> list[str]:
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video")
        await pc.setLocalDescription(await pc.createOffer())
        return re.findall(r"a=candidate:\S+ \d+ udp \d+ (\S+) \d+ typ host", pc.localDescription.sdp)
    finally:
        await pc.close()


async def test_a_loopback_server_gathers_loopback_candidates_only():
    try:
        bind_media("0.0.0.0")
        everywhere = await _host_candidates()
        bind_media("127.0.0.1")
        assert await _host_candidates() == ["127.0.0.1"]
    finally:
        bind_media("127.0.0.1")  # the suite's servers all listen on loopback
    assert "127.0.0.1" not in everywhere, "aioice's own list leaves loopback out and takes every other interface"
