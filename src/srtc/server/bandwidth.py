"""Tell the sender the link's capacity, so it keeps to the cap instead of discovering it through loss.

Two channels, as libwebrtc uses them: the answer's SDP carries ``b=AS`` (kbps) and ``b=TIAS`` (bps)
on the uplink m-section, which browsers treat as a hard ceiling; and the server's REMB feedback
(Receiver Estimated Maximum Bitrate, RTCP PSFB fmt 15), which is what an aiortc sender (the probe)
sets its encoder's target bitrate from.

While a cap is set, every REMB the receiver sends says the same thing: ``TARGET_SHARE`` of the cap
(room for RTP/SRTP headers and retransmissions), announced once a second from the start. A constant
figure matters: aiortc's VP8 encoder restarts, with a keyframe, whenever its target moves by more than
10%, and on a 600 kbps link every such keyframe is a burst that overflows the queue. Without a cap
the receiver's own estimate passes unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiortc import RTCRtpReceiver
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci, unpack_remb_fci

log = logging.getLogger(__name__)

REMB_INTERVAL_S = 1.0
TARGET_SHARE = 0.7  # of the cap, for the media itself: headers, retransmissions and bursts need the rest


def with_bandwidth(sdp: str, kbps: float | None, section: int = 0) -> str:
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
    """Replaces one receiver's REMB with the cap's target while a cap is set, and announces it every second."""

    def __init__(self, receiver: RTCRtpReceiver, cap_kbps: Callable[[], float | None]) -> None:
        self._receiver = receiver
        self._cap_kbps = cap_kbps
        self._send_rtcp = receiver._send_rtcp  # aiortc 1.16: every RTCP packet the receiver sends
        receiver._send_rtcp = self._clamped  # type: ignore[method-assign]
        self._task = asyncio.ensure_future(self._announce())

    def target_bps(self) -> int | None:
        """What the sender is told while a cap is set (None: no cap, the estimator speaks)."""
        cap = self._cap_kbps()
        return int(cap * 1000 * TARGET_SHARE) if cap else None

    async def _clamped(self, packet) -> None:
        target = self.target_bps()
        if target and isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                _, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                ssrcs = []
            packet = RtcpPsfbPacket(
                fmt=RTCP_PSFB_APP, ssrc=packet.ssrc, media_ssrc=packet.media_ssrc, fci=pack_remb_fci(target, ssrcs)
            )
        await self._send_rtcp(packet)

    async def _announce(self) -> None:
        while True:
            await asyncio.sleep(REMB_INTERVAL_S)
            target = self.target_bps()
            ssrcs = [s.source for s in self._receiver.getSynchronizationSources()]
            rtcp_ssrc = getattr(self._receiver, "_RTCRtpReceiver__rtcp_ssrc", None)
            if not target or not ssrcs or rtcp_ssrc is None:
                continue
            packet = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(target, ssrcs))
            try:
                await self._send_rtcp(packet)
            except ConnectionError:
                return

    def stop(self) -> None:
        self._task.cancel()
