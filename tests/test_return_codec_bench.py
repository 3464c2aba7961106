"""The return-codec bench: both codec paths decode real content, and a starved rate scores below a fair one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from srtc.tools import return_codec_bench as bench

from .conftest import shared_or_skip

STARVED, FAIR = 250, 3000  # kbps at 1280x720: the return encoder's floor, and a rate that carries the detail


@pytest.fixture(scope="module")
def result(default_model_path: Path) -> dict:
    clip = shared_or_skip("data", "video", "bbb_bunny_720p25_5s.mp4")
    choices = [bench.vp8_candidate(), bench.x264_candidate("ultrafast")]
    return bench.run(clip, 8, 600, [STARVED, FAIR], choices, model=str(default_model_path))


def test_every_figure_is_finite_and_both_codecs_decode_real_content(result: dict) -> None:
    assert result["scored_frames"] == 8 - bench.WARMUP
    assert result["sr_off"]["psnr_y"] > 30 and result["generator"]["psnr_y"] > 30
    rows = result["rows"]
    assert [(r["codec"], r["kbps"]) for r in rows] == [
        ("VP8", STARVED),
        ("H.264", STARVED),
        ("VP8", FAIR),
        ("H.264", FAIR),
    ]
    for row in rows:
        for key in ("encode_ms_p50", "cpu_ms_p50", "psnr_y", "psnr_y_margin"):
            assert math.isfinite(row[key]), (row, key)
        assert row["encode_ms_p50"] > 0 and row["sent_kbps"] > 0
    for row in rows[2:]:  # a broken decode (grey, shifted, wrong frame) is far below this
        assert row["psnr_y"] > 30, row


def test_a_starved_rate_scores_below_a_fair_one(result: dict) -> None:
    by = {(r["codec"], r["kbps"]): r for r in result["rows"]}
    for codec in ("VP8", "H.264"):
        assert by[codec, STARVED]["psnr_y"] < by[codec, FAIR]["psnr_y"] - 1.0
        assert by[codec, STARVED]["psnr_y_margin"] < by[codec, FAIR]["psnr_y_margin"]


def test_the_table_names_the_cpu_and_has_a_row_per_candidate_and_rate(result: dict) -> None:
    table = bench.markdown(result)
    assert table.startswith(f"CPU: {result['cpu']['model']}")
    assert sum(line.startswith(("| VP8 |", "| H.264 |")) for line in table.splitlines()) == 4
