"""STUN and TURN servers for clients and for this server's own peer connections, with time-limited TURN
credentials (coturn's ``use-auth-secret``, the TURN REST API scheme).

The TURN server and this server share a secret. A credential is ``username = "<expiry unix time>:<label>"``
and ``credential = base64(HMAC-SHA1(secret, username))``: the TURN server recomputes the HMAC and refuses an
expired username, so the page gets a working credential without the secret, no account database is needed,
and a credential copied off a page stops opening relays after its TTL. coturn checks the expiry when an
allocation is made, not while it is in use, so a call outlives its credential.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass, field

from aiortc import RTCIceServer
from aiortc.rtcicetransport import parse_stun_turn_uri

from .config import ServerConfig

CLIENT_LABEL = "srtc-client"  # the label of a page's credentials, as the TURN server's log shows them
SERVER_LABEL = "srtc-server"  # this server's own peer connections


@dataclass(frozen=True)
class TurnCredential:
    username: str
    credential: str
    expires: int  # unix time


def turn_credential(secret: str, ttl_s: int, label: str, now: float | None = None) -> TurnCredential:
    """A credential the TURN server accepts until ``now + ttl_s`` (coturn's REST API scheme)."""
    expires = int(time.time() if now is None else now) + ttl_s
    username = f"{expires}:{label}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(digest).decode("ascii"), expires)


@dataclass(frozen=True)
class IceServers:
    """The STUN and TURN servers every peer connection of this server, and every client, is given."""

    turn_urls: tuple[str, ...] = ()
    secret: str | None = field(default=None, repr=False)
    ttl_s: int = 3600
    stun_urls: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: ServerConfig) -> IceServers:
        return cls(config.turn_urls, config.turn_secret, config.turn_ttl_s, config.stun_urls)

    def listing(self, label: str = CLIENT_LABEL, now: float | None = None) -> list[dict]:
        """WebRTC's ``iceServers`` with fresh TURN credentials: what ``new RTCPeerConnection`` takes."""
        servers: list[dict] = []
        if self.stun_urls:
            servers.append({"urls": list(self.stun_urls)})
        if self.turn_urls and self.secret:
            credential = turn_credential(self.secret, self.ttl_s, label, now)
            servers.append(
                {"urls": list(self.turn_urls), "username": credential.username, "credential": credential.credential}
            )
        return servers

    def rtc(self, label: str = SERVER_LABEL) -> list[RTCIceServer] | None:
        """The same for aiortc, without the URLs it cannot parse (an [IPv6] host would fail every call);
        None without any, which leaves aiortc's own default in place. aiortc uses one STUN and one TURN URL:
        the first of each it supports."""
        servers = []
        for server in self.listing(label):
            urls = [url for url in server["urls"] if _aiortc_parses(url)]
            if urls:
                servers.append(RTCIceServer(**{**server, "urls": urls}))
        return servers or None


def _aiortc_parses(url: str) -> bool:
    try:
        parse_stun_turn_uri(url)
    except ValueError:
        return False
    return True
