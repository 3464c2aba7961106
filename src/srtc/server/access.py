"""Who may do what, and how much: the operator, and the limits on what one address may open.

- The **operator** is whoever runs the server: a request from the server's own machine (a loopback
  peer), or one that carries the operator token (``X-Operator-Token``, set with the ``SRTC_OPERATOR_TOKEN``
  environment variable). Only the operator changes the simulated network for everyone, and sees every
  session in ``/stats``; a client sees its own session (with its secret) and the totals.
- **Admission**: one address may hold at most ``max_per_address`` sessions and open at most
  ``offers_per_minute`` of them a minute, so one client cannot take every slot; the operator's own
  machine is not limited (its probes open many sessions on purpose).
- **Behind a reverse proxy**, every request comes from the proxy's address. For a peer among the trusted
  proxies, the client is the right-most ``X-Forwarded-For`` address that is not itself a trusted proxy (the
  addresses to its left are whatever the client chose to send), and the request is never the operator's
  machine, whatever that address says: the proxy serves everyone. Other peers' ``X-Forwarded-For`` is ignored.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

OPERATOR_HEADER = "X-Operator-Token"
FORWARDED_HEADER = "X-Forwarded-For"
WINDOW_S = 60.0
UNKNOWN = "unknown"  # the address of a client nobody can name (no peer, or a proxy forwarding junk)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_loopback_peer(remote: str | None) -> bool:
    """True for a peer on this machine (127.0.0.0/8, ::1)."""
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Addresses or networks (``10.0.0.0/8``); ``ValueError`` names the first that is neither."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP address or network") from exc
    return tuple(networks)


def _in_networks(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


@dataclass(frozen=True)
class Client:
    """Who sent a request: its address, and whether a trusted proxy passed it on (then it is never the
    server's own machine, since the proxy serves everyone)."""

    address: str
    proxied: bool = False

    @property
    def local(self) -> bool:
        """On the server's own machine: a loopback peer that is not a proxy."""
        return not self.proxied and is_loopback_peer(self.address)


def resolve_client(peer: str | None, forwarded_for: Iterable[str], proxies: tuple[IPNetwork, ...]) -> Client:
    """The client behind ``peer``: itself, or for a trusted proxy the right-most ``X-Forwarded-For`` entry
    (over all such headers, in order) that is not a trusted proxy. Only the proxies appended to the right
    end of the list; anything further left came from the client and proves nothing."""
    if peer is None or not _in_networks(peer, proxies):
        return Client(peer or UNKNOWN)
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        if not _in_networks(hop, proxies):
            return Client(_address(hop), proxied=True)
    return Client(peer, proxied=True)  # from the proxy itself, or only proxies named: counted as the proxy


def _address(hop: str) -> str:
    """A forwarded entry as an address, or :data:`UNKNOWN` for anything else (a proxy passing on junk)."""
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return UNKNOWN


def is_operator(client: Client, presented: str | None, token: str | None) -> bool:
    """The server's own machine, or the configured operator token (compared in constant time)."""
    if client.local:
        return True
    return bool(token) and presented is not None and hmac.compare_digest(presented.encode(), str(token).encode())


@dataclass(frozen=True)
class Refusal:
    """Why an offer is not admitted: the HTTP status, the message, and when to retry (seconds)."""

    status: int
    message: str
    retry_after_s: int | None = None


class Admission:
    """Per-address limits on sessions held and offers made (a sliding one-minute window)."""

    def __init__(
        self, max_per_address: int, offers_per_minute: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_per_address = max_per_address
        self.offers_per_minute = offers_per_minute
        self.clock = clock
        self._offers: dict[str, deque[float]] = {}

    def check(self, address: str, held: int) -> Refusal | None:
        """Admit one more offer from ``address``, which holds ``held`` sessions now, or say why not.

        An admitted offer counts towards the rate whatever becomes of it."""
        now = self.clock()
        recent = self._offers.setdefault(address, deque())
        while recent and now - recent[0] >= WINDOW_S:
            recent.popleft()
        if held >= self.max_per_address:
            return Refusal(429, f"{address} already holds {held} sessions (at most {self.max_per_address} per address)")
        if len(recent) >= self.offers_per_minute:
            wait = max(1, math.ceil(WINDOW_S - (now - recent[0])))
            return Refusal(429, f"too many offers from {address} (at most {self.offers_per_minute} a minute)", wait)
        recent.append(now)
        self._forget_idle(now)
        return None

    def _forget_idle(self, now: float) -> None:
        """Drop addresses with no offer in the window, so the table does not grow with every visitor."""
        if len(self._offers) > 1024:
            for address in [a for a, q in self._offers.items() if not q or now - q[-1] >= WINDOW_S]:
                del self._offers[address]
