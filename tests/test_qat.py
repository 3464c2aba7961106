"""Quantisation-aware fine-tuning: the torch simulation is what onnxruntime's int8 graph computes,
and fine-tuning through it recovers quality that plain post-training rounding loses.

Uses the committed stage-1 checkpoint of the default model and real images; the training test
skips with the reason when ../shared (or $SRTC_SHARED) is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import REPO, load_photo_rgb, shared_or_skip

torch = pytest.importorskip("torch", reason="torch not installed (pip install -e '.[train]')")
onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install -e '.[train]')")

from srtc.training import qat  # noqa: E402
from srtc.training.errors import ConfigError  # noqa: E402
from srtc.training.export import export_onnx, load_checkpoint_model  # noqa: E402
from srtc.training.imaging import psnr  # noqa: E402

CKPT = REPO / "checkpoints" / "fidelity_fast_x2.pt"
FRES_CKPT = REPO / "checkpoints" / "fidelity_x2.pt"  # the full-resolution generator


def photo_luma(width: int, height: int, index: int = 0) -> np.ndarray:
    """Y (BT.601 limited range, uint8) of a real photograph."""
    rgb = load_photo_rgb(width, height, index).astype(np.float64)
    y = 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def as_input(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(y.astype(np.float32) / 255)[None, None]


@pytest.fixture(scope="module", params=[CKPT, FRES_CKPT], ids=["quarter-res", "full-res"])
def qmodel(request) -> qat.QuantSR:
    net, _ = load_checkpoint_model(request.param)
    model = qat.QuantSR(net)
    crops = [photo_luma(128, 96, i) for i in range(3)]
    qat.start_ranges(model, [as_input(y) for y in crops])
    return model.eval()


def test_every_rounding_point_is_found_in_the_exported_graph(tmp_path, qmodel):
    path = tmp_path / "fp32.onnx"
    export_onnx(qmodel.net, path)
    points = qat.onnx_points(onnx.load(str(path)))
    assert set(points) == set(qmodel.points())
    ops = {o: n.op_type for n in onnx.load(str(path)).graph.node for o in n.output}
    assert ops[points["conv0"]] == "Conv" and ops[points["act0"]] == "LeakyRelu" and ops[points["output"]] == "Add"
    assert ops[points["shifted"]] == "Sub" and points["input"] == "lr"


def test_ranges_start_from_real_activations(qmodel):
    for name, fq in qmodel.points().items():
        scale, zero = fq.qparams()
        if name in ("input", "output"):
            assert (scale, zero) == (pytest.approx(1 / 255), 0)  # the 1/255 grid: free rounding
        else:
            assert 1e-4 < scale < 0.2 and 0 <= zero <= 255
    assert qmodel.q_conv[0].qparams()[1] > 0  # a conv output has negative values: zero point above 0


def test_int8_onnx_computes_what_the_simulation_computes(tmp_path, qmodel):
    """The exported QDQ graph uses the trained scales: output equals the torch simulation, and both
    differ from fp32 (so something really is rounded)."""
    from srtc.training.evaluate import onnx_upscaler, to_display
    from srtc.training.quantize import qdq_counts

    out = qat.export_int8(qmodel, tmp_path / "int8.onnx", [photo_luma(640, 360, 2)])
    assert qdq_counts(out)["QuantizeLinear"] > 5
    y = photo_luma(320, 180, 1)
    with torch.no_grad():
        sim = qmodel(as_input(y))[0, 0].numpy()
        qmodel.quantize = False
        fp32 = qmodel(as_input(y))[0, 0].numpy()
        qmodel.quantize = True
    real = onnx_upscaler(out, threads=1)(y)
    assert psnr(to_display(real), to_display(sim), 0) > 50
    assert psnr(to_display(real), to_display(fp32), 0) < psnr(to_display(real), to_display(sim), 0)
    assert not np.array_equal(to_display(real), to_display(fp32))
    # The residual (the LR pixels the last conv's output is added to) stays in float or on the input's grid.
    export_onnx(qmodel.net, tmp_path / "fp32.onnx")
    residual = qat.residual_tensor(onnx.load(str(tmp_path / "fp32.onnx")))
    graph = onnx.load(str(out)).graph
    values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for q in (n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == residual):
        assert values[q.input[1]] == pytest.approx(1 / 255) and values[q.input[2]] == 0


def test_weights_are_rounded_per_channel_to_seven_bit_levels():
    w = torch.randn(8, 4, 3, 3)
    q = qat.fake_quant_weight(w)
    step = w.abs().amax(dim=(1, 2, 3)) / 64  # 2 * 255 * 64 fits in int16: no VPMADDUBSW saturation
    levels = q / step[:, None, None, None]
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert torch.allclose(q.abs().amax(dim=(1, 2, 3)), w.abs().amax(dim=(1, 2, 3)))


def test_short_qat_run_recovers_simulated_quality(tmp_path):
    """A hundred-odd steps through the rounding bring the simulated int8 net closer to fp32 on real images."""
    args = qat.parse_config(
        [
            "--ckpt",
            str(CKPT),
            "--base",
            "fidelity_fast_x2",
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "150",
            "--data",
            str(shared_or_skip("data", "train")),
            "--val",
            str(shared_or_skip("data", "benchmarks", "Set5")),
            "--limit-images",
            "40",
            "--val-every",
            "150",
            "--batch",
            "16",
            "--lr",
            "3e-4",
            "--threads",
            "2",
        ]
    )
    result = qat.qat(args)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["step"] == 150
    assert result["best_psnr"] > result["start_psnr"] + 0.02
    resumed = qat.qat(qat.parse_config([*sys_args(args), "--steps", "160", "--resume"]))
    assert len(resumed["losses"]) == 10  # resumed at 150, not restarted


def sys_args(args: qat.QatConfig) -> list[str]:
    """The flags of ``args`` that a resumed run repeats."""
    return [
        "--ckpt",
        args.ckpt,
        "--base",
        args.base,
        "--out",
        str(args.schedule.out),
        "--data",
        args.data.data,
        "--val",
        args.val,
        "--limit-images",
        str(args.data.limit_images),
        "--batch",
        str(args.data.batch),
        "--threads",
        "2",
    ]


def test_relu_net_rounds_once_per_conv(tmp_path):
    """With ReLU (slope 0) onnxruntime folds the activation into the conv: the simulation follows."""
    from srtc.training.evaluate import onnx_upscaler, to_display

    net, _ = load_checkpoint_model(CKPT)
    net.slope = 0.0
    model = qat.QuantSR(net)
    qat.start_ranges(model, [as_input(photo_luma(128, 96, i)) for i in range(2)])
    assert not any(name.startswith("act") for name in model.points())
    assert all(model.q_conv[i].qparams()[1] == 0 for i in range(len(model.q_conv) - 1))  # ReLU output: from 0
    out = qat.export_int8(model.eval(), tmp_path / "relu_int8.onnx", [photo_luma(640, 360, 2)])
    assert "Relu" not in {n.op_type for n in onnx.load(str(out)).graph.node}
    y = photo_luma(320, 180, 1)
    with torch.no_grad():
        sim = model(as_input(y))[0, 0].numpy()
    assert psnr(to_display(onnx_upscaler(out, threads=1)(y)), to_display(sim), 0) > 50


def clip_pairs(folder, count: int = 3):
    """A pair cache of real photographs as two-frame clips: the previous frame is the scene 2 LR px to the left."""
    from srtc.training import degrade

    for i in range(count):
        y = photo_luma(100, 60, i)
        lr, prev = y[:, 4:68], y[:, 2:66]
        degrade.write_pair(
            degrade.pair_path(folder, i),
            degrade.Pair(
                lr,
                np.kron(lr, np.ones((2, 2), np.uint8)),
                {"mode": "clip"},
                lr_prev=prev,
                hr_prev=np.kron(prev, np.ones((2, 2), np.uint8)),
            ),
        )
    return degrade.CodecPatchPairs(folder, patch=64)


def test_change_loss_is_zero_for_the_fp32_net_against_itself_and_counts_int8_flicker(tmp_path):
    """``--temporal``: the int8 net's frame-to-frame change against the fp32 net's, on consecutive frames."""
    import copy

    data = clip_pairs(tmp_path)
    net, _ = load_checkpoint_model(CKPT)
    teacher = copy.deepcopy(net).eval()
    model = qat.QuantSR(net)
    qat.start_ranges(model, [as_input(photo_luma(128, 96, i)) for i in range(3)])

    def score(target) -> float:
        with torch.no_grad():
            return float(
                qat.change_loss(model, target, data, 8, np.random.default_rng(0), torch.nn.functional.mse_loss)
            )

    model.quantize = False
    same = score(teacher)
    assert same < 1e-8  # float32 noise only
    model.quantize = True
    rounded = score(teacher)
    assert rounded > 20 * same  # the rounding does not move with the scene as the fp32 output does
    assert score(None) > rounded  # the nearest-neighbour HR's change is further from any SR's than fp32's is


def test_temporal_qat_needs_clip_pairs(tmp_path):
    with pytest.raises(ConfigError, match="--pairs"):
        qat.parse_config(
            [
                "--ckpt",
                str(CKPT),
                "--base",
                "fidelity_fast_x2",
                "--out",
                str(tmp_path / "r"),
                "--steps",
                "1",
                "--temporal",
                "1",
            ]
        )
