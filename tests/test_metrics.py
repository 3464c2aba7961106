"""Rolling figures and WebRTC-style freeze detection on frame timelines."""

from __future__ import annotations

from srtc.server.metrics import FreezeDetector, RateMeter, RollingSamples


def timeline(detector: FreezeDetector, times: list[float]) -> list[bool]:
    return [detector.frame(t) for t in times]


def test_steady_30fps_has_no_freeze():
    detector = FreezeDetector()
    assert not any(timeline(detector, [i / 30 for i in range(300)]))
    assert detector.stats() == {"freezeCount": 0, "totalFreezesDuration": 0.0, "longestGapMs": 33.3}


def test_a_gap_over_average_plus_150ms_is_a_freeze_and_its_duration_counts():
    detector = FreezeDetector()
    times = [i / 30 for i in range(30)] + [1.0 + 0.25] + [1.25 + i / 30 for i in range(1, 30)]
    flags = timeline(detector, times)
    assert flags.count(True) == 1 and flags[30]
    stats = detector.stats()
    assert stats["freezeCount"] == 1
    assert abs(stats["totalFreezesDuration"] - (1.25 - 29 / 30)) < 1e-3


def test_at_low_frame_rates_three_intervals_are_needed():
    """At 5 fps the average is ~200 ms: a 450 ms gap is under 3x, so no freeze; 700 ms is one."""
    detector = FreezeDetector()
    times = [i * 0.2 for i in range(10)]
    times += [times[-1] + 0.45]
    times += [times[-1] + 0.2 * i for i in range(1, 6)]
    times += [times[-1] + 0.70]
    flags = timeline(detector, times)
    assert flags.count(True) == 1 and flags[-1]


def test_rolling_samples_and_rate_meter():
    samples = RollingSamples(size=3)
    for value in (100.0, 1.0, 2.0, 3.0):
        samples.add(value)
    assert samples.summary() == {"p50": 2.0, "p95": 2.9, "max": 3.0}
    now = [0.0]
    meter = RateMeter(window_s=1.0, clock=lambda: now[0])
    for i in range(11):
        now[0] = i * 0.05
        meter.tick()
    assert meter.rate() == 20.0


def test_byte_rate_over_its_window():
    from srtc.server.metrics import ByteRate

    rate = ByteRate(window_s=2.0)
    assert rate.bps() == 0.0
    rate.add(1000, 10.0)
    assert rate.bps() == 0.0  # one send spans no time
    for i in range(1, 31):
        rate.add(1000, 10.0 + i * 0.1)  # 10 kB/s = 80 kbps
    assert abs(rate.bps() - 80_000) < 1
    rate.add(11_000, 13.1)  # a burst: the window is 11.1-13.1 s, the bytes after its first send count
    assert abs(rate.bps() - (19 * 1000 + 11_000) * 8 / 2.0) < 1
    rate.add(1000, 20.0)  # after a pause, one send alone spans no time again
    assert rate.bps() == 0.0
