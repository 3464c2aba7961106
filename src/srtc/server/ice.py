"""Where the media sockets bind: on the address the server listens on, not on every interface.

aiortc gathers ICE host candidates through ``aioice.ice.get_host_addresses``, which lists every
interface address but loopback, and binds a UDP socket on each. A server started with
``--host 127.0.0.1`` would then still take media on the machine's public addresses. :func:`bind_media`
makes the list the listening address itself: loopback only for a loopback host, that one address for
a specific one, and aioice's full list only for a wildcard host (``0.0.0.0`` or ``::``). It is one
setting per process, as the listening address is; aioice 0.13 looks the function up on every gather.
Relay candidates (``--turn-url``) are not limited by it: aioice's socket to the TURN server is connected to
that server, from whichever address routes there, and the relayed address is the TURN server's.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

import aioice.ice

log = logging.getLogger(__name__)

_ALL_INTERFACES = aioice.ice.get_host_addresses
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def media_addresses(host: str) -> list[str] | None:
    """The addresses media may use for a server listening on ``host``; None for every interface."""
    if host in WILDCARDS:
        return None
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise ValueError(f"cannot resolve the listening host {host!r}: {exc}") from exc
    return sorted({str(info[4][0]) for info in infos})


def bind_media(host: str) -> list[str] | None:
    """Make every ICE gather in this process use :func:`media_addresses` of ``host``; returns them."""
    addresses = media_addresses(host)
    if addresses is None:
        aioice.ice.get_host_addresses = _ALL_INTERFACES
        return None

    def listening_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in addresses if (use_ipv4 if ipaddress.ip_address(a).version == 4 else use_ipv6)]

    aioice.ice.get_host_addresses = listening_addresses
    log.debug("media binds on %s", ", ".join(addresses))
    return addresses
