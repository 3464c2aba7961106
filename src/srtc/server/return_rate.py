"""How the return streams share the client's bandwidth: limits by resolution, and a split of its REMB.

aiortc gives every sender the whole of each REMB (the receiver's estimate of what it can take) and
clamps it to 250-1500 kbps whatever the resolution. Two things go wrong for this server, which sends
a 720p SR stream next to the 360p stream it received:

- the 720p stream gets the bits of a 360p one (1.5 Mbps at most), so the encoder throws away much of
  what the generator restored (measured: the SR-on stream as received ended *below* the SR-off stream
  upscaled by bicubic at the client);
- a browser sends one REMB for the whole transport, naming every SSRC; aiortc hands its full value to
  each stream, so together they send twice what the client said it can receive.

Here the limits scale with the pixel count as WebRTC's own resolution ladder does (bitrate ~ pixels^0.9:
Chrome's simulcast table gives 360p 0.7 and 720p 2.5 Mbps), anchored at aiortc's 360p figures, and a
REMB naming several of this session's streams is split between them in proportion to their maximum
bitrates. A REMB naming one stream (aiortc's receivers, one estimator per stream) is that stream's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci

log = logging.getLogger(__name__)

BASE_PIXELS = 640 * 360  # where aiortc's figures hold
BASE_MIN, BASE_DEFAULT, BASE_MAX = 250_000, 500_000, 1_500_000  # aiortc.codecs.vpx's bps
EXPONENT = 0.9  # bitrate ~ pixels ** 0.9 (Chrome's simulcast ladder: 0.7 Mbps at 360p, 2.5 Mbps at 720p)


@dataclass(frozen=True)
class RateLimits:
    """A stream's bitrate range and starting point (bps), given its resolution."""

    minimum: int
    default: int
    maximum: int

    def clamp(self, bps: float) -> int:
        return int(max(self.minimum, min(self.maximum, bps)))


def limits(width: int, height: int) -> RateLimits:
    """aiortc's range at 360p and below; above, the start and the ceiling grow as pixels ** 0.9.

    The floor stays at 250 kbps: it is what keeps a congested stream alive, not a quality target.
    """
    factor = max(1.0, (width * height) / BASE_PIXELS) ** EXPONENT
    return RateLimits(BASE_MIN, int(BASE_DEFAULT * factor), int(BASE_MAX * factor))


def share(estimate: float, mine: int, named: list[int]) -> int:
    """This stream's part of a REMB ``estimate`` that names streams of maximum bitrates ``named``
    (``mine`` among them): in proportion to the maximum, the bigger stream needing more."""
    total = sum(named)
    return int(estimate * mine / total) if total > 0 else int(estimate)


class ReturnBitrates:
    """One session's return senders: hands each its share of every REMB the client sends.

    Wraps ``_handle_rtcp_packet`` on each sender instance (aiortc 1.16.0, pinned: the DTLS transport
    calls it with every RTCP packet routed to that sender); REMBs are handled here, everything else
    goes on to aiortc. The encoder (:class:`srtc.server.encoder.ReturnVp8Encoder`) keeps the share as its
    ``target_bitrate`` request and applies its own resolution limits when it encodes.
    """

    def __init__(self, viewer_bps: int | None = None) -> None:
        """``viewer_bps``: the viewer's link for all returned streams together (None: no ceiling but the
        resolution's, and the encoded streams start at their default and follow the REMB up)."""
        self.viewer_bps = viewer_bps
        self._senders: dict[str, Any] = {}
        self._forwarded: dict[str, tuple[Any, Callable[[], float]]] = {}  # streams sent as received, and their rate

    def add(self, name: str, sender: Any) -> None:
        """Take over REMB handling for ``sender`` (``name``: how /stats calls its stream)."""
        self._senders[name] = sender
        inner = sender._handle_rtcp_packet

        async def handle(packet: Any) -> None:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                self._remb(sender, packet)
                return
            await inner(packet)

        sender._handle_rtcp_packet = handle

    def add_forwarded(self, name: str, sender: Any, bitrate_bps: Callable[[], float]) -> None:
        """A stream forwarded as the client sent it: its rate is the client's to set, not ours, so what it
        uses now comes off any REMB that names it before the encoded streams share the rest."""
        self._forwarded[name] = (sender, bitrate_bps)

    def ceiling(self, name: str) -> int | None:
        """The encoded stream ``name``'s part of the viewer's link: what the forwarded streams send now comes
        off it, and the encoded streams share the rest as they share a REMB. None without a viewer setting."""
        if self.viewer_bps is None:
            return None
        available = max(0.0, self.viewer_bps - sum(rate() for _, rate in self._forwarded.values()))
        sender = self._senders.get(name)
        if sender is None:
            return int(available)
        return share(available, _maximum(sender), [_maximum(s) for s in self._senders.values()])

    def _remb(self, sender: Any, packet: RtcpPsfbPacket) -> None:
        try:
            estimate, ssrcs = unpack_remb_fci(packet.fci)
        except ValueError:
            return
        if sender._ssrc not in ssrcs:
            return
        encoder = _encoder(sender)
        if not hasattr(encoder, "target_bitrate"):  # no frame encoded yet: aiortc ignores it too; another comes in 1 s
            return
        named = [_maximum(s) for s in self._senders.values() if s._ssrc in ssrcs]
        forwarded = sum(rate() for s, rate in self._forwarded.values() if s._ssrc in ssrcs)
        encoder.target_bitrate = share(max(0.0, estimate - forwarded), _maximum(sender), named)

    def stats(self) -> dict[str, dict]:
        """Per stream: its resolution, the bitrate it encodes at, the REMB's request, the ceiling, reopenings."""
        encoders = {name: _encoder(s) for name, s in self._senders.items()}
        return {name: e.stats() for name, e in encoders.items() if hasattr(e, "stats")}


def _encoder(sender: Any) -> Any:
    return getattr(sender, "_RTCRtpSender__encoder", None)


def _maximum(sender: Any) -> int:
    """The sender's ceiling at its current resolution (360p's before its first frame)."""
    size = getattr(_encoder(sender), "size", None)
    return limits(*size).maximum if size else BASE_MAX
