"""Who may do what, and how much: the operator, and the limits on what one address may open.

- The **operator** is whoever runs the server: a request from the server's own machine (a loopback
  peer), or one that carries the operator token (``X-Operator-Token``, set with the ``SRTC_OPERATOR_TOKEN``
  environment variable). Only the operator changes the simulated network for everyone, and sees every
  session in ``/stats``; a client sees its own session (with its secret) and the totals.
- **Admission**: one address may hold at most ``max_per_address`` sessions and open at most
  ``offers_per_minute`` of them a minute, so one client cannot take every slot; the operator's own
  machine is not limited (its probes open many sessions on purpose).
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

OPERATOR_HEADER = "X-Operator-Token"
WINDOW_S = 60.0


def is_loopback_peer(remote: str | None) -> bool:
    """True for a peer on this machine (127.0.0.0/8, ::1)."""
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def is_operator(remote: str | None, presented: str | None, token: str | None) -> bool:
    """The server's own machine, or the configured operator token (compared in constant time)."""
    if is_loopback_peer(remote):
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
