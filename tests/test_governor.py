"""The SR stage under load: the governor's share rule, and the fallback engaging on a slowed generator."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import av
import pytest

from srtc.server.fanout import FrameFanout
from srtc.server.governor import GovernorPolicy, LoadGovernor
from srtc.server.sr_track import SuperResolutionTrack

from .test_sr_track import FastSource


def feed(
    governor: LoadGovernor, frames: int, generator_ms: float, bicubic_ms: float = 1.0, fps: float = 30.0
) -> list[bool]:
    """Run ``frames`` decisions, reporting the given cost for each path; the choices made."""
    paths = feed_paths(governor, frames, {"generator": generator_ms, "bicubic": bicubic_ms}, fps)
    return [path != "bicubic" for path in paths]


def test_a_generator_within_budget_runs_on_every_frame():
    governor = LoadGovernor()
    assert all(feed(governor, 90, generator_ms=20.0))  # 20 ms < 0.85 x 33.3 ms
    assert governor.mode == "generator" and governor.stats()["bicubic_frames"] == 0


def test_a_slow_generator_gets_the_share_that_fits_the_budget():
    governor = LoadGovernor(GovernorPolicy(headroom=0.85))
    choices = feed(governor, 300, generator_ms=50.0, bicubic_ms=1.0)
    budget = 0.85 * 1000.0 / 30.0
    expected = (budget - 1.0) / (50.0 - 1.0)  # ~0.57
    assert governor.share == pytest.approx(expected, abs=0.01)
    assert governor.mode == "mixed"
    # The last 100 frames keep the average cost per frame inside the budget.
    recent = choices[-100:]
    average_ms = sum(50.0 if c else 1.0 for c in recent) / len(recent)
    assert average_ms <= budget + 1.0
    # Error diffusion spreads the generator frames: never more than one bicubic frame in a row at ~57%.
    runs = "".join("g" if c else "b" for c in recent)
    assert "bb" not in runs


def test_an_overloaded_stage_keeps_a_floor_and_recovers_when_the_load_goes():
    governor = LoadGovernor(GovernorPolicy(min_share=0.05))
    feed(governor, 200, generator_ms=2000.0)
    assert governor.share == pytest.approx(0.05) and governor.mode == "bicubic"
    # The floor keeps timing the generator, so it notices the load is gone and climbs back.
    feed(governor, 400, generator_ms=15.0)
    assert governor.share == 1.0 and governor.mode == "generator"


def test_drops_beyond_the_raw_tracks_lower_the_share_even_when_the_timing_fits():
    governor = LoadGovernor()
    for _ in range(40):  # 20 ms fits the 28 ms budget, yet the stage drops 20% of the input
        governor.observe(governor.choose(), 20.0, 30.0, drop_rate=0.20)
    assert governor.share == pytest.approx(0.6, abs=0.02) and governor.stats()["limit"] == pytest.approx(
        governor.share, abs=1e-3
    )
    for _ in range(40):  # a little drop (bursts after a network recovery) holds the limit where it is
        governor.observe(governor.choose(), 20.0, 30.0, drop_rate=0.05)
    assert governor.share == pytest.approx(0.6, abs=0.02)
    for _ in range(60):  # no more drops: back to every frame
        governor.observe(governor.choose(), 20.0, 30.0, drop_rate=0.0)
    assert governor.share == 1.0 and governor.mode == "generator"


def test_a_slower_input_rate_gives_a_bigger_budget():
    fast, slow = LoadGovernor(), LoadGovernor()
    feed(fast, 100, generator_ms=45.0, fps=30.0)
    feed(slow, 100, generator_ms=45.0, fps=15.0)
    assert fast.share < 1.0 and slow.share == 1.0


def feed_paths(
    governor: LoadGovernor, frames: int, ms: dict[str, float], fps: float = 30.0, drop_rate: float = 0.0
) -> list[str]:
    """Like ``feed`` with a fast model: each path's cost per frame from ``ms``; the paths chosen."""
    paths = []
    for _ in range(frames):
        path = governor.choose()
        paths.append(path)
        governor.observe(path, ms[path], fps, drop_rate)
    return paths


def test_a_slow_generator_steps_down_to_the_fast_model_before_bicubic():
    governor = LoadGovernor(fast=True)
    paths = feed_paths(governor, 300, {"generator": 40.0, "fast": 20.0, "bicubic": 1.0})  # budget 28.3 ms
    recent = paths[-150:]
    assert governor.tier == "fast" and governor.mode == "fast" and governor.share == 1.0
    assert "bicubic" not in recent  # the fast model fits: no frame needs bicubic
    # One frame in probe_every still runs the full generator, so its time under this load stays known.
    assert recent.count("generator") == pytest.approx(len(recent) / GovernorPolicy().probe_every, abs=1)
    stats = governor.stats()
    assert stats["tier"] == "fast" and stats["fast_frames"] > 250 and stats["switches"] == 1
    assert stats["fast_ms_p50"] == 20.0 and stats["generator_ms_p50"] == 40.0


def test_when_even_the_fast_model_does_not_fit_its_frames_are_shared_with_bicubic():
    governor = LoadGovernor(fast=True)
    feed_paths(governor, 300, {"generator": 80.0, "fast": 50.0, "bicubic": 1.0})
    budget = 0.85 * 1000.0 / 30.0
    assert governor.tier == "fast" and governor.mode == "mixed"
    assert governor.share == pytest.approx((budget - 1.0) / (50.0 - 1.0), abs=0.03)  # the fast model's share


def test_the_full_generator_returns_when_the_load_goes_and_a_failed_return_backs_off():
    policy = GovernorPolicy(hold=60)
    governor = LoadGovernor(policy, fast=True)
    feed_paths(governor, 100, {"generator": 40.0, "fast": 20.0, "bicubic": 1.0})
    assert governor.tier == "fast"
    light = {"generator": 15.0, "fast": 8.0, "bicubic": 1.0}
    for frames in range(400):  # noqa: B007 (the count is read after the loop)
        if governor.tier == "generator":
            break
        feed_paths(governor, 1, light)
    assert governor.tier == "generator" and governor.switches == 2
    assert frames <= 3 * policy.probe_every  # the latest probes at 15 ms are enough, older 40 ms ones do not count
    feed_paths(governor, 20, light)
    assert governor.mode == "generator" and governor.stats()["full_frames"] > 20
    # It comes back, but the stage drops frames at once: down again, and the next hold is twice as long.
    feed_paths(governor, 5, light, drop_rate=0.2)
    assert governor.tier == "generator"  # a passing burst of drops: a few bicubic frames at most
    feed_paths(governor, 10, light, drop_rate=0.2)
    assert governor.tier == "fast" and governor.switches == 3
    feed_paths(governor, 100, light)
    assert governor.tier == "fast"  # 100 frames < the doubled hold of 120
    feed_paths(governor, 40, light)
    assert governor.tier == "generator"


def test_without_a_fast_model_the_governor_never_picks_one():
    governor = LoadGovernor()
    paths = feed_paths(governor, 200, {"generator": 40.0, "fast": 1.0, "bicubic": 1.0})
    assert "fast" not in paths and governor.tier == "generator" and governor.mode == "mixed"
    with pytest.raises(ValueError, match="unknown path"):
        governor.observe("nearest", 1.0, 30.0)


@pytest.mark.parametrize(
    "field,value",
    [
        ("headroom", 0.0),
        ("headroom", 1.5),
        ("window", 1),
        ("min_share", 0.0),
        ("climb", 2.0),
        ("drop_high", 0.01),
        ("limit_step", 0.0),
        ("probe_every", 1),
        ("up_margin", 0.0),
        ("hold", 0),
        ("settle", -1),
        ("down_after", 0),
    ],
)
def test_out_of_range_policies_are_refused(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        GovernorPolicy(**{field: value})


class SlowedUpscaler:
    """The shipped generator made artificially slow: what a slower machine or more streams look like."""

    def __init__(self, inner, delay_s: float) -> None:
        self.inner, self.delay_s, self.name, self.calls = inner, delay_s, inner.name, 0

    def upscale(self, frame: av.VideoFrame) -> av.VideoFrame:
        self.calls += 1
        time.sleep(self.delay_s)
        return self.inner.upscale(frame)


async def take(track: SuperResolutionTrack, frames: int, consumer_s: float) -> list[av.VideoFrame]:
    out = []
    for _ in range(frames):
        out.append(await track.recv())
        await asyncio.sleep(consumer_s)  # the encoder's share of the frame time
    return out


async def test_the_fallback_engages_when_the_stage_is_slowed_and_stats_say_so(upscaler):
    slowed = SlowedUpscaler(upscaler, delay_s=0.08)  # 80 ms a frame against a 30 fps input
    source = FastSource(total=10_000, interval_s=1 / 30)
    fanout = FrameFanout(source)
    with ThreadPoolExecutor(1) as executor:
        sr = SuperResolutionTrack(fanout.subscribe(), slowed, executor)
        frames = await take(sr, 60, consumer_s=0.005)
        stats = sr.stats()
        sr.stop()
        await fanout.stop()
    gov = stats["governor"]
    assert gov["mode"] in ("mixed", "bicubic") and gov["share"] < 0.5, gov
    assert gov["bicubic_frames"] >= 20 and gov["generator_frames"] >= 3, gov
    assert gov["generator_ms_p50"] >= 80.0 and gov["budget_ms"] < 40.0
    assert slowed.calls == gov["generator_frames"]
    # Every frame still went out at twice the size, generator or bicubic.
    assert all((f.width, f.height) == (640, 360) for f in frames)


async def test_an_unslowed_generator_is_not_degraded(upscaler):
    source = FastSource(total=10_000, interval_s=1 / 10)  # 10 fps: 85 ms of budget, far above the generator's time
    fanout = FrameFanout(source)
    with ThreadPoolExecutor(1) as executor:
        sr = SuperResolutionTrack(fanout.subscribe(), upscaler, executor)
        await take(sr, 12, consumer_s=0.0)
        gov = sr.stats()["governor"]
        sr.stop()
        await fanout.stop()
    assert gov["mode"] == "generator" and gov["bicubic_frames"] == 0, gov


async def test_a_slowed_generator_hands_its_frames_to_the_fast_model(upscaler, tmp_path):
    """The shipped generator slowed to 40 ms a frame, with the real int8 fallback as the fast model: frames
    go through the fast model (counted by the engine itself), not bicubic, and /stats-style figures say so."""
    from srtc.server.engine import OnnxUpscaler
    from srtc.zoo import load_manifest, resolve

    name = load_manifest()["models"][load_manifest()["default"]].get("fallback")
    if name is None:
        pytest.skip("the default model has no fallback in srtc/zoo/manifest.json")
    fast = SlowedUpscaler(OnnxUpscaler(resolve(name), threads=2, name=name), delay_s=0.0)
    slowed = SlowedUpscaler(upscaler, delay_s=0.04)
    source = FastSource(total=10_000, interval_s=1 / 30)
    fanout = FrameFanout(source)
    with ThreadPoolExecutor(1) as executor:
        sr = SuperResolutionTrack(fanout.subscribe(), slowed, executor, fast=fast)
        frames = await take(sr, 60, consumer_s=0.005)
        stats = sr.stats()
        sr.stop()
        await fanout.stop()
    gov = stats["governor"]
    assert gov["tier"] == "fast" and gov["switches"] >= 1, gov
    assert fast.calls == gov["fast_frames"] >= 30 and slowed.calls == gov["full_frames"], gov
    assert gov["bicubic_frames"] <= 5, gov
    assert stats["fast_upscaler"] == name
    assert all((f.width, f.height) == (640, 360) for f in frames)
