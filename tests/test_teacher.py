"""Distillation targets (srtc.training.teacher): a published peer's output blended into the training target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_or_skip

pytest.importorskip("torch", reason="torch not installed (pip install -e '.[train]')")

from srtc.training.data import PatchPairs
from srtc.training.errors import ConfigError
from srtc.training.teacher import blend, load_teacher, peer_family
from srtc.training.train import parse_config


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a[2:-2, 2:-2] - b[2:-2, 2:-2]) ** 2)))


def test_a_file_outside_the_peer_layout_is_refused(tmp_path: Path) -> None:
    stray = tmp_path / "model.pth"
    stray.write_bytes(b"")
    with pytest.raises(ValueError, match="not a known x2 peer"):
        peer_family(stray)
    with pytest.raises(FileNotFoundError, match="teacher weights not found"):
        load_teacher(tmp_path / "etds" / "ETDS_M5C16_x2.pth")


def test_blend_weights_the_teacher_and_checks_shapes() -> None:
    hr, taught = np.zeros((4, 6), np.float32), np.ones((4, 6), np.float32)
    assert np.allclose(blend(hr, taught, 0.25), 0.25)
    with pytest.raises(ValueError, match="does not match"):
        blend(hr, taught[:, :4], 0.5)


def test_teacher_targets_are_blended_once_at_load_and_beat_bicubic() -> None:
    """With weight 0.5 each target is halfway between the real HR and the teacher's output, and that
    output, a published model, is closer to the HR than the bicubic upscale of the same LR."""
    import cv2

    peer = shared_or_skip("peers", "etds", "ETDS_M5C16_x2.pth")
    train = shared_or_skip("data", "train", "T91")
    name, teacher = load_teacher(peer)
    assert name == "ETDS-M5C16"
    plain = PatchPairs(train, patch=32, limit=3)
    taught = PatchPairs(train, patch=32, limit=3, teacher=teacher, teacher_weight=0.5)
    for lr, hr, target in zip(plain.lr, plain.hr, taught.hr):
        out = teacher(lr)
        assert np.allclose(target, 0.5 * hr + 0.5 * out, atol=1e-6)
        bicubic = cv2.resize(lr, (hr.shape[1], hr.shape[0]), interpolation=cv2.INTER_CUBIC)
        assert psnr(out, hr) > psnr(bicubic, hr) + 0.5


def test_train_refuses_a_teacher_with_codec_pairs_or_a_bad_weight() -> None:
    with pytest.raises(ConfigError, match="not on a --pairs cache"):
        parse_config(["--out", "x", "--steps", "1", "--pairs", "cache", "--teacher", "t.pth"])
    with pytest.raises(ConfigError, match="teacher-weight must be in"):
        parse_config(["--out", "x", "--steps", "1", "--teacher", "t.pth", "--teacher-weight", "1.5"])
