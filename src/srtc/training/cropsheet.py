"""A crop sheet: the same HR crops as the original, bicubic and each model, side by side, for the eye.

``python -m srtc.training.cropsheet --models NAME [NAME...] --images FILE [FILE...] --out docs/crops/crops.png
[--crop 96] [--zoom 3] [--box X,Y ... | --pick detail|grain]``

PSNR tables hide what an upscaler does to edges and texture; a grid of enlarged crops shows it.
Each row is one image: HR crop | bicubic | each model, enlarged ``--zoom`` times with nearest
neighbour (so the pixels themselves are seen), labelled with the crop's PSNR-Y against HR.
LR is made as in ``srtc.training.evaluate`` (even-size HR, PIL antialiased bicubic x2). Models are Y-only:
their colour tiles take the model's Y and the bicubic upscale's chroma (as the server does), made by
adding (Y_model - Y_bicubic) * 255/219 to each RGB channel, which leaves BT.601 Cb/Cr unchanged.
With ``--video``, rows of luma frames of a 720p clip sent the way ``srtc.training.evaluate``'s codec path sends
it (downscaled to 360p, encoded at ``--kbps``, decoded): what the demo upscales.
The crop is ``--box`` (HR top-left) or picked: ``detail`` (the default) is the window where bicubic
loses most (largest squared Y error), i.e. where an upscaler has the most to show; ``grain`` is the
window where the *last* model invents the most texture where the HR is smooth (``srtc.training.quality``'s
flat-area high-pass error), i.e. its worst artefacts, which detail crops never show.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from srtc.zoo import resolve

from . import imaging, quality
from .evaluate import (
    SCALE,
    VIDEO_CODECS,
    Upscaler,
    load_clip,
    onnx_upscaler,
    to_display,
)

log = logging.getLogger(__name__)

LABEL_H = 20
PAD = 4
BG = (255, 255, 255)
FG = (0, 0, 0)


def hardest_box(err: np.ndarray, crop: int, margin: int = 4) -> tuple[int, int]:
    """Top-left (x, y) of the ``crop`` window with the largest summed error, ``margin`` px from the border."""
    h, w = err.shape
    if h < crop + 2 * margin or w < crop + 2 * margin:
        raise ValueError(f"image {w}x{h} is too small for a {crop} px crop")
    sums = cv2.boxFilter(
        err.astype(np.float64), -1, (crop, crop), normalize=False, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT
    )
    valid = sums[margin : h - crop - margin + 1, margin : w - crop - margin + 1]
    y, x = np.unravel_index(int(np.argmax(valid)), valid.shape)
    return int(x) + margin, int(y) + margin


def with_luma(base: Image.Image, y: np.ndarray) -> Image.Image:
    """``base`` (bicubic RGB, or L) with its luma replaced by ``y`` (0..255 levels), chroma kept."""
    if base.mode == "L":
        return Image.fromarray(np.clip(np.rint(y), 0, 255).astype(np.uint8))
    rgb = np.asarray(base, np.float64)
    delta = (y - imaging.luma(base)) * (255.0 / 219.0)
    return Image.fromarray(np.clip(np.rint(rgb + delta[..., None]), 0, 255).astype(np.uint8))


def font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's bundled font (no system fonts needed), scaled where this Pillow can."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def tile(img: Image.Image, label: str, zoom: int, fnt: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> Image.Image:
    """One enlarged crop with its label above."""
    big = img.convert("RGB").resize((img.width * zoom, img.height * zoom), Image.Resampling.NEAREST)
    out = Image.new("RGB", (big.width, big.height + LABEL_H), BG)
    ImageDraw.Draw(out).text((2, 2), label, fill=FG, font=fnt)
    out.paste(big, (0, LABEL_H))
    return out


PICKS = ("detail", "grain")


def sheet_row(
    path: Path,
    models: dict[str, Upscaler],
    crop: int,
    zoom: int,
    box: tuple[int, int] | None,
    fnt: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    pick: str = "detail",
) -> tuple[list[Image.Image], dict]:
    """The tiles of one image (LR made as ``srtc.training.evaluate`` makes it) and their crop PSNRs."""
    hr = imaging.crop_to_multiple(imaging.load_image(path), SCALE)
    return compare_row(hr, imaging.downscale(hr, SCALE), path.stem, models, crop, zoom, box, fnt, pick)


def compare_row(
    hr: Image.Image,
    lr: Image.Image,
    label: str,
    models: dict[str, Upscaler],
    crop: int,
    zoom: int,
    box: tuple[int, int] | None,
    fnt: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    pick: str = "detail",
) -> tuple[list[Image.Image], dict]:
    """The tiles of one HR / LR pair (RGB, or L for luma-only video frames) and their crop PSNRs."""
    bic = imaging.upscale(lr, SCALE)
    hr_y, bic_y = imaging.luma(hr), imaging.luma(bic)
    lr_y = imaging.luma_u8(lr)
    outputs = {name: to_display(up(lr_y)) for name, up in models.items()}
    if box is None:
        if pick == "grain":
            err = np.nan_to_num(quality.flat_grain_map(list(outputs.values())[-1], hr_y))
        else:
            err = (bic_y - hr_y) ** 2
        box = hardest_box(err, crop)
    x, y = box
    win = (x, y, x + crop, y + crop)
    sl = np.s_[y : y + crop, x : x + crop]
    scores = {"bicubic": imaging.psnr(bic_y[sl], hr_y[sl], 0)}
    tiles = [
        tile(hr.crop(win), f"HR {label} ({x},{y})", zoom, fnt),
        tile(bic.crop(win), f"bicubic {scores['bicubic']:.2f} dB", zoom, fnt),
    ]
    for name, sr_y in outputs.items():
        scores[name] = imaging.psnr(sr_y[sl], hr_y[sl], 0)
        tiles.append(tile(with_luma(bic, sr_y).crop(win), f"{name} {scores[name]:.2f} dB", zoom, fnt))
    return tiles, {"image": label, "box": list(win), **{k: round(v, 2) for k, v in scores.items()}}


def video_frames(path: Path, indices: list[int], codec: str = "vp8", kbps: float = 400.0) -> list[tuple]:
    """(HR, decoded LR, label) of frames ``indices`` (counted from the first content frame) of a 720p clip
    sent as ``srtc.training.evaluate``'s codec path sends it: area-downscaled, encoded, decoded. Luma only."""
    clip = load_clip(path, max(indices) + 1, codec, kbps)
    return [
        (Image.fromarray(clip.hr_y[i]), Image.fromarray(clip.decoded_y[i]), f"#{clip.start + i} {codec} {kbps:g}k")
        for i in indices
    ]


def make_sheet(
    images: list[Path],
    models: dict[str, Upscaler],
    crop: int = 96,
    zoom: int = 3,
    boxes: list[tuple[int, int]] | None = None,
    pick: str = "detail",
    frames: Sequence[tuple] = (),
) -> tuple[Image.Image, list[dict]]:
    """The grid (rows: images, then video ``frames``; columns: HR, bicubic, models) and the per-crop PSNRs."""
    fnt = font()
    rows, scores = [], []
    for i, path in enumerate(images):
        tiles, s = sheet_row(Path(path), models, crop, zoom, boxes[i] if boxes else None, fnt, pick)
        rows.append(tiles)
        scores.append(s)
        log.info("%s: %s", path, s)
    for j, (hr, lr, label) in enumerate(frames):
        box = boxes[len(images) + j] if boxes else None
        tiles, s = compare_row(hr, lr, label, models, crop, zoom, box, fnt, pick)
        rows.append(tiles)
        scores.append(s)
        log.info("%s: %s", label, s)
    tw, th = rows[0][0].size
    cols = len(rows[0])
    sheet = Image.new("RGB", (cols * tw + (cols + 1) * PAD, len(rows) * th + (len(rows) + 1) * PAD), BG)
    for r, tiles in enumerate(rows):
        for c, t in enumerate(tiles):
            sheet.paste(t, (PAD + c * (tw + PAD), PAD + r * (th + PAD)))
    return sheet, scores


def parse_box(text: str) -> tuple[int, int]:
    """``"X,Y"`` -> (X, Y)."""
    try:
        x, y = (int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"box must be X,Y, got {text!r}") from exc
    return x, y


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", required=True, help="manifest names or .onnx paths")
    ap.add_argument("--images", nargs="*", default=[], help="HR image files, one row each")
    ap.add_argument("--video", default=None, help="a 720p clip: rows of its frames through the codec path")
    ap.add_argument(
        "--frames",
        type=int,
        nargs="*",
        default=[20],
        help="frame numbers of --video after its first content frame, one row each",
    )
    ap.add_argument("--codec", choices=sorted(VIDEO_CODECS), default="vp8")
    ap.add_argument("--kbps", type=float, default=400.0)
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--crop", type=int, default=96, help="HR crop side in px (default %(default)s)")
    ap.add_argument("--zoom", type=int, default=3, help="nearest-neighbour enlargement (default %(default)s)")
    ap.add_argument(
        "--box", type=parse_box, nargs="*", default=None, help="HR top-left X,Y per image (default: picked, see --pick)"
    )
    ap.add_argument(
        "--pick",
        choices=PICKS,
        default="detail",
        help="crop where bicubic errs most (detail) or where the last model adds most grain to smooth areas (grain)",
    )
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    rows = len(args.images) + (len(args.frames) if args.video else 0)
    if not rows:
        raise SystemExit("nothing to show: give --images and/or --video")
    if args.box and len(args.box) != rows:
        raise SystemExit(f"--box needs one X,Y per row ({rows}), got {len(args.box)}")
    models = {
        (Path(m).stem if m.endswith(".onnx") else m): onnx_upscaler(resolve(m), args.threads) for m in args.models
    }
    frames = video_frames(Path(args.video), args.frames, args.codec, args.kbps) if args.video else []
    sheet, scores = make_sheet(
        [Path(p) for p in args.images], models, args.crop, args.zoom, args.box, args.pick, frames
    )
    sheet.save(args.out, optimize=True)
    log.info("wrote %s (%dx%d, %d bytes)", args.out, sheet.width, sheet.height, Path(args.out).stat().st_size)
    return scores


if __name__ == "__main__":
    main()
