"""A seeded network impairment simulator on the server's inbound media path.

Modelled on libwebrtc's ``SimulatedNetwork`` and Linux ``tc netem``. A packet offered at time ``t``
(seconds, any monotonic clock) goes through three stages, in netem's order:

1. **Loss** (:class:`GilbertElliottLoss`). Two states, good and bad; a packet is lost only in the bad
   state (the simple Gilbert model). For a long-run loss rate ``p`` and a mean burst length ``b``::

       P(bad -> good) = r = 1 / b                    (bursts are geometric, mean 1/r = b)
       P(good -> bad) = q = p / (b (1 - p))           (stationary P(bad) = q / (q + r) = p)

   the same formulas as libwebrtc (``prob_loss_bursting = 1 - 1/b``,
   ``prob_start_bursting = p / (1 - p) / b``). ``q`` must be <= 1, so ``b >= p / (1 - p)``
   (:class:`~srtc.server.config.NetworkConfig` checks it). ``b = 1`` is special: independent (Bernoulli)
   loss with probability ``p`` per packet, whose mean run of losses is ``1 / (1 - p)``; the formula
   taken literally at ``b = 1`` would instead forbid two losses in a row. A lost packet never
   reaches the queue (netem drops before queueing).
2. **Link** (:class:`Link`): a serialiser of ``kbps`` behind a drop-tail queue measured in time. A
   packet waits until the link has sent everything in front of it; if that wait would exceed
   ``queue_ms`` it is dropped, otherwise it leaves when its last bit is sent
   (``size * 8 / (kbps * 1000)`` s after it started). Congestion therefore shows first as queueing
   delay (up to ``queue_ms``), then as loss. Sizes are the UDP payload (the datagram as aiortc sees
   it; IP and UDP headers, 28 bytes a packet, are not counted). ``kbps = 0`` is unlimited.
3. **Delay** (:class:`DelayLine`): ``delay_ms`` plus normal jitter of standard deviation
   ``jitter_ms`` (libwebrtc's model), clamped so that the total is never negative. Unless
   ``reorder`` is set, a packet is never delivered before the packet in front of it (its time is
   raised to the previous one's, as libwebrtc does without ``allow_reordering``).

:class:`Impairment` combines them (``admit(size, now) -> delivery time or None``) with counters;
:func:`attach` hooks one into an aiortc ``RTCIceTransport`` and :class:`NetworkControl` holds the
settings shared by all sessions. Randomness: each impairment owns two ``random.Random`` generators
seeded from ``seed`` (one for loss, one for jitter), so the same seed gives the same drop pattern
whatever the delay settings are, and a run repeats exactly.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from .config import NetworkConfig
from .metrics import percentile

log = logging.getLogger(__name__)

QUEUE_WINDOW = 1000  # packets in the rolling window of queueing delays (p50 / p95)


def _rng(seed: int, purpose: str) -> random.Random:
    return random.Random(f"srtc-impairment:{seed}:{purpose}")  # str seeds are stable across processes


class GilbertElliottLoss:
    """Burst loss: the simple Gilbert model with loss rate ``p`` and mean burst length ``b`` (see above)."""

    def __init__(self, p: float, b: float, rng: random.Random) -> None:
        self.rng = rng
        self.bad = False
        self.set(p, b)

    def set(self, p: float, b: float) -> None:
        """Change the rates from the next packet on; the current state is kept."""
        if not 0 <= p <= 1 or b < 1:
            raise ValueError(f"need 0 <= p <= 1 and b >= 1, got p={p}, b={b}")
        self.p, self.b = p, b
        self.bernoulli = b == 1 or p in (0, 1)
        self.p_bad_good = 1.0 / b
        self.p_good_bad = p / (b * (1 - p)) if 0 < p < 1 else float(p)
        if not self.bernoulli and self.p_good_bad > 1:
            raise ValueError(f"burst {b} is too short for loss {p}: need b >= p/(1-p) = {p / (1 - p):.3g}")

    def lost(self) -> bool:
        """Advance one packet; True when it is lost."""
        if self.p <= 0:
            return False
        if self.p >= 1:
            return True
        if self.bernoulli:
            return self.rng.random() < self.p
        if self.bad:
            if self.rng.random() < self.p_bad_good:
                self.bad = False
        elif self.rng.random() < self.p_good_bad:
            self.bad = True
        return self.bad


class Link:
    """A link of ``kbps`` (0 = unlimited) behind a drop-tail queue of ``queue_ms`` milliseconds."""

    def __init__(self, kbps: float, queue_ms: float) -> None:
        self.kbps, self.queue_ms = kbps, queue_ms
        self.busy_until = float("-inf")  # when the link will have sent everything admitted so far

    def backlog_s(self, now_s: float) -> float:
        """How long a packet arriving now would wait before the link starts sending it."""
        return max(0.0, self.busy_until - now_s)

    def send(self, size_bytes: int, now_s: float) -> tuple[float, float] | None:
        """``(departure time, queueing delay)`` in seconds, or None when the queue drops the packet."""
        if not self.kbps:
            return now_s, 0.0
        wait = self.backlog_s(now_s)
        if wait * 1000.0 > self.queue_ms:
            return None
        self.busy_until = now_s + wait + size_bytes * 8.0 / (self.kbps * 1000.0)
        return self.busy_until, wait


class DelayLine:
    """Base delay plus normal jitter (clamped at zero), in order unless ``reorder``."""

    def __init__(self, delay_ms: float, jitter_ms: float, reorder: bool, rng: random.Random) -> None:
        self.delay_ms, self.jitter_ms, self.reorder, self.rng = delay_ms, jitter_ms, reorder, rng
        self.last = float("-inf")

    def deliver_at(self, departure_s: float) -> float:
        delay_ms = self.delay_ms
        if self.jitter_ms > 0:
            delay_ms = max(0.0, self.rng.gauss(self.delay_ms, self.jitter_ms))
        when = departure_s + delay_ms / 1000.0
        if not self.reorder:
            when = max(when, self.last)
        self.last = max(self.last, when)
        return when


def _zero_counters() -> dict[str, int]:
    return {
        "offered_packets": 0,
        "offered_bytes": 0,
        "lost_packets": 0,
        "lost_bytes": 0,  # dropped by the loss model
        "queue_dropped_packets": 0,
        "queue_dropped_bytes": 0,  # dropped by the full queue
        "delivered_packets": 0,
        "delivered_bytes": 0,  # scheduled for delivery
    }


class Impairment:
    """Loss, then the link, then delay: ``admit(size, now)`` gives a delivery time, or None if dropped.

    Settings change at runtime with :meth:`update`; the loss state, the queue and the random streams
    carry on (a new ``seed`` restarts the random streams). Not thread-safe: use it from one event loop.
    """

    def __init__(self, config: NetworkConfig | None = None) -> None:
        self.config = config or NetworkConfig()
        self.counters = _zero_counters()
        self._queue_delays: deque[float] = deque(maxlen=QUEUE_WINDOW)
        self._last_now: float | None = None
        self._build(self.config, reseed=True)

    def _build(self, config: NetworkConfig, reseed: bool) -> None:
        if reseed:
            self.loss = GilbertElliottLoss(config.loss, config.burst, _rng(config.seed, "loss"))
            self.link = Link(config.kbps, config.queue_ms)
            self.delay = DelayLine(config.delay_ms, config.jitter_ms, config.reorder, _rng(config.seed, "jitter"))
        else:
            self.loss.set(config.loss, config.burst)
            self.link.kbps, self.link.queue_ms = config.kbps, config.queue_ms
            self.delay.delay_ms, self.delay.jitter_ms, self.delay.reorder = (
                config.delay_ms,
                config.jitter_ms,
                config.reorder,
            )

    def update(self, settings: NetworkConfig | dict[str, Any]) -> NetworkConfig:
        """Apply new settings (a :class:`NetworkConfig`, or a partial dict validated against the current ones)."""
        config = settings if isinstance(settings, NetworkConfig) else NetworkConfig.from_json(settings, self.config)
        self._build(config, reseed=config.seed != self.config.seed)
        self.config = config
        return config

    def admit(self, size_bytes: int, now_s: float) -> float | None:
        """Offer one packet at ``now_s``; its delivery time (>= ``now_s``), or None when it is dropped."""
        c = self.counters
        c["offered_packets"] += 1
        c["offered_bytes"] += size_bytes
        self._last_now = now_s
        if self.loss.lost():
            c["lost_packets"] += 1
            c["lost_bytes"] += size_bytes
            return None
        sent = self.link.send(size_bytes, now_s)
        if sent is None:
            c["queue_dropped_packets"] += 1
            c["queue_dropped_bytes"] += size_bytes
            return None
        departure, waited = sent
        if self.config.kbps:
            self._queue_delays.append(waited * 1000.0)
        c["delivered_packets"] += 1
        c["delivered_bytes"] += size_bytes
        return self.delay.deliver_at(departure)

    def queue_delay_ms(self, now_s: float | None = None) -> float:
        """The queueing delay a packet arriving at ``now_s`` (default: the last offer) would see."""
        when = self._last_now if now_s is None else now_s
        return 0.0 if when is None else self.link.backlog_s(when) * 1000.0

    def stats(self, now_s: float | None = None) -> dict:
        """Counters, the observed loss fraction and the queueing delay (p50 / p95 of recent packets, current)."""
        out: dict[str, Any] = dict(self.counters)
        offered = out["offered_packets"]
        out["loss_fraction"] = (
            round((out["lost_packets"] + out["queue_dropped_packets"]) / offered, 6) if offered else 0.0
        )
        delays = list(self._queue_delays)
        out["queue_delay_ms"] = {
            "p50": _round(percentile(delays, 50)),
            "p95": _round(percentile(delays, 95)),
            "current": round(self.queue_delay_ms(now_s), 2),
        }
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# --------------------------------------------------------------------------------------------------
# The hook into aiortc: RTCDtlsTransport._recv_next awaits ``ice_transport._recv()`` for every datagram.

CLASSES = ("stun", "dtls", "rtp", "rtcp", "other")


def classify(data: bytes) -> str:
    """RFC 7983 demultiplexing by the first byte; RTCP vs RTP by the second byte (RFC 5761: 192..223)."""
    if not data:
        return "other"
    first = data[0]
    if first <= 3:
        return "stun"
    if 20 <= first <= 63:
        return "dtls"
    if 128 <= first <= 191:
        return "rtcp" if len(data) >= 2 and 192 <= data[1] <= 223 else "rtp"
    return "other"


class PathHandle:
    """One ICE transport's wrapped ``_recv``: a pump task reads the original into a time-ordered queue.

    STUN, DTLS and anything unclassified is queued for now (it passes untouched and at once); RTP, and
    RTCP when the settings say so, goes through the impairment and is queued for its delivery time or
    dropped. ``_recv`` returns the queue's head once it is due, in (time, arrival) order; waiting for it
    is cancel-safe (the DTLS handshake calls it under ``asyncio.wait_for``). An error from the original
    ``_recv`` (ConnectionError when the transport closes) is raised to the caller after the packets
    already due; packets still in flight then are discarded, as on a link that went down.
    (aioice answers STUN itself, so in practice no STUN reaches ``_recv``; the class is counted anyway.)
    """

    def __init__(
        self, ice_transport: Any, impairment: Impairment, on_stop: Callable[[PathHandle], None] | None = None
    ) -> None:
        self.transport = ice_transport
        self.impairment = impairment
        self.counters = {name: {"packets": 0, "bytes": 0, "dropped": 0, "delivered": 0} for name in CLASSES}
        self._original: Callable[[], Awaitable[bytes]] = ice_transport._recv
        self._heap: list[tuple[float, int, bytes, str]] = []
        self._seq = 0
        self._pump: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._stopped = False
        self._on_stop = on_stop
        ice_transport._recv = self._recv

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        """Cancel the pump and restore the transport's own ``_recv``; idempotent. Queued packets are
        handed out at once to a caller still waiting, then reads go to the original again."""
        if self._stopped:
            return
        self._stopped = True
        if getattr(self.transport, "_recv", None) == self._recv:
            self.transport._recv = self._original
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
        self._wake()
        if self._on_stop is not None:
            self._on_stop(self)

    def stats(self) -> dict:
        return {name: dict(values) for name, values in self.counters.items()}

    async def _recv(self) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            if self._stopped:
                if self._heap:
                    return self._pop()
                return await self._original()
            if self._pump is None and self._error is None:
                # Started by the first read (ICE is connected by then; aioice refuses reads before).
                self._pump = asyncio.ensure_future(self._run_pump())
            now = loop.time()
            if self._heap and self._heap[0][0] <= now:
                return self._pop()
            if self._error is not None:
                self._discard_in_flight()
                raise self._error
            waiter = loop.create_future()
            self._waiter = waiter
            timer = loop.call_at(self._heap[0][0], self._wake) if self._heap else None
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
                if self._waiter is waiter:
                    self._waiter = None

    def _pop(self) -> bytes:
        _, _, data, kind = heapq.heappop(self._heap)
        self.counters[kind]["delivered"] += 1
        return data

    def _discard_in_flight(self) -> None:
        for _, _, _, kind in self._heap:
            self.counters[kind]["dropped"] += 1
        self._heap.clear()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _run_pump(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await self._original()
                self._schedule(data, loop.time())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # ConnectionError on close; anything else reaches the DTLS loop too
            self._error = exc
            self._wake()

    def _schedule(self, data: bytes, now: float) -> None:
        kind = classify(data)
        counter = self.counters[kind]
        counter["packets"] += 1
        counter["bytes"] += len(data)
        impaired = kind == "rtp" or (kind == "rtcp" and self.impairment.config.impair_rtcp)
        when = self.impairment.admit(len(data), now) if impaired else now
        if when is None:
            counter["dropped"] += 1
            return
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, data, kind))
        if self._heap[0][1] == self._seq:  # the new packet is the head: the reader may need to wake sooner
            self._wake()


def attach(ice_transport: Any, impairment: Impairment) -> PathHandle:
    """Impair the datagrams an aiortc ``RTCIceTransport`` hands to its DTLS transport; ``handle.stop()`` undoes it."""
    return PathHandle(ice_transport, impairment)


# --------------------------------------------------------------------------------------------------
# Settings shared by every session, and their counters.


class SessionPath:
    """One peer connection's impaired path: one :class:`Impairment` (one bottleneck link per client) on
    each of its ICE transports (one with BUNDLE). Stops by itself when the peer connection closes."""

    def __init__(self, control: NetworkControl, impairment: Impairment, handles: list[PathHandle]) -> None:
        self.control, self.impairment, self.handles = control, impairment, handles
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for handle in self.handles:
            handle.stop()
        self.control._retire(self)

    def stats(self) -> dict:
        return {"impairment": self.impairment.stats(_now()), "classes": _sum_classes([h.stats() for h in self.handles])}


class NetworkControl:
    """The current :class:`NetworkConfig`, the impairments of live sessions, and counters over all of them.

    ``update()`` validates a partial change and applies it to every live impairment at once.
    """

    def __init__(self, config: NetworkConfig | None = None) -> None:
        self.config = config or NetworkConfig()
        self._live: weakref.WeakSet[Impairment] = weakref.WeakSet()
        self._paths: set[SessionPath] = set()
        self._retired = _zero_counters()
        self._retired_classes = {name: {"packets": 0, "bytes": 0, "dropped": 0, "delivered": 0} for name in CLASSES}
        self.sessions_total = 0

    def new_impairment(self) -> Impairment:
        """An impairment that follows this control's settings (every one starts from the same seed)."""
        impairment = Impairment(self.config)
        self._live.add(impairment)
        return impairment

    def update(self, changes: NetworkConfig | object) -> NetworkConfig:
        """Validate (ConfigError naming the field) and apply to every live impairment; returns the new settings."""
        config = changes if isinstance(changes, NetworkConfig) else NetworkConfig.from_json(changes, self.config)
        self.config = config
        for impairment in list(self._live):
            impairment.update(config)
        log.info("network settings: %s", config.to_json())
        return config

    def attach_peer(self, pc: Any) -> SessionPath:
        """Impair everything ``pc`` (an RTCPeerConnection, after setRemoteDescription) receives.

        Attaches one impairment to each distinct ICE transport of the transceivers (and SCTP), and
        stops when the connection reaches "closed"; ``stop()`` may also be called, any number of times.
        """
        impairment = self.new_impairment()
        transports: list[Any] = []
        carriers = [t.receiver for t in pc.getTransceivers()] + ([pc.sctp] if getattr(pc, "sctp", None) else [])
        for carrier in carriers:
            dtls = getattr(carrier, "transport", None)
            ice = getattr(dtls, "transport", None)
            if ice is not None and all(ice is not seen for seen in transports):
                transports.append(ice)
        path = SessionPath(self, impairment, [PathHandle(ice, impairment) for ice in transports])
        self._paths.add(path)
        self.sessions_total += 1

        def on_state() -> None:
            if pc.connectionState == "closed":
                path.stop()

        if hasattr(pc, "on"):
            pc.on("connectionstatechange", on_state)
        return path

    def _retire(self, path: SessionPath) -> None:
        if path in self._paths:
            self._paths.discard(path)
            for key, value in path.impairment.counters.items():
                self._retired[key] += value
            _add_classes(self._retired_classes, [h.stats() for h in path.handles])
            self._live.discard(path.impairment)

    def stats(self) -> dict:
        """``{"settings", "active", "sessions", "sessions_total", "counters", "queue_delay_ms", "classes"}``.

        ``counters`` and ``classes`` add up every session since start (live and closed); ``queue_delay_ms``
        is about now: p50 / p95 over the live sessions' last 1000 packets each, and the largest current backlog.
        """
        now = _now()
        live = [p.impairment for p in self._paths]
        counters = dict(self._retired)
        for impairment in live:
            for key, value in impairment.counters.items():
                counters[key] += value
        offered = counters["offered_packets"]
        dropped = counters["lost_packets"] + counters["queue_dropped_packets"]
        delays = [d for impairment in live for d in impairment._queue_delays]
        current = max((impairment.queue_delay_ms(now) for impairment in live), default=0.0)
        classes = {name: dict(values) for name, values in self._retired_classes.items()}
        _add_classes(classes, [h.stats() for p in self._paths for h in p.handles])
        return {
            "settings": self.config.to_json(),
            "active": self.config.active,
            "sessions": len(self._paths),
            "sessions_total": self.sessions_total,
            "counters": {**counters, "loss_fraction": round(dropped / offered, 6) if offered else 0.0},
            "queue_delay_ms": {
                "p50": _round(percentile(delays, 50)),
                "p95": _round(percentile(delays, 95)),
                "current": round(current, 2),
            },
            "classes": classes,
        }


def _add_classes(total: dict[str, dict[str, int]], parts: list[dict[str, dict[str, int]]]) -> None:
    for part in parts:
        for name, values in part.items():
            for key, value in values.items():
                total[name][key] += value


def _sum_classes(parts: list[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    total = {name: {"packets": 0, "bytes": 0, "dropped": 0, "delivered": 0} for name in CLASSES}
    _add_classes(total, parts)
    return total


def _now() -> float | None:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return None
