"""Rolling per-frame measurements: percentiles of recent samples and frame rates over a window."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float | None:
    """The q-th percentile (0..100), or None when there is nothing to summarise."""
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


class RollingSamples:
    """The last ``size`` samples of a per-frame figure (milliseconds), summarised on demand.

    A bounded window keeps the summary about *now*: a stall ten minutes ago should not hide today's p95.
    """

    def __init__(self, size: int = 300) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self._samples.append(value)

    def __len__(self) -> int:
        return len(self._samples)

    def values(self) -> list[float]:
        return list(self._samples)

    def median(self) -> float | None:
        """The p50 alone: what per-frame decisions need, without the rest of :meth:`summary`."""
        return percentile(self._samples, 50) if self._samples else None

    def summary(self) -> dict[str, float | None]:
        values = list(self._samples)
        return {
            "p50": _round(percentile(values, 50)),
            "p95": _round(percentile(values, 95)),
            "max": _round(max(values) if values else None),
        }


class RateMeter:
    """Events per second over the last ``window_s`` seconds (a frame rate that follows changes quickly)."""

    def __init__(self, window_s: float = 2.0, clock=time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()

    def tick(self) -> None:
        now = self._clock()
        self._times.append(now)
        self._trim(now)

    def rate(self) -> float:
        now = self._clock()
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], self._times[-1] - self._times[0])
        return round((len(self._times) - 1) / span, 2) if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window_s:
            self._times.popleft()


class ByteRate:
    """Bits per second sent over the last ``window_s`` seconds, kept as a running sum (cheap to read per frame)."""

    def __init__(self, window_s: float = 2.0) -> None:
        self._window_s = window_s
        self._sizes: deque[tuple[float, int]] = deque()  # (when, bytes)
        self._bytes = 0  # the sum of the window's sizes after its first

    def add(self, size: int, now: float) -> None:
        if self._sizes:
            self._bytes += size
        self._sizes.append((now, size))
        while len(self._sizes) > 1 and now - self._sizes[0][0] > self._window_s:
            self._sizes.popleft()
            self._bytes -= self._sizes[0][1]  # the new first one's bytes no longer span an interval

    def bps(self) -> float:
        """0 before two sends: one alone spans no time."""
        if len(self._sizes) < 2:
            return 0.0
        span = self._sizes[-1][0] - self._sizes[0][0]
        return self._bytes * 8 / span if span > 0 else 0.0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class FreezeDetector:
    """Video freezes as WebRTC's ``freezeCount`` defines them.

    A gap between two rendered frames is a freeze when it is at least
    max(3 x the average frame interval, the average interval + 150 ms); the average is taken over the
    recent intervals before the gap (libwebrtc's VideoReceiveStream uses a similar sliding window).
    """

    def __init__(self, window: int = 30) -> None:
        self._intervals: deque[float] = deque(maxlen=window)
        self._last: float | None = None
        self.freeze_count = 0
        self.total_freezes_duration = 0.0  # seconds
        self.longest_gap = 0.0  # seconds: the longest stall, freeze or not
        self.frames = 0

    def frame(self, t: float) -> bool:
        """Record a frame shown at time ``t`` (seconds); True when the gap before it was a freeze."""
        self.frames += 1
        if self._last is None:
            self._last = t
            return False
        gap = max(0.0, t - self._last)
        self._last = t
        self.longest_gap = max(self.longest_gap, gap)
        frozen = False
        if len(self._intervals) >= 3:
            average = sum(self._intervals) / len(self._intervals)
            if gap >= max(3.0 * average, average + 0.150):
                self.freeze_count += 1
                self.total_freezes_duration += gap
                frozen = True
        if not frozen:
            self._intervals.append(gap)
        return frozen

    def stats(self) -> dict[str, float | int]:
        return {
            "freezeCount": self.freeze_count,
            "totalFreezesDuration": round(self.total_freezes_duration, 3),
            "longestGapMs": round(self.longest_gap * 1000.0, 1),
        }
