"""The engine on real content: sizes and planes, timing kept, quality above bicubic, clear model errors."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from srtc.server.engine import (
    BicubicUpscaler,
    ModelError,
    OnnxUpscaler,
    bicubic,
    plane_view,
)
from srtc.server.registry import open_model

from .conftest import load_photo_rgb, photo_frame


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    if mse == 0:
        return float("inf")
    return float(10 * np.log10(255.0**2 / mse))


def test_output_is_twice_the_size_with_three_planes_and_timing_kept(upscaler):
    frame = photo_frame(640, 360, pts=123456)
    assert plane_view(frame, 0).std() > 20  # real content, not a flat frame
    out = upscaler.upscale(frame)
    assert (out.width, out.height, out.format.name) == (1280, 720, "yuv420p")
    assert [(p.width, p.height) for p in out.planes] == [(1280, 720), (640, 360), (640, 360)]
    assert out.pts == 123456 and out.time_base == frame.time_base


def test_chroma_is_bicubic_and_luma_follows_the_input(upscaler):
    frame = photo_frame(320, 180, index=1)
    out = upscaler.upscale(frame)
    for index in (1, 2):
        np.testing.assert_array_equal(plane_view(out, index), bicubic(plane_view(frame, index)))
    y_in, y_out = plane_view(frame, 0), plane_view(out, 0)
    # The network adds detail, it does not invent a different picture: downscaled back, it matches the input.
    back = cv2.resize(y_out, (y_in.shape[1], y_in.shape[0]), interpolation=cv2.INTER_AREA)
    assert psnr(back, y_in) > 30


@pytest.mark.parametrize("size", [(642, 362), (100, 64)])
def test_any_even_size(upscaler, size):
    out = upscaler.upscale(photo_frame(*size, index=2))
    assert (out.width, out.height) == (size[0] * 2, size[1] * 2)


def test_yuvj420p_and_rgb_frames_are_converted():
    frame = av.VideoFrame.from_ndarray(load_photo_rgb(160, 90), format="rgb24")
    out = BicubicUpscaler().upscale(frame)
    assert (out.width, out.height, out.format.name) == (320, 180, "yuv420p")


def test_the_model_beats_bicubic_on_a_real_photograph(upscaler):
    """A 720p crop of a real photo, downscaled x2 with area averaging: SR must be closer to it than bicubic."""
    hr = cv2.cvtColor(load_photo_rgb(512, 288, index=3), cv2.COLOR_RGB2YUV)[:, :, 0]
    lr = cv2.resize(hr, (256, 144), interpolation=cv2.INTER_AREA)
    sr = upscaler.upscale_luma(lr)
    assert sr.shape == hr.shape and sr.dtype == np.uint8
    assert psnr(sr[4:-4, 4:-4], hr[4:-4, 4:-4]) > psnr(bicubic(lr)[4:-4, 4:-4], hr[4:-4, 4:-4]) + 0.2


def test_a_missing_model_names_the_path(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelError, match="nope.onnx"):
        open_model(str(missing), threads=1)


def test_a_corrupt_model_names_the_path(tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    with pytest.raises(ModelError, match="corrupt.onnx"):
        OnnxUpscaler(corrupt, threads=1)


def test_an_unknown_model_name_is_refused_with_the_names_there_are():
    from srtc.zoo import load_manifest

    with pytest.raises(ModelError, match="no-such-model") as info:
        open_model("no-such-model", threads=1)
    assert load_manifest()["default"] in str(info.value)  # a misspelt name shows what to pick from


def test_a_port_in_use_is_a_clear_error_not_a_traceback(caplog):
    """``python -m server`` on a taken port: one log line naming the address, exit status 2."""
    import socket

    from srtc.server.__main__ import main

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["--port", str(port), "--fast-model", "none"]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text


def test_the_fast_model_is_the_manifests_fallback_and_can_be_turned_off(tmp_path):
    """auto: the default's int8 fallback, loaded; none: no step; a named one that is missing: a clear error;
    an auto fallback whose file is gone: serve without the step (logged), never refuse to start."""
    import json

    from srtc.server.registry import describe, open_fast_model
    from srtc.zoo import MANIFEST_PATH, load_manifest

    manifest = load_manifest()
    info = describe(None)
    name = manifest["models"][manifest["default"]].get("fallback")
    fast, fast_info = open_fast_model("auto", info, threads=1)
    if name is None:
        assert fast is None and fast_info is None
    else:
        assert fast_info.name == name and fast_info.precision == "int8"
        y = cv2.cvtColor(load_photo_rgb(320, 180, index=1), cv2.COLOR_RGB2YUV)[:, :, 0]
        assert fast.upscale_luma(y).shape == (360, 640)
    assert open_fast_model("none", info, threads=1) == (None, None)
    with pytest.raises(ModelError, match="no-such-fast-model"):
        open_fast_model("no-such-fast-model", info, threads=1)
    broken = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
    entry = broken["models"][broken["default"]]
    entry["file"] = str((MANIFEST_PATH.parent / entry["file"]).resolve())
    entry["fallback"] = "gone_int8"
    broken["models"]["gone_int8"] = {**entry, "file": str(tmp_path / "gone.onnx"), "precision": "int8"}
    (tmp_path / "manifest.json").write_text(json.dumps(broken), encoding="utf-8")
    info = describe(None, tmp_path / "manifest.json")
    assert open_fast_model("auto", info, threads=1, manifest_path=tmp_path / "manifest.json") == (None, None)
