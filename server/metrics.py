"""Rolling per-frame measurements: percentiles of recent samples and frame rates over a window."""

from __future__ import annotations

import time
from collections import deque

import numpy as np


def percentile(values: list[float] | np.ndarray, q: float) -> float | None:
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


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
