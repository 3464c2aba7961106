"""Each model's gain over bicubic against bitrate, one panel per codec: where a model's margin holds.

``python -m srtc.training.gain_plot --out docs/gain_vs_bitrate.png [--metric vmaf_neg|psnr|tpsnr]
[--from GRID.json | EVALUATE OPTIONS...]``

The figures are those of ``srtc.training.evaluate``'s coded grid (``--codec ... --kbps ...``): with
``--from``, its JSON (``--json-out`` or the last JSON line of ``--json``); otherwise every other option is
passed to ``srtc.training.evaluate`` (``--vmaf`` added for a VMAF metric), which runs the grid here, e.g.
``--video ../shared/data/video/bbb_bunny_720p25_5s.mp4 --frames 120 --compare fidelity_x2 --codec vp8 h264
--kbps 300 400 600 1000``. Each line is a model, each dot a bitrate: the model's metric minus bicubic's on the
same decoded frames. The dashed line is the metric's target over bicubic in ``evaluate.TARGETS``, if any.
Drawn with Pillow, no plotting library.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

log = logging.getLogger(__name__)

METRIC_LABELS = {"vmaf_neg": "VMAF-NEG", "vmaf": "VMAF", "psnr": "PSNR-Y (dB)", "tpsnr": "temporal PSNR (dB)"}
CODEC_LABELS = {"vp8": "VP8", "h264": "H.264"}
COLOURS = [(31, 119, 180), (230, 120, 20), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
PANEL_W, PANEL_H = 620, 470
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 24, 44, 56
LEGEND_H = 28

Series = dict[str, dict[str, list[tuple[float, float]]]]
"""codec -> model -> [(kbps, gain over bicubic)], by kbps."""


def gains(result: dict, metric: str = "vmaf_neg") -> Series:
    """Each model's ``metric`` minus bicubic's at each point of ``result["video_grid"]``, by codec and model."""
    out: Series = {}
    for entry in result.get("video_grid") or []:
        res = entry["results"]
        base = res.get("bicubic", {}).get(metric)
        if base is None:
            continue
        for name, m in res.items():
            if name != "bicubic" and metric in m:
                out.setdefault(entry["codec"], {}).setdefault(name, []).append((float(entry["kbps"]), m[metric] - base))
    for models in out.values():
        for pts in models.values():
            pts.sort()
    if not out:
        raise ValueError(f"no coded points with {metric!r} for bicubic and a model (run evaluate with --video"
                         f"{' and --vmaf' if metric.startswith('vmaf') else ''})")  # fmt: skip
    return out


def target_line(metric: str) -> float | None:
    """The margin over bicubic that ``evaluate.TARGETS`` asks of ``metric``, if any."""
    from .evaluate import TARGETS

    return next((need for m, against, need in TARGETS if m == metric and against == "bicubic"), None)


def _ticks(lo: float, hi: float) -> list[float]:
    step = next(s for s in (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0) if (hi - lo) / s <= 8)
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 6) for i in range(int((hi - start) / step + 1e-9) + 1)]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def plot(result: dict, out: Path, metric: str = "vmaf_neg", note: str = "") -> Path:
    """Write the PNG: one panel per codec, gain over bicubic (y) against kbps (x), a line per model."""
    from PIL import Image, ImageDraw

    series = gains(result, metric)
    models = list(dict.fromkeys(name for codec in series.values() for name in codec))
    colour = {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(models)}
    target = target_line(metric)
    values = [g for codec in series.values() for pts in codec.values() for _, g in pts] + [0.0]
    values += [target] if target is not None else []
    pad = max(0.05, (max(values) - min(values)) * 0.08)
    y0, y1 = min(values) - pad, max(values) + pad
    kbps = sorted({k for codec in series.values() for pts in codec.values() for k, _ in pts})
    x0, x1 = math.log(kbps[0] / 1.15), math.log(kbps[-1] * 1.15)  # log bitrate: each doubling the same width

    img = Image.new("RGB", (PANEL_W * len(series), PANEL_H + LEGEND_H), "white")
    draw = ImageDraw.Draw(img)
    small, normal = _font(12), _font(15)
    label = METRIC_LABELS.get(metric, metric)
    ya, yb = MARGIN_T, PANEL_H - MARGIN_B
    for i, (codec, by_model) in enumerate(series.items()):
        left = i * PANEL_W
        xa, xb = left + MARGIN_L, left + PANEL_W - MARGIN_R

        def xy(k: float, g: float, xa: int = xa, xb: int = xb) -> tuple[float, float]:
            return xa + (math.log(k) - x0) / (x1 - x0) * (xb - xa), ya + (1 - (g - y0) / (y1 - y0)) * (yb - ya)

        draw.rectangle([xa, ya, xb, yb], outline=(0, 0, 0))
        for v in _ticks(y0, y1):
            y = xy(kbps[0], v)[1]
            draw.line([xa, y, xb, y], fill=(228, 228, 228))
            draw.text((xa - 6, y), f"{v:+g}", fill=(0, 0, 0), font=small, anchor="rm")
        for k in kbps:
            x = xy(k, y0)[0]
            draw.line([x, ya, x, yb], fill=(228, 228, 228))
            draw.text((x, yb + 6), f"{k:g}", fill=(0, 0, 0), font=small, anchor="ma")
        zero = xy(kbps[0], 0.0)[1]
        draw.line([xa, zero, xb, zero], fill=(60, 60, 60), width=2)
        draw.text((xb - 4, zero - 3), "bicubic", fill=(60, 60, 60), font=small, anchor="rb")
        if target is not None:
            y = xy(kbps[0], target)[1]
            for xs in range(xa, xb, 12):
                draw.line([xs, y, min(xs + 6, xb), y], fill=(200, 0, 0), width=1)
            draw.text((xa + 4, y - 3), f"target {target:+g}", fill=(200, 0, 0), font=small, anchor="lb")
        for name, pts in by_model.items():
            if len(pts) > 1:
                draw.line([xy(k, g) for k, g in pts], fill=colour[name], width=3 if name == models[0] else 2)
            for k, g in pts:
                x, y = xy(k, g)
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour[name], outline=(0, 0, 0))
        title = f"{CODEC_LABELS.get(codec, codec)}: {label} gain over bicubic"
        draw.text(((xa + xb) / 2, 14), title, fill=(0, 0, 0), font=normal, anchor="ma")
        draw.text(((xa + xb) / 2, yb + 26), "bitrate of the 640x360 stream, kbps (log scale)", fill=(0, 0, 0),
                  font=small, anchor="ma")  # fmt: skip
    x = 10
    for name in models:  # the legend, one row under the panels
        draw.rectangle([x, PANEL_H + 8, x + 22, PANEL_H + 12], fill=colour[name])
        draw.text((x + 28, PANEL_H + 10), name, fill=(0, 0, 0), font=small, anchor="lm")
        x += 40 + int(draw.textlength(name, font=small))
    if note:
        draw.text((img.width - 8, PANEL_H + 10), note, fill=(90, 90, 90), font=small, anchor="rm")
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    log.info("wrote %s (%s; %d codec(s), %d model(s))", out, metric, len(series), len(models))
    return out


def load_result(path: Path) -> dict:
    """evaluate's JSON object from a file holding it alone or as the last JSON line of its output."""
    for line in reversed(path.read_text(encoding="utf-8").strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"{path}: no JSON object line (python -m srtc.training.evaluate --json-out FILE)")


def describe(result: dict) -> str:
    """A footnote: the clip and the frames the figures come from."""
    grid = result.get("video_grid") or []
    if not grid:
        return ""
    return f"{grid[0].get('clip', '')}, {grid[0].get('frames', '?')} frames, model and bicubic on the same frames"


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--metric", default="vmaf_neg", choices=sorted(METRIC_LABELS), help="(default %(default)s)")
    ap.add_argument("--from", dest="source", default=None, help="evaluate's JSON instead of running the grid")
    args, rest = ap.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    if args.source:
        if rest:
            ap.error(f"--from reads a finished run; unexpected options: {' '.join(rest)}")
        result = load_result(Path(args.source))
    else:
        from . import evaluate

        if args.metric.startswith("vmaf") and "--vmaf" not in rest:
            rest.append("--vmaf")
        result = evaluate.main(rest)
    return plot(result, Path(args.out), args.metric, describe(result))


if __name__ == "__main__":
    main()
