"""The speed-quality picture (srtc.tools.frontier): which rows form each group's front, and what is drawn."""

import json

import numpy as np
import pytest

from srtc.tools.frontier import (
    COLOURS,
    PANEL_W,
    Point,
    load_result,
    pareto,
    plot,
    points,
)

PIL = pytest.importorskip("PIL.Image")


def _row(name, kind, ms, set5, set14, threads=2, precision="fp32"):
    return {
        "name": name,
        "kind": kind,
        "threads": threads,
        "p50_ms": ms,
        "precision": precision,
        "psnr": {"Set5": set5, "Set14": set14},
    }


# Figures of a real benchmark run (2 threads), so the picture is of a real table.
RESULT = {
    "date": "2026-11-29T13:46:00Z",
    "machine": {"cpu": "AMD EPYC"},
    "rows": [
        _row("bicubic (OpenCV)", "baseline", 0.8, 33.67, 30.23),
        _row("fidelity_fast_x2", "project", 11.9, 36.42, 32.23),
        _row("qres_x2_v3", "project", 13.9, 36.50, 32.27),
        _row("fidelity_fast_x2_int8", "project", 8.7, 36.19, 32.07, precision="int8"),
        _row("fidelity_fast_x2", "project", 19.2, 36.42, 32.23, threads=1),
        _row("ETDS-M5C16", "peer", 44.1, 37.14, 32.65),
        _row("ECBSR-M4C16", "peer", 57.3, 37.09, 32.59),
        _row("ESPCN-RGB", "peer", 63.2, 36.83, 32.49),
        _row("FSRCNN-pb", "peer", 63.0, 34.85, 31.11),
    ],
}


def test_the_front_keeps_only_rows_nothing_beats_on_both_time_and_psnr():
    pts = points(RESULT, 2, "Set5")
    assert len(pts) == 8  # the 1-thread row is not in the 2-thread picture
    peers = pareto([p for p in pts if p.kind == "peer"])
    assert [p.name for p in peers] == ["ETDS-M5C16"]  # faster and better than the other three
    ours = pareto([p for p in pts if p.kind == "project"])
    assert [p.name for p in ours] == ["fidelity_fast_x2_int8", "fidelity_fast_x2", "qres_x2_v3"]
    tie = pareto([Point("a", "peer", 10, 30.0), Point("b", "peer", 10, 31.0), Point("c", "peer", 20, 31.0)])
    assert [p.name for p in tie] == ["b"]  # same time: the better one; same PSNR later: dominated


def _count(img, colour, x0, x1):
    a = np.asarray(img)[:, x0:x1, :3].astype(int)
    return int((np.abs(a - np.array(colour)).sum(axis=2) == 0).sum())


def test_plot_draws_one_panel_per_set_with_both_groups(tmp_path):
    out = plot(RESULT, tmp_path / "f.png", threads=2)
    img = PIL.open(out)
    assert img.size == (2 * PANEL_W, img.size[1])
    for left in (0, PANEL_W):
        assert _count(img, COLOURS["project"], left, left + PANEL_W) > 100
        assert _count(img, COLOURS["peer"], left, left + PANEL_W) > 100
    assert _count(img, COLOURS["baseline"], 0, 2 * PANEL_W) == 0  # bicubic is named, not plotted


def test_plot_refuses_a_run_without_psnr_and_reads_bench_output(tmp_path):
    bare = {"rows": [dict(r, psnr=None) for r in RESULT["rows"]]}
    with pytest.raises(ValueError, match="no rows"):
        plot(bare, tmp_path / "f.png")
    out = tmp_path / "bench.out"
    out.write_text("model prec thr ...\nqres_x2_v2 fp32 2 ...\n" + json.dumps(RESULT) + "\n")
    assert load_result(out)["rows"][1]["name"] == "fidelity_fast_x2"
    out.write_text("no json here\n")
    with pytest.raises(ValueError, match="no JSON"):
        load_result(out)


class _Recorder:
    """A stand-in for ImageDraw that measures text as PIL does and records where each label went."""

    def __init__(self):
        from PIL import ImageDraw

        self.draw = ImageDraw.Draw(PIL.new("RGB", (PANEL_W, 600)))
        self.boxes = {}

    def textbbox(self, *args, **kwargs):
        return self.draw.textbbox(*args, **kwargs)

    def text(self, xy, text, **kwargs):
        self.boxes[text] = self.draw.textbbox(xy, text, font=kwargs["font"], anchor=kwargs["anchor"])


def test_labels_keep_off_other_points_and_crowded_project_points_are_still_named():
    from srtc.tools.frontier import DOT_RADIUS, _Axes, _font, _labels

    # A crowded corner like the plot's top right: our models in a row, peers close beside them.
    pts = [Point(f"fres_x2_m{i}c32_mix16", "project", 80.0 * 1.25**i, 37.20 + 0.06 * i) for i in range(4)]
    pts += [Point(f"PEER-{i}", "peer", 95.0 * 1.25**i, 37.20 + 0.06 * i) for i in range(4)]  # just right of ours
    ax, rec = _Axes(0, pts), _Recorder()
    _labels(rec, ax, pts, _font(11), (60, 40, PANEL_W, 500))
    assert {p.label for p in pts if p.kind == "project"} <= set(rec.boxes)  # every one of ours is named
    r = max(DOT_RADIUS.values())
    for p in pts:
        x, y = ax.xy(p.ms, p.psnr)
        for label, (x0, y0, x1, y1) in rec.boxes.items():
            if label != p.label:  # a label may touch its own dot's side, never another point's dot
                assert not (x0 < x + r and x - r < x1 and y0 < y + r and y - r < y1), (label, p.label)
