"""Image helpers shared by training and evaluation, so both measure the same thing.

Conventions (the usual SR-paper protocol, as MATLAB scripts compute it):
- Y is BT.601 limited-range luma, ``16 + (65.481 R + 128.553 G + 24.966 B) / 255`` on 0..255
  RGB. That is what a decoder returns as the Y plane of yuv420p video.
- A greyscale image's Y is its grey value itself (MATLAB scripts skip the colour conversion
  for single-channel images, e.g. Set14 ``bridge``); that reproduces the published bicubic figures.
- LR images are made by PIL bicubic downscaling of the RGB image (antialiased like MATLAB
  ``imresize``) and kept as uint8, as stored images are; the HR image is first cropped to a
  multiple of the scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder, sorted so runs are repeatable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images in {folder}")
    return files


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB, or as L when it is single-channel (see module docstring)."""
    img = Image.open(path)
    return img.convert("L") if img.mode in ("L", "I;16", "I") else img.convert("RGB")


def crop_to_multiple(img: Image.Image, scale: int) -> Image.Image:
    """Crop right/bottom so both sides divide by ``scale`` (MATLAB ``modcrop``)."""
    w, h = img.size
    return img.crop((0, 0, w - w % scale, h - h % scale))


def downscale(img: Image.Image, scale: int) -> Image.Image:
    """Bicubic, antialiased downscale by an integer factor; the result stays uint8."""
    w, h = img.size
    return img.resize((w // scale, h // scale), Image.Resampling.BICUBIC)


def upscale(img: Image.Image, scale: int) -> Image.Image:
    """PIL bicubic upscale: the bicubic baseline."""
    w, h = img.size
    return img.resize((w * scale, h * scale), Image.Resampling.BICUBIC)


def luma(img: Image.Image) -> np.ndarray:
    """Float64 Y on the 0..255 scale (limited-range BT.601 for RGB, grey value for L)."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 2:
        return a
    return 16.0 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255.0


def luma_u8(img: Image.Image) -> np.ndarray:
    """Y rounded to uint8, as a decoder hands it to the model."""
    return np.clip(np.rint(luma(img)), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray, shave: int) -> float:
    """PSNR on the 0..255 scale, ignoring ``shave`` pixels at each border."""
    if shave:
        a = a[shave:-shave, shave:-shave]
        b = b[shave:-shave, shave:-shave]
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))
