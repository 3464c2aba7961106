"""The per-frame latency budget: stage arithmetic, the receive-side log, and the encoder hook."""

from __future__ import annotations

import asyncio

from srtc.server.budget import STAGES, ArrivalLog, StageTimes, time_encoding


def test_stages_are_the_differences_between_the_points_in_time():
    times = StageTimes()
    times.frame(
        {
            "first_packet": 10.000,
            "released": 10.030,
            "arrived": 10.034,
            "started": 10.040,
            "done": 10.052,
            "handed": 10.060,
            "encoded": 10.070,
            "sent": 10.071,
        }
    )
    summary = times.summary()
    expected = {
        "receive": 30.0,
        "decode": 4.0,
        "wait": 6.0 + 8.0,
        "sr": 12.0,
        "encode": 10.0,
        "send": 1.0,
        "total": 71.0,
    }
    assert set(summary) == set(STAGES)
    for stage, ms in expected.items():
        assert abs(summary[stage]["p50"] - ms) < 0.01, (stage, summary[stage])


def test_without_receive_times_the_total_starts_at_the_decoder_output():
    times = StageTimes()
    times.frame(
        {
            "first_packet": None,
            "released": None,
            "arrived": 1.0,
            "started": 1.0,
            "done": 1.0,
            "handed": 1.002,
            "encoded": 1.010,
            "sent": 1.011,
        }
    )
    summary = times.summary()
    assert summary["receive"]["p50"] is None and summary["decode"]["p50"] is None
    assert abs(summary["total"]["p50"] - 11.0) < 0.01


def test_the_arrival_log_is_bounded_and_keyed_by_pts():
    log = ArrivalLog(size=4)
    for pts in range(10):
        log.released(pts * 3000, first_packet=pts, released=pts + 0.5)
    assert log.lookup(9 * 3000) == (9, 9.5)
    assert log.lookup(0) is None and log.lookup(None) is None  # evicted; unknown


class FakeSender:
    """Stands in for aiortc's RTCRtpSender: ``_run_rtp`` awaits ``_next_encoded_frame`` on the instance."""

    def __init__(self, results: list) -> None:
        self.results = results

    async def _next_encoded_frame(self, codec):
        await asyncio.sleep(0)
        return self.results.pop(0)


async def test_the_encoder_hook_reports_encoded_frames_only():
    sender = FakeSender(["payloads", None, "more payloads"])
    seen: list[float] = []
    time_encoding(sender, seen.append)
    assert await sender._next_encoded_frame("vp8") == "payloads"
    assert await sender._next_encoded_frame("vp8") is None  # a disabled sender or a resampling delay
    assert await sender._next_encoded_frame("vp8") == "more payloads"
    assert len(seen) == 2 and seen[0] <= seen[1]
