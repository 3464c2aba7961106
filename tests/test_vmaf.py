"""VMAF and VMAF-NEG through libvmaf (the imageio-ffmpeg wheel's static ffmpeg, the ``vmaf`` extra), on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from srtc.training.vmaf import VmafPairs, VmafUnavailable, ffmpeg_with_libvmaf, vmaf

from .conftest import load_photo_rgb


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Eight 1280x720 luma frames of a real photograph, panned 6 px a frame (motion, as video has)."""
    try:
        ffmpeg_with_libvmaf()
    except VmafUnavailable as exc:
        pytest.skip(str(exc))
    y = cv2.cvtColor(load_photo_rgb(1400, 720, 1), cv2.COLOR_RGB2GRAY)
    return [np.ascontiguousarray(y[:, 6 * i : 6 * i + 1280]) for i in range(8)]


def test_identical_frames_score_near_100_and_a_blur_far_less(frames):
    same = vmaf(frames, frames)
    assert same["frames"] == 8 and same["vmaf"] > 97 and same["vmaf_neg"] > 97, same
    blurred = [
        cv2.resize(cv2.resize(f, (320, 180), interpolation=cv2.INTER_AREA), (1280, 720), interpolation=cv2.INTER_LINEAR)
        for f in frames
    ]
    soft = vmaf(frames, blurred)
    assert soft["vmaf"] < same["vmaf"] - 20, (soft, same)


def test_vmaf_neg_gives_no_credit_for_sharpening(frames):
    """The reason the project reports VMAF-NEG: unsharp masking lifts VMAF, not VMAF-NEG."""
    upscaled = [
        cv2.resize(cv2.resize(f, (640, 360), interpolation=cv2.INTER_AREA), (1280, 720), interpolation=cv2.INTER_CUBIC)
        for f in frames
    ]
    sharpened = [cv2.addWeighted(u, 2.0, cv2.GaussianBlur(u, (0, 0), 2.0), -1.0, 0) for u in upscaled]
    plain, sharp = vmaf(frames, upscaled), vmaf(frames, sharpened)
    assert sharp["vmaf"] > plain["vmaf"], (sharp, plain)
    assert sharp["vmaf"] - sharp["vmaf_neg"] > 2 * (plain["vmaf"] - plain["vmaf_neg"]), (sharp, plain)


def test_pairs_refuse_a_wrong_size_and_an_empty_run(frames):
    pairs = VmafPairs(1280, 720, limit=2)
    try:
        with pytest.raises(ValueError, match="1280"):
            pairs.add(frames[0][:, :640], frames[0][:, :640])
        assert pairs.add(frames[0], frames[1]) and pairs.add(frames[1], frames[2])
        assert not pairs.add(frames[2], frames[3])  # the limit
    finally:
        pairs.close()
    with pytest.raises(ValueError, match="no frames"):
        VmafPairs(1280, 720).score()
