"""Graceful degradation: when the generator cannot keep up, send bicubic on some frames instead of lagging.

The SR stage must finish each frame within the frame interval or it falls behind: its one-frame slot
then drops frames (the viewer sees a lower frame rate) and, on shared cores, the encoder slows too.
The governor compares the generator's measured time per frame with a budget (``headroom`` x the
frame interval) and picks the share of frames that go through the generator so that the average cost
fits: ``share = (budget - bicubic) / (generator - bicubic)``. It steps down at once and climbs back
slowly, spreads the generator frames evenly (error diffusion: 0.75 means three frames in four), and
never goes below ``min_share`` so the generator's time keeps being measured and the stage can recover
when the load goes away.

Timing alone misses one case: the generator fits its budget on paper, yet the stage still drops
frames, because the encoder and everything else share the same cores. So the governor also watches
the frames the stage drops beyond those the raw track drops (the same input, no SR: its drops are
not the SR stage's doing): while more than ``drop_high`` of the input is lost that way, a second
limit on the share sinks by ``limit_step`` per frame; below ``drop_low`` it rises again.

A faster model, when there is one (the int8 build of the generator, ``srtc/training/qat.py``: 1.5x faster,
0.2 dB below it, 2.5 dB above bicubic), is the first step down. Once the generator has not fitted for
``down_after`` frames in a row (its share would fall below 1, or the stage drops frames beyond
``drop_high``), generator frames go through the fast model instead, and the share rule applies to
*its* time, so bicubic only comes in when even the fast model does not fit; a passing slow frame or
burst costs a few bicubic frames, not seconds on the fast model. One frame in ``probe_every`` still
runs the full generator, so its time under the present load stays known; it comes back once the
median of its last three such probes fits ``up_margin`` x the budget, the stage has run the fast
model for ``hold`` frames without dropping, and the share is full. A return that fails within
``hold`` frames doubles the next hold (up to ``max_hold``), so a stage at the edge settles on the
fast model instead of flapping.
Everything it decides is in :meth:`LoadGovernor.stats`, for ``/stats``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .metrics import RollingSamples


@dataclass(frozen=True)
class GovernorPolicy:
    """How the governor trades frames for time; validated so a bad value fails at start, not mid-call."""

    headroom: float = 0.85  # share of the frame interval the SR stage may spend on a frame
    window: int = 15  # recent generator timings its estimate uses (median)
    min_share: float = 0.05  # keep measuring the generator: at 30 fps, 1.5 frames a second
    climb: float = 0.05  # largest rise of the share per frame (about 2/3 s from min to full at 30 fps)
    default_interval_ms: float = 1000.0 / 30.0  # until the input's rate is known
    drop_high: float = 0.08  # excess drop rate (share of input frames, ~2 s window) that lowers the limit
    drop_low: float = 0.03  # ... and below which the limit rises again
    limit_step: float = 0.01  # change of the limit per frame (0.3 a second at 30 fps)
    probe_every: int = 30  # on the fast model, one generator frame in this many runs the full one (1 a second)
    up_margin: float = 0.9  # the full generator returns when its time fits this share of the budget
    down_after: int = 10  # frames in a row the generator must miss (time or drops) before the step down
    hold: int = 150  # frames on the fast model before trying the full one again (5 s at 30 fps)
    max_hold: int = 1800  # the longest hold after repeated failed returns (60 s)
    # Frames after a step down in which drops do not lower the limit: the stage's drop rate is a window
    # over past frames (srtc/server/sr_track.py, 60), which the full generator handled, not the fast model.
    settle: int = 60

    def __post_init__(self) -> None:
        if not 0.1 <= self.headroom <= 1.0:
            raise ValueError(f"headroom must be in 0.1..1.0, got {self.headroom}")
        if self.window < 3:
            raise ValueError(f"window must be at least 3 frames, got {self.window}")
        if not 0.0 < self.min_share <= 1.0:
            raise ValueError(f"min_share must be in (0, 1], got {self.min_share}")
        if not 0.0 < self.climb <= 1.0:
            raise ValueError(f"climb must be in (0, 1], got {self.climb}")
        if not 0.0 <= self.drop_low < self.drop_high <= 1.0:
            raise ValueError(f"drop_low < drop_high must both be in 0..1, got {self.drop_low}, {self.drop_high}")
        if not 0.0 < self.limit_step <= 1.0:
            raise ValueError(f"limit_step must be in (0, 1], got {self.limit_step}")
        if self.probe_every < 2:
            raise ValueError(f"probe_every must be at least 2 frames, got {self.probe_every}")
        if self.down_after < 1:
            raise ValueError(f"down_after must be at least 1 frame, got {self.down_after}")
        if not 0.1 <= self.up_margin <= 1.0:
            raise ValueError(f"up_margin must be in 0.1..1.0, got {self.up_margin}")
        if self.settle < 0:
            raise ValueError(f"settle must be 0 frames or more, got {self.settle}")
        if not 1 <= self.hold <= self.max_hold:
            raise ValueError(f"need 1 <= hold <= max_hold, got {self.hold}, {self.max_hold}")


GENERATOR, FAST, BICUBIC = "generator", "fast", "bicubic"
PATHS = (GENERATOR, FAST, BICUBIC)


class LoadGovernor:
    """Decides, frame by frame, generator, fast model or bicubic; learns from the times it is told."""

    def __init__(self, policy: GovernorPolicy | None = None, fast: bool = False) -> None:
        """``fast``: a faster model is available as the first step down."""
        self.policy = policy or GovernorPolicy()
        self.has_fast = fast
        self.tier = GENERATOR  # the model generator frames go through: GENERATOR or FAST
        self.share = 1.0  # of frames through that model; bicubic gets the rest
        self.limit = 1.0  # the ceiling the drop feedback puts on the share
        self.drop_rate = 0.0  # the SR stage's excess drops, last reported
        self.frames = {path: 0 for path in PATHS}
        self.switches = 0
        self._ms = {path: RollingSamples(self.policy.window) for path in PATHS}
        self._credit = 0.0
        self._budget_ms = self.policy.headroom * self.policy.default_interval_ms
        self._since_switch = 0  # frames observed since the tier last changed
        self._hold = self.policy.hold
        self._tier_frames = 0  # generator frames chosen on the fast tier, for probing
        self._probes = RollingSamples(3)  # the full generator's latest times while on the fast tier
        self._missed = 0  # frames in a row the full generator has not fit (time or drops)

    def choose(self) -> str:
        """The path of the next frame: the tier's model on ``share`` of frames (error diffusion), else bicubic."""
        self._credit += self.share
        if self._credit < 1.0 - 1e-9:
            return BICUBIC
        self._credit -= 1.0
        if self.tier == FAST:
            self._tier_frames += 1
            if self._tier_frames % self.policy.probe_every == 0:
                return GENERATOR  # keep the full generator's time under the present load known
        return self.tier

    def observe(self, path: str, ms: float, input_fps: float | None, drop_rate: float = 0.0) -> None:
        """One frame took ``ms`` on ``path`` (one of :data:`PATHS`); ``input_fps`` is the frames' arrival
        rate; ``drop_rate`` the share of recent input frames the stage dropped beyond the raw track's drops."""
        if path not in PATHS:
            raise ValueError(f"unknown path {path!r}")
        self.frames[path] += 1
        self._ms[path].add(ms)
        if path == GENERATOR and self.tier == FAST:
            self._probes.add(ms)
        self._since_switch += 1
        interval = 1000.0 / input_fps if input_fps and input_fps > 1.0 else self.policy.default_interval_ms
        self._budget_ms = self.policy.headroom * interval
        self.drop_rate = drop_rate
        settling = self.tier == FAST and self._since_switch <= self.policy.settle
        if drop_rate > self.policy.drop_high and not settling:
            self.limit = max(self.policy.min_share, self.limit - self.policy.limit_step)
        elif drop_rate < self.policy.drop_low:
            self.limit = min(1.0, self.limit + self.policy.limit_step)
        self._retier()
        target = self._target_share(self.tier)
        if target is None:
            target = 1.0
        target = min(target, self.limit)
        if target < self.share:
            self.share = target
        else:
            self.share = min(target, self.share + self.policy.climb)

    def _retier(self) -> None:
        """Step down to the fast model when the generator does not fit; back up when it does again."""
        if not self.has_fast:
            return
        if self.tier == GENERATOR:
            target = self._target_share(GENERATOR)
            missing = self.drop_rate > self.policy.drop_high or (target is not None and target < 1.0)
            self._missed = self._missed + 1 if missing else 0
            if self._missed >= self.policy.down_after:
                if self._since_switch < self._hold and self.switches:  # the last return failed quickly
                    self._hold = min(self.policy.max_hold, 2 * self._hold)
                self._switch(FAST)
                self.limit = 1.0  # the drops were the full generator's; the fast model starts afresh (``settle``)
            return
        gen = self._probes.median() if len(self._probes) >= 3 else None  # the last 3 probes: the present load
        if (
            gen is not None
            and gen <= self.policy.up_margin * self._budget_ms
            and self._since_switch >= self._hold
            and self.share >= 1.0
            and self.limit >= 1.0
            and self.drop_rate < self.policy.drop_low
        ):
            self._switch(GENERATOR)

    def _switch(self, tier: str) -> None:
        if tier == GENERATOR:  # judge the full generator by the probes (the present load), not older frames
            self._ms[GENERATOR] = RollingSamples(self.policy.window)
            for ms in self._probes.values():
                self._ms[GENERATOR].add(ms)
        self.tier, self.switches, self._since_switch, self._tier_frames = tier, self.switches + 1, 0, 0
        self._missed = 0
        self._probes = RollingSamples(3)

    def typical_ms(self, path: str) -> float | None:
        """The recent median time of one path (None before it has run): the stage's expected cost per frame."""
        return self._ms[path].median()

    def _target_share(self, tier: str) -> float | None:
        model = self._ms[tier].median()
        if model is None or len(self._ms[tier]) < 3:
            return None
        bic = self._ms[BICUBIC].median() or 1.0
        if model <= self._budget_ms:
            return 1.0
        share = (self._budget_ms - bic) / max(model - bic, 1e-6)
        return min(1.0, max(self.policy.min_share, share))

    @property
    def generator_frames(self) -> int:
        """Frames through a model (full or fast)."""
        return self.frames[GENERATOR] + self.frames[FAST]

    @property
    def bicubic_frames(self) -> int:
        return self.frames[BICUBIC]

    @property
    def mode(self) -> str:
        """generator | fast (every frame through a model, the named one) | mixed (some bicubic) | bicubic."""
        if self.share >= 1.0:
            return self.tier
        return "mixed" if self.share > self.policy.min_share else "bicubic"

    def stats(self) -> dict:
        return {
            "mode": self.mode,
            "tier": self.tier,
            "share": round(self.share, 3),
            "budget_ms": round(self._budget_ms, 2),
            "limit": round(self.limit, 3),
            "drop_rate": round(self.drop_rate, 3),
            "generator_ms_p50": self._ms[GENERATOR].summary()["p50"],
            "fast_ms_p50": self._ms[FAST].summary()["p50"] if self.has_fast else None,
            "bicubic_ms_p50": self._ms[BICUBIC].summary()["p50"],
            "generator_frames": self.generator_frames,
            "full_frames": self.frames[GENERATOR],
            "fast_frames": self.frames[FAST],
            "bicubic_frames": self.bicubic_frames,
            "switches": self.switches,
        }
