"""Tell the sender the link's capacity, so it keeps to the cap instead of discovering it through loss.

Two channels, as libwebrtc uses them: the answer's SDP carries ``b=AS`` (kbps) and ``b=TIAS`` (bps)
on the uplink m-section, which browsers treat as a hard ceiling; and the server's REMB feedback
(Receiver Estimated Maximum Bitrate, RTCP PSFB fmt 15) never exceeds the cap, which is what an aiortc
sender (the probe) adapts its encoder's target bitrate to. The server also repeats, once a second,
the lower of the cap and the receiver's latest estimate, so a sender learns the cap before the
receiver's own estimator has anything to say, without overriding what the estimator says later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiortc import RTCRtpReceiver
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket
from aiortc.rtp import pack_remb_fci, unpack_remb_fci

log = logging.getLogger(__name__)

REMB_INTERVAL_S = 1.0


def with_bandwidth(sdp: str, kbps: int | None, section: int = 0) -> str:
    """The SDP with ``b=AS``/``b=TIAS`` in media section ``section`` (0 = the uplink), or unchanged."""
    if not kbps:
        return sdp
    lines = sdp.split("\r\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    if section >= len(starts):
        return sdp
    start = starts[section]
    end = starts[section + 1] if section + 1 < len(starts) else len(lines)
    body = [line for line in lines[start + 1 : end] if not line.startswith("b=")]
    # RFC 4566 order: m=, i=, c=, b=, ...: insert after the last i=/c= line of the section.
    at = max((i + 1 for i, line in enumerate(body) if line.startswith(("i=", "c="))), default=0)
    body[at:at] = [f"b=AS:{int(kbps)}", f"b=TIAS:{int(kbps) * 1000}"]
    return "\r\n".join(lines[: start + 1] + body + lines[end:])


class RembCap:
    """Clamps one receiver's REMB feedback to ``cap_kbps()`` and announces the cap every second."""

    def __init__(self, receiver: RTCRtpReceiver, cap_kbps: Callable[[], float | None]) -> None:
        self._receiver = receiver
        self._cap_kbps = cap_kbps
        self._estimate_bps: int | None = None  # the receiver's own latest REMB, before clamping
        self._send_rtcp = receiver._send_rtcp  # aiortc 1.16: every RTCP packet the receiver sends
        receiver._send_rtcp = self._clamped  # type: ignore[method-assign]
        self._task = asyncio.ensure_future(self._announce())

    def _cap_bps(self) -> int | None:
        cap = self._cap_kbps()
        return int(cap * 1000) if cap else None

    async def _clamped(self, packet) -> None:
        cap = self._cap_bps()
        if cap and isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                bitrate, ssrcs = None, []
            self._estimate_bps = bitrate
            if bitrate is not None and bitrate > cap:
                packet = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=packet.ssrc, media_ssrc=packet.media_ssrc,
                                        fci=pack_remb_fci(cap, ssrcs))
        await self._send_rtcp(packet)

    async def _announce(self) -> None:
        while True:
            await asyncio.sleep(REMB_INTERVAL_S)
            cap = self._cap_bps()
            ssrcs = [s.source for s in self._receiver.getSynchronizationSources()]
            rtcp_ssrc = getattr(self._receiver, "_RTCRtpReceiver__rtcp_ssrc", None)
            if not cap or not ssrcs or rtcp_ssrc is None:
                continue
            bitrate = min(cap, self._estimate_bps or cap)
            packet = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0,
                                    fci=pack_remb_fci(bitrate, ssrcs))
            try:
                await self._send_rtcp(packet)
            except ConnectionError:
                return

    def stop(self) -> None:
        self._task.cancel()
