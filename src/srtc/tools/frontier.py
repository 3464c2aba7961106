"""The speed-quality picture of a benchmark run: time per frame against Set5 and Set14 PSNR.

``python -m srtc.tools.frontier BENCH.json --out docs/frontier.png [--threads 2]``
(``BENCH.json``: the last line of ``python -m srtc.tools.bench --json``; ``srtc.tools.bench --plot PNG`` draws
the same picture at the end of a run.)

Why a picture: the question, per peer, is whether a project model is both faster and at least as good;
in a table of 30 rows that is a search, in a scatter it is "is there a blue point up and to the left
of each orange one". Bicubic, 3 dB below everything, is named in the legend, not plotted. Each panel
plots the full path's p50 (log scale, one thread count) against one benchmark's PSNR-Y; the line
joins each group's Pareto front (the rows nothing else in the group beats on both axes). Drawn with
Pillow (in the ``train`` and ``test`` extras), no plotting library.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SETS = ("Set5", "Set14")
COLOURS = {"project": (31, 119, 180), "peer": (230, 120, 20), "baseline": (44, 160, 44)}
DOT_RADIUS = {"project": 5, "peer": 4, "baseline": 4}  # px; project dots drawn larger, on top
PANEL_W, PANEL_H = 720, 560
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 70, 130, 46, 58


@dataclass(frozen=True)
class Point:
    """One row of the benchmark at the chosen thread count."""

    name: str
    kind: str  # project | peer | baseline
    ms: float
    psnr: float
    precision: str = "fp32"

    @property
    def label(self) -> str:
        """The name without the bench's conversion note ("ETDS-M5C16 (torch->ONNX, Y)" -> "ETDS-M5C16")."""
        name = self.name.split(" (")[0] if self.kind == "peer" else self.name
        return name if self.precision == "fp32" or name.endswith(self.precision) else f"{name} ({self.precision})"


def points(result: dict, threads: int, bench_set: str) -> list[Point]:
    """The rows at ``threads`` that have a PSNR on ``bench_set``."""
    out = []
    for r in result["rows"]:
        psnr = (r.get("psnr") or {}).get(bench_set)
        if r["threads"] == threads and psnr is not None:
            out.append(Point(r["name"], r["kind"], float(r["p50_ms"]), float(psnr), r.get("precision", "fp32")))
    return out


def pareto(group: list[Point]) -> list[Point]:
    """The points no other point of the group beats on both time (lower) and PSNR (higher), by time."""
    front, best = [], -math.inf
    for p in sorted(group, key=lambda p: (p.ms, -p.psnr)):
        if p.psnr > best:
            front.append(p)
            best = p.psnr
    return front


class _Axes:
    """Maps (ms, dB) to pixels inside one panel: log-scaled time on x, PSNR on y."""

    def __init__(self, left: int, pts: list[Point]) -> None:
        self.left = left
        lo, hi = min(p.ms for p in pts), max(p.ms for p in pts)
        self.x0, self.x1 = math.log10(lo / 1.25), math.log10(hi * 1.25)
        ylo, yhi = min(p.psnr for p in pts), max(p.psnr for p in pts)
        pad = max(0.05, (yhi - ylo) * 0.06)
        self.y0, self.y1 = ylo - pad, yhi + pad

    def xy(self, ms: float, db: float) -> tuple[float, float]:
        w, h = PANEL_W - MARGIN_L - MARGIN_R, PANEL_H - MARGIN_T - MARGIN_B
        x = self.left + MARGIN_L + (math.log10(ms) - self.x0) / (self.x1 - self.x0) * w
        y = MARGIN_T + (1 - (db - self.y0) / (self.y1 - self.y0)) * h
        return x, y

    def ticks_ms(self) -> list[float]:
        out = []
        for decade in range(math.floor(self.x0), math.ceil(self.x1) + 1):
            for m in (1, 2, 5):
                v = m * 10.0**decade
                if self.x0 <= math.log10(v) <= self.x1:
                    out.append(v)
        return out

    def ticks_db(self) -> list[float]:
        span = self.y1 - self.y0
        step = next(s for s in (0.1, 0.2, 0.5, 1.0, 2.0) if span / s <= 9)
        start = math.ceil(self.y0 / step) * step
        return [start + i * step for i in range(int((self.y1 - start) / step) + 1)]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _panel(draw, left: int, pts: list[Point], bench_set: str, threads: int) -> None:
    base = [p for p in pts if p.kind == "baseline"]
    pts = [p for p in pts if p.kind != "baseline"] or pts  # bicubic, 3 dB down, would flatten the rest
    ax = _Axes(left, pts)
    small, normal = _font(11), _font(14)
    x_a, y_a = left + MARGIN_L, MARGIN_T
    x_b, y_b = left + PANEL_W - MARGIN_R, PANEL_H - MARGIN_B
    draw.rectangle([x_a, y_a, x_b, y_b], outline=(0, 0, 0))
    for v in ax.ticks_ms():
        x, _ = ax.xy(v, ax.y0)
        draw.line([x, y_a, x, y_b], fill=(228, 228, 228))
        draw.text((x, y_b + 6), f"{v:g}", fill=(0, 0, 0), font=small, anchor="ma")
    for v in ax.ticks_db():
        _, y = ax.xy(10**ax.x0, v)
        draw.line([x_a, y, x_b, y], fill=(228, 228, 228))
        draw.text((x_a - 6, y), f"{v:.1f}", fill=(0, 0, 0), font=small, anchor="rm")
    draw.text(
        ((x_a + x_b) / 2, y_b + 26),
        f"full path p50, ms per 640x360 frame, {threads} thread(s), log scale",
        fill=(0, 0, 0),
        font=small,
        anchor="ma",
    )
    draw.text(((x_a + x_b) / 2, 14), f"{bench_set} PSNR-Y (dB) against time", fill=(0, 0, 0), font=normal, anchor="ma")
    for kind in ("peer", "project"):
        front = pareto([p for p in pts if p.kind == kind])
        if len(front) > 1:
            draw.line([ax.xy(p.ms, p.psnr) for p in front], fill=COLOURS[kind], width=2)
    for p in sorted(pts, key=lambda p: p.kind == "project"):  # project points drawn last, on top
        x, y = ax.xy(p.ms, p.psnr)
        r = DOT_RADIUS[p.kind]
        draw.ellipse([x - r, y - r, x + r, y + r], fill=COLOURS[p.kind], outline=(0, 0, 0))
    _labels(draw, ax, pts, small, (x_a, y_a, x_b + MARGIN_R, y_b))
    legend = "blue: this project   orange: published peers"
    legend += "".join(f"   ({p.name}: {p.psnr:.2f} dB, {p.ms:.1f} ms, off the plot)" for p in base if p not in pts)
    draw.text(((x_a + x_b) / 2, 32), legend, fill=(60, 60, 60), font=small, anchor="mm")


def _labels(draw, ax: _Axes, pts: list[Point], font, box: tuple[float, float, float, float]) -> None:
    """Name the points without overlapping text: project points first, then each group's front, then
    the rest; a label goes right of its point, else left, else above or below it on the right, then on the
    left, then centred, else is left out (the JSON has every row). Points are obstacles too: a name written
    across another point's dot reads as that point's."""
    fronts = {id(p) for kind in ("peer", "project") for p in pareto([q for q in pts if q.kind == kind])}
    order = sorted(pts, key=lambda p: (p.kind != "project", id(p) not in fronts, p.ms))
    r = max(DOT_RADIUS.values())
    taken: list[tuple[float, float, float, float]] = [
        (x - r, y - r, x + r, y + r) for x, y in (ax.xy(p.ms, p.psnr) for p in pts)
    ]
    for p in order:
        x, y = ax.xy(p.ms, p.psnr)
        for anchor, dx, dy in (
            ("lm", 7, 0),
            ("rm", -7, 0),
            ("lb", 5, -5),
            ("lt", 5, 5),
            ("rb", -5, -5),
            ("rt", -5, 5),
            ("mb", 0, -7),
            ("mt", 0, 7),
        ):
            bb = draw.textbbox((x + dx, y + dy), p.label, font=font, anchor=anchor)
            inside = bb[0] >= box[0] and bb[2] <= box[2] and bb[1] >= box[1] and bb[3] <= box[3]
            if inside and not any(bb[0] < t[2] and t[0] < bb[2] and bb[1] < t[3] and t[1] < bb[3] for t in taken):
                draw.text((x + dx, y + dy), p.label, fill=COLOURS[p.kind], font=font, anchor=anchor)
                taken.append(bb)
                break


def plot(result: dict, out: Path, threads: int = 2) -> Path:
    """Write the two-panel PNG (Set5, Set14) for one thread count; returns ``out``."""
    from PIL import Image, ImageDraw

    panels = [(s, points(result, threads, s)) for s in SETS]
    panels = [(s, pts) for s, pts in panels if pts]
    if not panels:
        raise ValueError(f"no rows at {threads} thread(s) with a Set5 or Set14 PSNR (was ../shared present?)")
    img = Image.new("RGB", (PANEL_W * len(panels), PANEL_H), "white")
    draw = ImageDraw.Draw(img)
    for i, (bench_set, pts) in enumerate(panels):
        _panel(draw, i * PANEL_W, pts, bench_set, threads)
    foot = f"python -m srtc.tools.bench, {result.get('date', '')}, {result.get('machine', {}).get('cpu', '')}"
    draw.text((8, PANEL_H - 14), foot, fill=(90, 90, 90), font=_font(11))
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    log.info("wrote %s (%d panels, %d thread(s))", out, len(panels), threads)
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_json", help="output of python -m srtc.tools.bench --json (the JSON line is found in it)")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--threads", type=int, default=2, help="which thread count's rows (default %(default)s)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return plot(load_result(Path(args.bench_json)), Path(args.out), args.threads)


def load_result(path: Path) -> dict:
    """The benchmark's JSON object from a file holding it alone or as the last JSON line of its output."""
    text = path.read_text()
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"{path}: no JSON object line (run python -m srtc.tools.bench --json)")


if __name__ == "__main__":
    main()
