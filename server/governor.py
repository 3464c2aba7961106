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


class LoadGovernor:
    """Decides, frame by frame, generator or bicubic; learns from the times it is told."""

    def __init__(self, policy: GovernorPolicy | None = None) -> None:
        self.policy = policy or GovernorPolicy()
        self.share = 1.0
        self.limit = 1.0  # the ceiling the drop feedback puts on the share
        self.drop_rate = 0.0  # the SR stage's excess drops, last reported
        self.generator_frames = 0
        self.bicubic_frames = 0
        self._generator_ms = RollingSamples(self.policy.window)
        self._bicubic_ms = RollingSamples(self.policy.window)
        self._credit = 0.0
        self._budget_ms = self.policy.headroom * self.policy.default_interval_ms

    def use_generator(self) -> bool:
        """Whether the next frame goes through the generator (error diffusion of ``share``)."""
        self._credit += self.share
        if self._credit >= 1.0 - 1e-9:
            self._credit -= 1.0
            return True
        return False

    def observe(self, generator: bool, ms: float, input_fps: float | None, drop_rate: float = 0.0) -> None:
        """One frame took ``ms`` with the generator (or bicubic); ``input_fps`` is the frames' arrival rate;
        ``drop_rate`` the share of recent input frames the stage dropped beyond the raw track's drops."""
        if generator:
            self.generator_frames += 1
            self._generator_ms.add(ms)
        else:
            self.bicubic_frames += 1
            self._bicubic_ms.add(ms)
        interval = 1000.0 / input_fps if input_fps and input_fps > 1.0 else self.policy.default_interval_ms
        self._budget_ms = self.policy.headroom * interval
        self.drop_rate = drop_rate
        if drop_rate > self.policy.drop_high:
            self.limit = max(self.policy.min_share, self.limit - self.policy.limit_step)
        elif drop_rate < self.policy.drop_low:
            self.limit = min(1.0, self.limit + self.policy.limit_step)
        target = self._target_share()
        if target is None:
            target = 1.0
        target = min(target, self.limit)
        if target < self.share:
            self.share = target
        else:
            self.share = min(target, self.share + self.policy.climb)

    def typical_ms(self, generator: bool) -> float | None:
        """The recent median time of one path (None before it has run): the stage's expected cost per frame."""
        return (self._generator_ms if generator else self._bicubic_ms).median()

    def _target_share(self) -> float | None:
        gen = self._generator_ms.median()
        if gen is None or len(self._generator_ms) < 3:
            return None
        bic = self._bicubic_ms.median() or 1.0
        if gen <= self._budget_ms:
            return 1.0
        share = (self._budget_ms - bic) / max(gen - bic, 1e-6)
        return min(1.0, max(self.policy.min_share, share))

    @property
    def mode(self) -> str:
        if self.share >= 1.0:
            return "generator"
        return "mixed" if self.share > self.policy.min_share else "bicubic"

    def stats(self) -> dict:
        return {
            "mode": self.mode,
            "share": round(self.share, 3),
            "budget_ms": round(self._budget_ms, 2),
            "limit": round(self.limit, 3),
            "drop_rate": round(self.drop_rate, 3),
            "generator_ms_p50": self._generator_ms.summary()["p50"],
            "bicubic_ms_p50": self._bicubic_ms.summary()["p50"],
            "generator_frames": self.generator_frames,
            "bicubic_frames": self.bicubic_frames,
        }
