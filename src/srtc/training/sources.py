"""Where a stage's training pairs come from: clean bicubic pairs cut from HR images (optionally with a
teacher's output blended into the target), or a codec-aware pair cache (``srtc.training.degrade``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from .data import PatchPairs
from .loop import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataConfig:
    """A stage's training data and batch shape."""

    data: str = "../shared/data/train"  # HR images for clean pairs (searched recursively)
    pairs: str | None = None  # a codec-aware pair cache instead of ``data``
    patch: int = 96  # HR patch side (px)
    batch: int = 32
    limit_images: int | None = None  # only the first N images (tests)
    teacher: str | None = None  # a published x2 peer whose output is blended into the target
    teacher_weight: float = 0.5  # its share of the target
    full_range: float = 0.0  # share of clean pairs stretched to full-range luma
    temporal: float = 0.0  # weight of a temporal term (needs a pair cache with clips)
    temporal_batch: int = 16  # clip patch pairs per step for it

    def __post_init__(self) -> None:
        if self.patch < 2 or self.batch < 1:
            raise ConfigError(f"--patch must be >= 2 and --batch >= 1, got {self.patch}, {self.batch}")
        if self.pairs and self.teacher:
            raise ConfigError("--teacher works on --data (clean pairs), not on a --pairs cache")
        if self.pairs and self.full_range:
            raise ConfigError("--full-range works on --data (clean pairs), not on a --pairs cache")
        if not 0.0 <= self.full_range <= 1.0:
            raise ConfigError(f"--full-range is a share of patches, 0..1; got {self.full_range}")
        if self.teacher and not 0.0 < self.teacher_weight <= 1.0:
            raise ConfigError(f"--teacher-weight must be in (0, 1], got {self.teacher_weight}")
        if self.temporal < 0 or (self.temporal and not self.pairs):
            raise ConfigError(
                "--temporal needs a weight >= 0 and consecutive coded frames: give --pairs (a cache with clips)"
            )


def load_training_data(cfg: DataConfig, seed: int, device: torch.device | None = None):
    """Clean bicubic pairs cut from ``cfg.data``, or the degraded (codec-aware) pairs of a ``cfg.pairs`` cache."""
    if cfg.pairs:
        from .degrade import CodecPatchPairs  # imports PyAV; only needed for codec-aware training

        return CodecPatchPairs(cfg.pairs, cfg.patch, cfg.limit_images, seed=seed)
    if not cfg.teacher:
        return PatchPairs(cfg.data, cfg.patch, cfg.limit_images, full_range=cfg.full_range)
    from .teacher import load_teacher

    name, teacher = load_teacher(cfg.teacher, device)
    t0 = time.perf_counter()
    data = PatchPairs(
        cfg.data,
        cfg.patch,
        cfg.limit_images,
        teacher=teacher,
        teacher_weight=cfg.teacher_weight,
        full_range=cfg.full_range,
    )
    log.info(
        "targets: %.0f%% %s, %.0f%% HR (teacher ran in %.0f s)",
        100 * cfg.teacher_weight,
        name,
        100 * (1 - cfg.teacher_weight),
        time.perf_counter() - t0,
    )
    return data
