"""srtc.training.gain_plot and evaluate's --targets: margins over bicubic on a real coded grid, and the picture."""

from __future__ import annotations

import copy
import json

import pytest

from srtc.training import evaluate, gain_plot
from tests.conftest import shared_or_skip

CLIP = ("data", "video", "bbb_bunny_720p25_5s.mp4")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory) -> tuple[dict, object]:
    """A small real grid: the default and the same-size fidelity model, VP8 and H.264 at two bitrates."""
    from srtc.training.vmaf import VmafUnavailable, ffmpeg_with_libvmaf

    try:
        ffmpeg_with_libvmaf()
    except VmafUnavailable as exc:
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp("grid") / "grid.json"
    argv = ["--video", str(shared_or_skip(*CLIP)), "--frames", "4", "--compare", "fidelity_fast_x2"]
    argv += ["--codec", "vp8", "h264", "--kbps", "300", "1000", "--vmaf", "--targets", "--json-out", str(out)]
    return evaluate.main(argv), out


def test_gains_are_each_models_margin_over_bicubic_by_codec_and_bitrate(grid_run):
    result, _ = grid_run
    series = gain_plot.gains(result, "vmaf_neg")
    assert list(series) == ["vp8", "h264"]
    for codec, by_model in series.items():
        assert set(by_model) == {"default", "fidelity_fast_x2"}
        for name, pts in by_model.items():
            assert [k for k, _ in pts] == [300.0, 1000.0]
            for kbps, gain in pts:
                entry = next(e for e in result["video_grid"] if e["codec"] == codec and e["kbps"] == kbps)
                res = entry["results"]
                assert gain == pytest.approx(res[name]["vmaf_neg"] - res["bicubic"]["vmaf_neg"])
    # On real decoded frames both models beat bicubic in VMAF-NEG, and their PSNR gains stay small.
    assert all(g > 0 for pts in series["vp8"].values() for _, g in pts)
    assert all(abs(g) < 2.0 for by in gain_plot.gains(result, "psnr").values() for p in by.values() for _, g in p)
    with pytest.raises(ValueError, match="no coded points"):
        gain_plot.gains({"video_grid": []})


def test_targets_check_every_point_against_bicubic_and_the_fidelity_model(grid_run):
    result, _ = grid_run
    points = [(e["codec"], e["kbps"]) for e in result["video_grid"]]
    assert [(t["codec"], t["kbps"]) for t in result["targets"]] == points
    for t, entry in zip(result["targets"], result["video_grid"]):
        assert t["model"] == "default" and t["fidelity"] == "fidelity_fast_x2"
        assert [(c["metric"], c["against"]) for c in t["checks"]] == [
            ("vmaf_neg", "bicubic"),
            ("vmaf_neg", "fidelity_fast_x2"),
            ("psnr", "bicubic"),
            ("tpsnr", "bicubic"),
        ]
        res = entry["results"]
        for c in t["checks"]:
            assert c["margin"] == pytest.approx(res["default"][c["metric"]] - res[c["against"]][c["metric"]], abs=1e-3)
            assert c["meets"] == (c["margin"] >= c["need"])
        assert t["meets_all"] == all(c["meets"] for c in t["checks"])
    # A model that is bicubic itself: no worse in temporal PSNR (met, ordered), no gain anywhere else.
    entry = copy.deepcopy(result["video_grid"][0])
    entry["results"]["default"] = dict(entry["results"]["bicubic"])
    same = {c["metric"] + "/" + c["against"]: c for c in evaluate.target_checks(entry, "default", [])["checks"]}
    assert set(same) == {"vmaf_neg/bicubic", "psnr/bicubic", "tpsnr/bicubic"}  # no fidelity model compared
    assert same["tpsnr/bicubic"]["meets"] and same["tpsnr/bicubic"]["ordered"]
    assert not same["psnr/bicubic"]["meets"] and not same["psnr/bicubic"]["ordered"]
    assert not same["vmaf_neg/bicubic"]["meets"]
    assert evaluate.fidelity_models(["perceptual_video_x2", "fidelity_x2", "/tmp/x.onnx"]) == ["fidelity_x2"]


def test_the_plot_has_a_panel_per_codec_and_a_line_per_model(grid_run, tmp_path):
    result, path = grid_run
    assert json.loads(path.read_text())["video_grid"] == result["video_grid"]
    out = gain_plot.main(["--from", str(path), "--out", str(tmp_path / "g.png")])
    img = Image.open(out).convert("RGB")
    assert img.size == (2 * gain_plot.PANEL_W, gain_plot.PANEL_H + gain_plot.LEGEND_H)
    colours = {c for _, c in img.getcolors(maxcolors=1 << 20)}
    assert gain_plot.COLOURS[0] in colours and gain_plot.COLOURS[1] in colours  # both models drawn
    # Each panel has the default's colour in it (its line), the left one VP8, the right one H.264.
    for left in (0, gain_plot.PANEL_W):
        panel = img.crop((left, 0, left + gain_plot.PANEL_W, gain_plot.PANEL_H))
        assert gain_plot.COLOURS[0] in {c for _, c in panel.getcolors(maxcolors=1 << 20)}
    psnr = gain_plot.main(["--from", str(path), "--out", str(tmp_path / "p.png"), "--metric", "psnr"])
    assert Image.open(psnr).size == img.size
    with pytest.raises(SystemExit):
        gain_plot.main(["--from", str(path), "--out", str(tmp_path / "x.png"), "--frames", "3"])
