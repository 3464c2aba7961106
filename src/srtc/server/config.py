"""Typed, validated settings: everything the command line can change, checked once at the edge."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .access import parse_networks

CLIENT_DIR = Path(__file__).resolve().parent / "web"  # the page, shipped as package data

# RFC 7064/7065 URIs: a host name, IPv4 or [IPv6] address, an optional port, and for TURN the transport.
_HOST_PORT = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?"
_TURN_URL = re.compile(rf"turns?:{_HOST_PORT}(?:\?transport=(?:udp|tcp))?")
_STUN_URL = re.compile(rf"stuns?:{_HOST_PORT}")
# A DNS name as a Host header carries it: letters, digits, dots and hyphens, at most 253 characters.
_HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


class ConfigError(ValueError):
    """A setting is out of range; the message names the setting and the allowed range."""


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one server process."""

    host: str = "127.0.0.1"
    port: int = 8080
    model: str | None = None  # a manifest name or a path; None means the manifest's default
    # onnxruntime intra-op threads per inference: all cores, up to 4. Its threads do not spin-wait
    # (srtc/server/engine.py), so they leave the cores to the decoder and the encoder between convs. On 2 cores,
    # 20 s probes side by side: 2 threads gave SR latency p50/p95 27/38 ms against 33/43 ms with 1, all
    # 600 frames both ways, at the same server CPU (0.89 against 0.88 cores). (With spinning threads, 1
    # thread had been the better choice: 94% of frames returned against 85%.)
    threads: int = max(1, min(4, os.cpu_count() or 2))
    max_sessions: int = 8
    max_sessions_per_address: int = 4  # sessions one (non-loopback) address may hold at once
    offers_per_minute: int = 20  # offers one (non-loopback) address may make in a minute
    # Grants operator rights (the simulated network, every session in /stats) to requests that carry it
    # in X-Operator-Token, from any address; None: only the server's own machine is the operator.
    operator_token: str | None = None
    # Reverse proxies (addresses or networks) whose X-Forwarded-For names the client: the per-address limits
    # and a session's owner use that address, and nothing they forward is the operator by address.
    trusted_proxies: tuple[str, ...] = ()
    # The Host names served (without port); empty: any Host, or loopback names only when listening on loopback.
    allowed_hosts: tuple[str, ...] = ()
    max_body_bytes: int = 64 * 1024  # an SDP offer is a few kB; anything larger is refused with 413
    connect_timeout_s: float = 10.0  # a peer that never connects is closed after this long, freeing its slot
    resilient_receiver: bool = True  # False: aiortc's stock jitter buffer and NACK (for comparisons)
    # Share of the frame interval the generator may take per frame before the SR stage sends bicubic on
    # some frames (srtc/server/governor.py). 1.0 = the whole interval.
    sr_headroom: float = 0.85
    # The faster model the governor steps down to before bicubic: "auto" = the manifest's "fallback" of
    # the chosen model (the int8 build of the default), "none" = no such step, or a manifest name or path.
    fast_model: str = "auto"
    # Nice levels the return encoders' threads run below the process, so the SR stage gets the cores
    # first (srtc/server/priority.py; Linux only, elsewhere ignored). 0 = the same priority.
    encoder_nice: int = 0
    # The viewer's link for the streams sent back (kbps): the SR-on encode starts at it and never exceeds
    # it; a REMB below what is being sent lowers it (congestion). A forwarded SR-off stream's own rate comes
    # off it first. The default suits a viewer on the same machine or LAN, where the 720p encode can be
    # near transparent; set the viewer's real downlink for remote viewers (docs/VIEWER.md has the table).
    viewer_kbps: float = 8000.0
    # Viewers of relayed streams (srtc/server/relay.py): in all, and of one stream. A viewer costs
    # packetisation and SRTP, not an encode (docs/BENCHMARKS.md has the per-viewer cost).
    max_viewers: int = 64
    max_viewers_per_stream: int = 32
    # The least a relayed SR-on encode is given, whatever one congested viewer reports (kbps): below
    # about 1.5 Mbps a 720p VP8 encode spends the generator's gain, for every viewer.
    relay_floor_kbps: float = 1500.0
    # TURN for clients behind NATs and firewalls (srtc/server/turn.py): the TURN server's URLs, the secret it
    # shares with this server (coturn's use-auth-secret), and how long a handed-out credential opens relays.
    # An hour: a credential is checked when a relay is allocated, not while a call uses it, so it only has to
    # outlast the wait between loading the page and connecting (or an ICE restart); a shorter one is worth
    # less to whoever copies it off a page.
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = field(default=None, repr=False)
    turn_ttl_s: int = 3600
    stun_urls: tuple[str, ...] = ()  # STUN servers handed out with the TURN ones (no credentials)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if not 1 <= self.threads <= 64:
            raise ConfigError(f"threads must be in 1..64, got {self.threads}")
        if not 1 <= self.max_sessions <= 256:
            raise ConfigError(f"max_sessions must be in 1..256, got {self.max_sessions}")
        if not 1 <= self.max_sessions_per_address <= 256:
            raise ConfigError(f"max_sessions_per_address must be in 1..256, got {self.max_sessions_per_address}")
        if not 1 <= self.offers_per_minute <= 10_000:
            raise ConfigError(f"offers_per_minute must be in 1..10000, got {self.offers_per_minute}")
        if self.operator_token is not None and len(self.operator_token) < 16:
            raise ConfigError("the operator token must be at least 16 characters")
        if not 1024 <= self.max_body_bytes <= 16 * 1024 * 1024:
            raise ConfigError(f"max_body_bytes must be in 1024..16777216, got {self.max_body_bytes}")
        if not 1.0 <= self.connect_timeout_s <= 600.0:
            raise ConfigError(f"connect_timeout_s must be in 1..600, got {self.connect_timeout_s}")
        if not 0.1 <= self.sr_headroom <= 1.0:
            raise ConfigError(f"sr_headroom must be in 0.1..1.0, got {self.sr_headroom}")
        if not 0 <= self.encoder_nice <= 19:
            raise ConfigError(f"encoder_nice must be in 0..19, got {self.encoder_nice}")
        if not 300.0 <= self.viewer_kbps <= 100_000.0:
            raise ConfigError(f"viewer_kbps must be in 300..100000, got {self.viewer_kbps}")
        if not 0 <= self.max_viewers <= 1024:
            raise ConfigError(f"max_viewers must be in 0..1024, got {self.max_viewers}")
        if not 0 <= self.max_viewers_per_stream <= 1024:
            raise ConfigError(f"max_viewers_per_stream must be in 0..1024, got {self.max_viewers_per_stream}")
        if not 250.0 <= self.relay_floor_kbps <= 100_000.0:
            raise ConfigError(f"relay_floor_kbps must be in 250..100000, got {self.relay_floor_kbps}")
        if not self.fast_model.strip():
            raise ConfigError('fast_model must be "auto", "none", a manifest name or a path')
        self._check_ice()
        self._check_proxying()

    def _check_proxying(self) -> None:
        """The trusted proxies are addresses or networks; the allowed hosts are bare names or addresses."""
        if not isinstance(self.trusted_proxies, tuple) or not all(isinstance(p, str) for p in self.trusted_proxies):
            raise ConfigError(f"trusted_proxies must be a tuple of addresses, got {self.trusted_proxies!r}")
        try:
            parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"trusted_proxies: {exc}") from exc
        if not isinstance(self.allowed_hosts, tuple) or not all(isinstance(h, str) for h in self.allowed_hosts):
            raise ConfigError(f"allowed_hosts must be a tuple of host names, got {self.allowed_hosts!r}")
        for host in self.allowed_hosts:
            if not (_HOST_NAME.fullmatch(host) or _is_ip(host)):
                raise ConfigError(
                    f"allowed_hosts: {host!r} is not a host name or address (no scheme, port or brackets)"
                )

    def _check_ice(self) -> None:
        """The TURN and STUN settings: well-formed URLs, and a secret long enough that it cannot be guessed."""
        _check_urls("turn_urls", self.turn_urls, _TURN_URL, "turn:HOST[:PORT][?transport=udp|tcp] or turns:...")
        _check_urls("stun_urls", self.stun_urls, _STUN_URL, "stun:HOST[:PORT] or stuns:...")
        if self.turn_urls and (self.turn_secret is None or len(self.turn_secret) < 16):
            raise ConfigError("turn_urls need the TURN server's secret (turn_secret, SRTC_TURN_SECRET), 16+ characters")
        if self.turn_secret is not None and not self.turn_urls:
            raise ConfigError("a TURN secret (SRTC_TURN_SECRET) is set but there are no turn_urls to use it with")
        if isinstance(self.turn_ttl_s, bool) or not isinstance(self.turn_ttl_s, int):
            raise ConfigError(f"turn_ttl_s must be an integer number of seconds, got {self.turn_ttl_s!r}")
        if not 60 <= self.turn_ttl_s <= 86_400:
            raise ConfigError(f"turn_ttl_s must be in 60..86400, got {self.turn_ttl_s}")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_urls(name: str, urls: object, pattern: re.Pattern[str], form: str) -> None:
    if not isinstance(urls, tuple) or not all(isinstance(url, str) for url in urls):
        raise ConfigError(f"{name} must be a tuple of URLs, got {urls!r}")
    for url in urls:
        match = pattern.fullmatch(url)
        if match is None or int(match["port"] or 1) not in range(1, 65536):
            raise ConfigError(f"{name}: {url!r} is not a URL of the form {form}")


# --------------------------------------------------------------------------------------------------
# The simulated network on the server's inbound media path (see srtc/server/impairment.py).

_NETWORK_RANGES: dict[str, tuple[float, float]] = {
    "loss": (0.0, 1.0),
    "burst": (1.0, 100.0),
    "kbps": (10.0, 100000.0),  # or 0 = unlimited
    "delay_ms": (0.0, 5000.0),
    "jitter_ms": (0.0, 1000.0),
    "queue_ms": (1.0, 10000.0),
}


def _number_text(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class NetworkConfig:
    """How the client-to-server path is impaired; the defaults impair nothing.

    ``loss``: long-run fraction of packets lost (0..1). ``burst``: mean length of a loss burst in packets
    (1 = independent losses, more = Gilbert-Elliott bursts). ``kbps``: link capacity (0 = unlimited).
    ``queue_ms``: the drop-tail queue in front of the link, in milliseconds of queued data at that
    capacity. ``delay_ms`` and ``jitter_ms``: one-way base delay and the standard deviation of its
    normal jitter. ``seed``: the random seed (the same seed repeats the same pattern). ``reorder``: let
    jitter reorder packets (off: a packet is never delivered before the one in front of it).
    ``impair_rtcp``: RTCP shares the impaired path with RTP (default on: on a real uplink the client's
    RTCP crosses the same bottleneck as its media; off isolates the media from its feedback).
    """

    loss: float = 0.0
    burst: float = 1.0
    kbps: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    queue_ms: float = 1000.0
    seed: int = 0
    reorder: bool = False
    impair_rtcp: bool = True

    def __post_init__(self) -> None:
        for name, (low, high) in _NETWORK_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ConfigError(
                    f"{name} must be a number in {_number_text(low)}..{_number_text(high)}, got {value!r}"
                )
            if name == "kbps" and value == 0:
                continue
            if not low <= value <= high:
                extra = " (or 0 = unlimited)" if name == "kbps" else ""
                raise ConfigError(f"{name} must be in {_number_text(low)}..{_number_text(high)}{extra}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an integer in 0..4294967295, got {self.seed!r}")
        for name in ("reorder", "impair_rtcp"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        # Gilbert model: P(good->bad) = loss / (burst * (1 - loss)) must be a probability.
        if self.burst > 1 and 0 < self.loss < 1 and self.loss / (self.burst * (1 - self.loss)) > 1:
            need = self.loss / (1 - self.loss)
            raise ConfigError(
                f"burst must be >= loss/(1-loss) = {need:.3g} for loss={self.loss:g} "
                f"(or 1 for independent losses), got {self.burst:g}"
            )

    @property
    def active(self) -> bool:
        """Whether this impairs anything at all (the defaults do not)."""
        return self.loss > 0 or self.kbps > 0 or self.delay_ms > 0 or self.jitter_ms > 0

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def replace(self, **changes) -> NetworkConfig:
        """A copy with ``changes`` applied and validated; an unknown field is a :class:`ConfigError`."""
        return NetworkConfig.from_json(changes, base=self)

    @classmethod
    def from_json(cls, body: object, base: NetworkConfig | None = None) -> NetworkConfig:
        """``base`` (default: the defaults) with the fields of a JSON object applied and validated.

        A partial object changes only what it names; ``"kbps": null`` means unlimited.
        """
        if not isinstance(body, dict):
            raise ConfigError('expected a JSON object of network settings, e.g. {"loss": 0.05, "burst": 2}')
        fields = list(cls.__dataclass_fields__)
        unknown = sorted(str(key) for key in body if key not in cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown network setting(s) {', '.join(map(repr, unknown))}; known: {', '.join(fields)}")
        values = (base or cls()).to_json()
        for key, value in body.items():
            values[key] = 0 if key == "kbps" and value is None else value
        return cls(**values)
