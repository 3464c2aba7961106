"""The cap reaches the sender: b=AS/TIAS in the answer's uplink section, REMB never above the cap."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci, unpack_remb_fci

from srtc.server.bandwidth import RembCap, with_bandwidth


async def real_answer_sdp() -> str:
    """An aiortc offer with the project's three video m-lines (the SDP shape the server answers)."""
    pc = RTCPeerConnection()
    for direction in ("sendonly", "recvonly", "recvonly"):
        pc.addTransceiver("video", direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def sections(sdp: str) -> list[list[str]]:
    out: list[list[str]] = []
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            out.append([])
        if out:
            out[-1].append(line)
    return out


async def test_bandwidth_lines_go_in_the_uplink_section_only_and_in_sdp_order():
    sdp = with_bandwidth(await real_answer_sdp(), 600)
    uplink, sr, raw = sections(sdp)
    assert "b=AS:600" in uplink and "b=TIAS:600000" in uplink
    assert not [line for line in sr + raw if line.startswith("b=")]
    assert uplink.index("b=AS:600") > max(i for i, line in enumerate(uplink) if line.startswith("c="))
    assert with_bandwidth(sdp, None) == sdp


async def test_remb_says_the_caps_target_while_a_cap_is_set_and_the_estimate_otherwise():
    sent: list[RtcpPsfbPacket] = []

    class Receiver:
        async def _send_rtcp(self, packet) -> None:
            sent.append(packet)

        def getSynchronizationSources(self):
            return []

    receiver = Receiver()
    setting = {"kbps": 600.0}  # settings carry kbps as a float
    cap = RembCap(receiver, lambda: setting["kbps"])
    for bitrate in (2_000_000, 400_000, 700_000):
        if bitrate == 700_000:
            setting["kbps"] = None  # the cap lifted at runtime
        remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(bitrate, [1234]))
        await receiver._send_rtcp(remb)
    cap.stop()
    await asyncio.sleep(0)
    # A steady 70% of the cap, whatever the estimator says (aiortc's encoder restarts on every change).
    assert [unpack_remb_fci(p.fci) for p in sent] == [(420_000, [1234]), (420_000, [1234]), (700_000, [1234])]
