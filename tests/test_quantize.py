"""int8 QDQ quantisation: really quantised, still close to fp32 on a real photo, and servable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from srtc.zoo import MANIFEST_PATH, load_manifest, resolve, sha256_of

from .conftest import photo_frame, shared_or_skip

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install -e '.[train]')")
from srtc.training import quantize as q  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two 0..255 arrays."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def calibration() -> list[np.ndarray]:
    """A small but real calibration set: decoded clip frames plus one training still."""
    return q.calibration_lumas(
        frames=4, images=1, video_dir=shared_or_skip("data", "video"), train_dir=shared_or_skip("data", "train")
    )


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory, calibration) -> Path:
    out = tmp_path_factory.mktemp("int8") / "model_int8.onnx"
    variant = q.Variant("test", per_channel=True, exclude=("residual",))
    return q.quantize(resolve(None), out, calibration, variant)


def test_calibration_is_real_decoded_content(calibration):
    assert len(calibration) == 5
    for y in calibration:
        assert y.shape == (q.HEIGHT, q.WIDTH) and y.dtype == np.uint8
        assert y.std() > 10  # real content, not a fade or a flat fill


def test_quantized_graph_is_qdq(int8_model):
    counts = q.qdq_counts(int8_model)
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > 0
    weights = [t for t in onnx.load(str(int8_model)).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights, "conv weights should be stored as int8"


def test_residual_tail_stays_float(int8_model):
    """The nearest-neighbour residual carries the LR input to the output; int8 would round it."""
    model = onnx.load(str(int8_model))
    producers = {o: n for n in model.graph.node for o in n.output}
    add = next(n for n in model.graph.node if n.op_type == "Add")
    assert "Gather" in {producers[i].op_type for i in add.input if i in producers}  # float, not a DequantizeLinear
    assert all(n.op_type != "QuantizeLinear" for n in model.graph.node if model.graph.input[0].name in n.input)


def test_int8_output_close_to_fp32_but_not_identical(int8_model):
    from srtc.server.engine import OnnxUpscaler, plane_view

    y = plane_view(photo_frame(320, 180, index=1), 0).copy()  # the luma the server gets
    assert y.std() > 20
    fp32 = OnnxUpscaler(resolve(None), threads=1).upscale_luma(y)
    int8 = OnnxUpscaler(int8_model, threads=1).upscale_luma(y)
    assert int8.shape == fp32.shape == (360, 640)
    assert not np.array_equal(int8, fp32), "int8 output equals fp32: nothing was quantised"
    assert psnr(int8, fp32) > 40


def test_excluded_nodes_found_from_the_graph():
    model = onnx.load(str(resolve(None)))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    names = q.excluded_nodes(model, ("first", "last", "residual"))
    assert convs[0] in names and convs[-1] in names
    assert not set(convs[1:-1]) & set(names)
    ops = {n.name: n.op_type for n in model.graph.node}
    assert {"Add", "DepthToSpace", "Gather"} <= {ops[n] for n in names}


def test_gate_needs_quality_and_speed():
    ref = q.Result("fp32", {"Set5": 36.5, "Set14": 32.3}, {1: 20.0, 2: 12.0})
    assert q.qualifies(q.Result("a", {"Set5": 36.45, "Set14": 32.25}, {1: 10.0, 2: 8.0}), ref)[0]
    assert not q.qualifies(q.Result("b", {"Set5": 36.35, "Set14": 32.3}, {1: 10.0, 2: 8.0}), ref)[0]
    assert not q.qualifies(q.Result("c", {"Set5": 36.5, "Set14": 32.3}, {1: 10.0, 2: 12.5}), ref)[0]


def registered_int8() -> list[str]:
    return [name for name, e in load_manifest()["models"].items() if e.get("precision") == "int8"]


@pytest.mark.parametrize(
    "name",
    registered_int8()
    or [
        pytest.param(
            None,
            marks=pytest.mark.skip(
                reason="no int8 model in srtc/zoo/manifest.json: no variant met the gate (see docs/MODELS.md)"
            ),
        )
    ],
)
def test_registered_int8_model_serves_a_real_frame(name):
    from srtc.server.engine import OnnxUpscaler

    entry = load_manifest()["models"][name]
    recipe = (MANIFEST_PATH.parent / entry["recipe"]).read_text(encoding="utf-8")
    assert entry["precision"] == "int8" and entry["scale"] == 2
    assert "python -m srtc.training.quantize" in recipe or "python -m srtc.training.qat" in recipe
    assert load_manifest()["default"] != name  # quantising never changes the default
    up = OnnxUpscaler(resolve(name), threads=2, name=name)
    frame = photo_frame(640, 360)
    out = up.upscale(frame)
    assert (out.width, out.height) == (1280, 720)
    # The picture, not just its size: the int8 build's luma follows its fp32 model's on a real photo.
    reference = OnnxUpscaler(resolve(entry["reference"]), threads=2).upscale(frame)
    y, y_ref = (f.to_ndarray(format="yuv420p")[:720] for f in (out, reference))
    assert psnr(y, y_ref) > 38.0, (name, psnr(y, y_ref))


def test_register_lists_int8_without_touching_the_default(tmp_path, int8_model):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(MANIFEST_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "m_int8.onnx"
    out.write_bytes(int8_model.read_bytes())
    default = load_manifest(manifest)["default"]
    q.register(
        f"{default}_int8",
        out,
        default,
        q.Variant("test", per_channel=True),
        "python -m srtc.training.quantize ...",
        manifest_path=manifest,
    )
    after = load_manifest(manifest)
    entry = after["models"][f"{default}_int8"]
    assert after["default"] == default and after["models"][default] == load_manifest()["models"][default]
    assert entry["precision"] == "int8" and entry["file"] == "m_int8.onnx" and entry["scale"] == 2
    assert entry["params"] == after["models"][default]["params"]
    assert entry["sha256"] == sha256_of(out) and "command" not in entry
    assert "python -m srtc.training.quantize ..." in (tmp_path / entry["recipe"]).read_text(encoding="utf-8")
    from srtc.server.engine import OnnxUpscaler

    assert OnnxUpscaler(resolve(f"{default}_int8", manifest), threads=1).upscale(photo_frame(320, 180)).width == 640
