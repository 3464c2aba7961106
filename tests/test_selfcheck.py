"""The server checks every model it opens on this CPU, refuses one whose picture is wrong, says what it serves
instead, and ``/stats`` tells which models passed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from srtc.server.app import create_app
from srtc.server.config import ServerConfig
from srtc.server.engine import BicubicUpscaler, OnnxUpscaler
from srtc.server.registry import open_fast_model, open_model
from srtc.server.selfcheck import check, check_pairs, psnr_y
from srtc.zoo import MANIFEST_PATH, load_manifest

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install -e '.[train]')")
from onnx import numpy_helper  # noqa: E402

DEFAULT = load_manifest()["default"]


def broken_copy(src: Path, out: Path) -> Path:
    """``src`` with its last conv's weights negated: it still follows the contract, but its picture is wrong."""
    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    last = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    weight = inits[last.input[1]]
    weight.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weight), weight.name))
    onnx.save(model, str(out))
    return out


def manifest_with(tmp_path: Path, entries: dict) -> Path:
    """A manifest in ``tmp_path`` with the shipped default (by absolute path) and ``entries``."""
    shipped = load_manifest()["models"][DEFAULT]
    models = {DEFAULT: {**shipped, "file": str((MANIFEST_PATH.parent / shipped["file"]).resolve())}, **entries}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"default": DEFAULT, "models": models}), encoding="utf-8")
    return path


def test_check_photos_are_real_content():
    pairs = check_pairs()
    assert len(pairs) >= 3
    for lr, hr in pairs:
        assert lr.shape == (180, 320) and hr.shape == (360, 640) and lr.dtype == np.uint8
        assert hr.std() > 20  # photographs, not flat frames


def test_the_default_passes_on_this_cpu_and_a_blur_does_not():
    up, info = open_model(None, threads=1)
    assert info.name == DEFAULT and info.check is not None and info.check.passed, info.check
    assert info.check.psnr_db > info.check.bicubic_db + 0.3
    pairs = check_pairs()
    blur = check("blur", lambda lr: np.kron(lr, np.ones((2, 2), np.uint8)), pairs=pairs)  # nearest neighbour
    assert not blur.passed and "not above bicubic" in blur.reason
    assert psnr_y(up.upscale_luma, pairs) == pytest.approx(info.check.psnr_db)


def test_a_model_worse_than_bicubic_is_refused_and_bicubic_served(tmp_path, caplog):
    broken = broken_copy(MANIFEST_PATH.parent / load_manifest()["models"][DEFAULT]["file"], tmp_path / "broken.onnx")
    with caplog.at_level(logging.WARNING, logger="srtc.server.registry"):
        up, info = open_model(str(broken), threads=1)
    assert isinstance(up, BicubicUpscaler) and info.name == "bicubic"
    assert [r.model for r in info.refused] == ["broken"] and not info.refused[0].passed
    assert "refusing model broken on this CPU" in caplog.text and "serving bicubic instead" in caplog.text


def test_a_refused_build_is_replaced_by_its_fp32_reference(tmp_path):
    broken_copy(MANIFEST_PATH.parent / load_manifest()["models"][DEFAULT]["file"], tmp_path / "bad_int8.onnx")
    manifest = manifest_with(
        tmp_path,
        {"bad_int8": {"file": "bad_int8.onnx", "precision": "int8", "kind": "x", "params": 1, "reference": DEFAULT}},
    )
    up, info = open_model("bad_int8", threads=1, manifest_path=manifest)
    assert isinstance(up, OnnxUpscaler) and info.name == DEFAULT and info.check.passed
    assert [r.model for r in info.refused] == ["bad_int8"]
    assert info.refused[0].reference == DEFAULT and info.refused[0].reference_db == pytest.approx(info.check.psnr_db)


def test_the_governor_never_gets_a_fast_model_worse_than_bicubic(tmp_path):
    broken_copy(MANIFEST_PATH.parent / load_manifest()["models"][DEFAULT]["file"], tmp_path / "bad_int8.onnx")
    manifest = manifest_with(
        tmp_path,
        {"bad_int8": {"file": "bad_int8.onnx", "precision": "int8", "kind": "x", "params": 1, "reference": DEFAULT}},
    )
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["models"][DEFAULT]["fallback"] = "bad_int8"
    manifest.write_text(json.dumps(data), encoding="utf-8")
    _, info = open_model(None, threads=1, manifest_path=manifest)
    fast, fast_info = open_fast_model("auto", info, threads=1, manifest_path=manifest)
    assert fast is None and fast_info is not None and fast_info.check is not None and not fast_info.check.passed


async def test_stats_say_which_models_passed(tmp_path):
    up, info = open_model(None, threads=1)
    fast, fast_info = open_fast_model("auto", info, threads=1)
    app = create_app(ServerConfig(port=0), up, info, fast=fast, fast_info=fast_info)
    async with TestClient(TestServer(app)) as client:
        model = (await (await client.get("/stats")).json())["model"]
    assert model["name"] == DEFAULT and model["check"]["passed"] is True and model["refused"] == []
    assert model["check"]["psnr_db"] > model["check"]["bicubic_db"]
    if fast_info is not None:
        assert model["fast"]["check"]["passed"] is (fast is not None)
