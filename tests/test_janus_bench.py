"""The Janus bench's arithmetic: frame rate at 1280x720 and latency over the window, from the viewer's frames."""

from __future__ import annotations

import pytest

from srtc.server.config import ConfigError
from srtc.tools.janus_bench import (
    CLOCK_TICKS,
    BenchConfig,
    Seen,
    busy_cores,
    mean_cores,
    percentile,
    summarize,
    worker_report,
)


def test_percentiles_are_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([30.0, 10.0, 20.0], 50) == 20.0
    assert percentile([float(v) for v in range(1, 101)], 95) == 95.0
    assert percentile([5.0], 95) == 5.0
    assert mean_cores([0.5, 0.7]) == 0.6 and mean_cores([]) is None


def test_a_feed_is_summarized_over_its_window_only():
    sent = {n: 10.0 + n / 10 for n in range(40)}  # 10 fps from t = 10 s
    seen = [Seen(10.0 + n / 10 + 0.1, 1280, 720, n, feed=7) for n in range(40)]  # 100 ms each
    seen[5] = Seen(seen[5].at, 640, 360, 5, feed=7)  # a frame at the wrong size: not a 720p frame
    seen[6] = Seen(seen[6].at, 1280, 720, None, feed=7)  # its number unreadable: no latency
    seen.append(Seen(12.05, 1280, 720, 19, feed=8))  # a repeat from a second feed: counted, no latency
    seen.insert(25, Seen(12.55, 1280, 720, 3, feed=8))  # late and out of order
    report = summarize(seen, sent, start=10.0, end=13.0)
    # frames decoded in [10, 13): numbers 0..28 (at 10.1..12.9), the repeat and the late one
    assert report.frames == 29 + 2
    assert report.fps_720 == round((31 - 1) / 3.0, 1)
    assert report.unreadable == 1 and report.out_of_order == 0  # 3 was seen before: a repeat, not disorder
    assert report.latency_p50_ms == 100 and report.latency_p95_ms == 100
    assert report.sent_fps == 10.0 and report.feeds == 2


def test_out_of_order_frames_and_latency_spread():
    sent = {0: 0.0, 1: 0.1, 2: 0.2, 3: 0.3}
    seen = [Seen(0.2, 1280, 720, 0, 1), Seen(0.5, 1280, 720, 2, 1), Seen(0.6, 1280, 720, 1, 1)]
    seen.append(Seen(0.7, 1280, 720, 3, 1))
    report = summarize(seen, sent, start=0.0, end=1.0)
    assert report.out_of_order == 1
    assert (report.latency_p50_ms, report.latency_p95_ms) == (300, 500)  # 200, 300, 400, 500 ms


def test_the_settings_are_validated():
    with pytest.raises(ConfigError, match="publishers"):
        BenchConfig(publishers=0)
    with pytest.raises(ConfigError, match="janus_url"):
        BenchConfig(janus_url="ws://127.0.0.1:8188")
    with pytest.raises(ConfigError, match="frame numbers"):
        BenchConfig(seconds=600.0, settle_s=600.0, warmup_s=120.0, fps=60.0)


def test_busy_cores_from_two_readings():
    assert busy_cores((100, 1000), (100 + 150 * CLOCK_TICKS // 100, 2000), seconds=1.0) == 1.5
    assert busy_cores(None, (1, 2), 1.0) is None


def test_a_workers_report_averages_its_cores_and_tolerates_missing_stats():
    stats = {"worker": {"publishers": 2}, "streams": [{"fps_out": 29.5, "governor": {"mode": "full"}}, {}]}
    report = worker_report("http://w/stats", [0.5, 0.6, 0.7], stats)
    assert report["cores"] == 0.6 and report["publishers"] == 2
    assert report["fps_out"] == [29.5, None] and report["governor"] == ["full", None]
    assert worker_report("http://w/stats", [], {})["cores"] is None
