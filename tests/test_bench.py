"""srtc.tools.bench: real frames, the full path of each model, MAC counting, the JSON shape (never timings)."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from srtc.server.engine import plane_view
from srtc.zoo import load_manifest

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install -e '.[train]')")
from onnx import TensorProto, helper  # noqa: E402

from srtc.tools import bench  # noqa: E402

PEERS = bench.SHARED / "peers"


def test_frames_are_real_content_at_640x360_yuv420p():
    frames, source = bench.load_frames(3)
    assert len(frames) == 3 and source
    for frame in frames:
        assert (frame.width, frame.height, frame.format.name) == (640, 360, "yuv420p")
        assert plane_view(frame, 0).std() > 20  # real content, never zeros or a flat fill


def test_fallback_frames_from_the_page_samples_are_real_content(tmp_path):
    frames, source = bench.load_frames(2, video=tmp_path / "missing.webm")
    assert source.endswith("*.jpg")
    assert all(plane_view(f, 0).std() > 20 for f in frames)


def test_full_path_of_each_project_model_gives_1280x720_yuv420p():
    frames, _ = bench.load_frames(1)
    candidates = bench.project_candidates()
    assert {c.name for c in candidates} == set(load_manifest()["models"])
    for cand in candidates:
        out = cand.make(1).upscale(frames[0])
        assert (out.width, out.height, out.format.name) == (1280, 720, "yuv420p")
        assert plane_view(out, 0).std() > 20


def _conv(name: str, x: str, y: str, cout: int, cin: int, k: int, stride: int = 1) -> tuple:
    weight = helper.make_tensor(f"{name}_w", TensorProto.FLOAT, [cout, cin, k, k], np.zeros(cout * cin * k * k))
    bias = helper.make_tensor(f"{name}_b", TensorProto.FLOAT, [cout], np.zeros(cout))
    node = helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [y], pads=[k // 2] * 4, strides=[stride, stride])
    return node, [weight, bias]


def test_mac_and_parameter_counting_of_a_known_conv_stack():
    c1, i1 = _conv("c1", "lr", "h1", 8, 1, 3)
    relu = helper.make_node("Relu", ["h1"], ["h2"])
    c2, i2 = _conv("c2", "h2", "h3", 4, 8, 3)
    c3, i3 = _conv("c3", "h3", "sr", 2, 4, 1, stride=2)
    graph = helper.make_graph(
        [c1, relu, c2, c3],
        "stack",
        [helper.make_tensor_value_info("lr", TensorProto.FLOAT, [1, 1, "h", "w"])],
        [helper.make_tensor_value_info("sr", TensorProto.FLOAT, None)],
        i1 + i2 + i3,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # 10x12: 3x3 1->8 and 3x3 8->4 at full size, 1x1 4->2 stride 2 at 5x6
    assert bench.count_macs(model, 10, 12) == 120 * (8 * 9 * 1) + 120 * (4 * 9 * 8) + 30 * (2 * 4)
    assert bench.count_params(model) == (8 * 9 + 8) + (4 * 72 + 4) + (2 * 4 + 2)


def test_project_model_macs_scale_with_the_pixel_count():
    """Counted from the graph, so twice the side is four times the work (a small frame shows it as well)."""
    for cand in bench.project_candidates():
        graph = onnx.load(str(bench.resolve(cand.name)))
        assert cand.macs > 0
        assert bench.count_macs(graph, 72, 128) * 4 == bench.count_macs(graph, 144, 256) > 0


def test_json_of_a_tiny_run_has_the_documented_shape(capsys, tmp_path):
    plot = tmp_path / "frontier.png"
    with_sets = (bench.BENCHMARKS / "Set5").is_dir()
    bench.main(
        ["--json", "--frames", "3", "--runs", "1", "--threads", "1", "--default-only"]
        + (["--plot", str(plot)] if with_sets else [])
    )
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    md = bench.markdown(result).splitlines()  # the docs' table: the machine and its instruction sets first
    assert result["machine"]["cpu"] in md[0] and "onnxruntime" in md[0]
    assert any(line.startswith(f"| {load_manifest()['default']} |") for line in md)
    assert {
        "command",
        "date",
        "machine",
        "frames",
        "runs",
        "warmup",
        "threads",
        "ceiling",
        "psnr_protocol",
        "rows",
        "skipped",
        "comparison",
        "row_seconds",
        "min_frames",
    } <= set(result)
    assert result["comparison"] == []  # no peers asked for
    assert result["frames"]["count"] == 3 and result["frames"]["luma_std"] > 20
    assert result["ceiling"]["gflops"]["1"] > 0 and result["ceiling"]["gmacs"]["1"] > 0
    default = load_manifest()["default"]
    assert [r["name"] for r in result["rows"]] == ["bicubic (OpenCV)", default]
    for row in result["rows"]:
        assert {
            "name",
            "kind",
            "threads",
            "params",
            "macs",
            "p50_ms",
            "p95_ms",
            "fps",
            "gmac_per_s",
            "ceiling_pct",
            "psnr",
            "psnr_note",
            "note",
            "timed_frames",
        } <= set(row)
        assert row["threads"] == 1 and row["p95_ms"] >= row["p50_ms"] > 0
    model = result["rows"][1]
    assert model["macs"] > 0 and model["params"] > 0 and model["ceiling_pct"] > 0
    if (bench.BENCHMARKS / "Set5").is_dir():
        assert model["psnr"]["Set5"] > result["rows"][0]["psnr"]["Set5"]  # the model beats bicubic
        assert plot.stat().st_size > 0  # srtc.tools.frontier's own tests check what it draws
    assert any(line.startswith("bicubic (OpenCV)") for line in out)  # the readable table came first


@pytest.mark.skipif(not (PEERS / "ecbsr" / "ECBSR_M4C16_x2.pth").is_file(), reason="no ../shared/peers")
def test_a_torch_peer_export_matches_its_rgb_network_and_runs_the_full_path(tmp_path):
    pytest.importorskip("torch")
    found, skipped = bench.peer_candidates(PEERS, tmp_path, only=("ECBSR-M4C16",))
    assert not skipped and len(found) == 1
    peer = found[0]
    assert peer.psnr is not None, peer.psnr_note  # set only when ONNX matched the torch RGB network
    assert peer.params == 11548 and peer.macs > 0
    frames, _ = bench.load_frames(1)
    out = peer.make(1).upscale(frames[0])
    assert (out.width, out.height, out.format.name) == (1280, 720, "yuv420p")


@pytest.mark.skipif(not (PEERS / "opencv_fsrcnn" / "FSRCNN-small_x2.pb").is_file(), reason="no ../shared/peers")
def test_a_pb_peer_runs_the_full_path_under_our_contract(tmp_path):
    pytest.importorskip("torch")
    found, skipped = bench.peer_candidates(PEERS, tmp_path, only=("FSRCNN-small-pb",))
    assert not skipped and len(found) == 1
    peer = found[0]
    assert peer.psnr is not None, peer.psnr_note
    assert peer.params == 1622 and peer.macs > 0
    frames, _ = bench.load_frames(1)
    out = peer.make(1).upscale(frames[0])
    assert (out.width, out.height, out.format.name) == (1280, 720, "yuv420p")
    assert plane_view(out, 0).std() > 20


def _row(name: str, kind: str, p50: float, set5: float | None, set14: float | None, threads: int = 2) -> bench.Row:
    psnr = None if set5 is None else {"Set5": set5, "Set14": set14}
    return bench.Row(
        name,
        kind,
        threads,
        1000,
        10**9,
        p50,
        p50 * 1.1,
        1000 / p50,
        None,
        None,
        psnr,
        None if psnr else "not evaluated",
    )


def test_comparison_picks_the_fastest_project_model_at_equal_or_better_quality():
    rows = [
        _row("bicubic", "baseline", 1.0, 33.9, 30.4),  # never a candidate: not a project model
        _row("tiny", "project", 20.0, 35.0, 31.0),
        _row("mid", "project", 50.0, 36.5, 32.3),
        _row("big", "project", 90.0, 37.2, 32.9),
        _row("mid", "project", 80.0, 36.5, 32.3, threads=1),
        _row("pb-peer", "peer", 110.0, 34.5, 30.8),  # tiny beats it: the fastest of tiny/mid/big
        _row("pb-peer", "peer", 100.0, 34.5, 30.8, threads=1),  # only mid was timed at 1 thread
        _row("equal-peer", "peer", 60.0, 36.5, 32.3),  # equal on both sets counts; big is slower, mid wins
        _row("set14-peer", "peer", 200.0, 37.0, 33.0),  # big beats Set5 but not Set14: none
        _row("fast-peer", "peer", 40.0, 37.1, 32.8),  # big is as good but slower: none
        _row("unmeasured", "peer", 40.0, None, None),
    ]
    got = {(c["peer"], c["threads"]): c for c in bench.faster_equal_or_better(rows)}
    assert len(got) == 6
    assert got["pb-peer", 2]["model"] == "tiny" and got["pb-peer", 2]["speedup"] == 5.5
    assert got["pb-peer", 1]["model"] == "mid" and got["pb-peer", 1]["model_p50_ms"] == 80.0
    assert got["equal-peer", 2]["model"] == "mid"
    assert got["set14-peer", 2]["model"] is None and "reaches" in got["set14-peer", 2]["reason"]
    assert got["fast-peer", 2]["model"] is None and "slower" in got["fast-peer", 2]["reason"]
    assert got["unmeasured", 2]["model"] is None and "not measured" in got["unmeasured", 2]["reason"]
    text = bench.comparison_table(list(got.values()))
    assert "pb-peer" in text and "none: " in text and "2 of 5 peers beaten" in text


class _FakeUpscaler:
    """Returns a blank 1280x720 frame: only the loop's frame counting is under test."""

    def __init__(self) -> None:
        self.calls = 0

    def upscale(self, frame: av.VideoFrame) -> av.VideoFrame:
        self.calls += 1
        return av.VideoFrame(1280, 720, "yuv420p")


def test_row_time_cap_stops_after_min_frames():
    frames, _ = bench.load_frames(2)
    fake = _FakeUpscaler()
    times = bench.time_upscaler(fake, frames * 5, runs=3, warmup=5, row_seconds=0.0, min_frames=4)
    assert len(times) == 4 and fake.calls == 2 + 4  # warm-up cut to 2 frames, then exactly min_frames
    assert len(bench.time_upscaler(_FakeUpscaler(), frames, runs=3, warmup=1)) == 6  # no cap: every pass
