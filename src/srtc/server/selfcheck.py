"""Load-time check that a model computes the right picture on this CPU, before any viewer sees it.

An ONNX file that is right on one CPU can be wrong on another: onnxruntime picks its int8 kernels by
instruction set, and an int8 build whose weights use the full 8-bit range overflows the int16 sums of
the kernels used on x86 CPUs without VNNI (its output carries a cross-hatch grid, 2-3 dB below bicubic).
So every model the server opens is run on real photographs (the page's samples, 2x2 area-downscaled as
a sender's scaler does) and scored in PSNR-Y against the photographs themselves:

- it must beat bicubic on the same input (a model that does not is worse than no model);
- with a float reference (the fp32 model an int8 build was made from), it must stay within
  ``MAX_LOSS_DB`` of that reference's score here.

A model that fails is refused; the caller says what it uses instead.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from .config import CLIENT_DIR
from .engine import bicubic

log = logging.getLogger(__name__)

PHOTOS = CLIENT_DIR / "samples"
HR_SIZE = (640, 360)  # width, height of each photograph's centre crop: the x2 output of a 320x180 input
MAX_LOSS_DB = 0.5  # an int8 build stands in for its fp32 model under load; it may lose a little, not more
SHAVE = 4  # border pixels left out of the score (padding differs between models, not what is checked)

LumaUpscale = Callable[[np.ndarray], np.ndarray]


class CheckImagesMissing(RuntimeError):
    """The photographs the check runs on are not where the page serves them from."""


@dataclass(frozen=True)
class CheckResult:
    """One model's scores on this CPU and the verdict; ``/stats`` lists these."""

    model: str
    psnr_db: float
    bicubic_db: float
    reference: str | None
    reference_db: float | None
    passed: bool
    reason: str

    def to_json(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@functools.cache
def check_pairs(folder: Path = PHOTOS) -> list[tuple[np.ndarray, np.ndarray]]:
    """(LR luma, HR luma) of every photograph: HR a 640x360 centre crop, LR its 2x2 area average.

    Read once per process: start-up checks several models on the same photographs."""
    paths = sorted(folder.glob("*.jpg"))
    if not paths:
        raise CheckImagesMissing(f"no photographs in {folder}: cannot check models on this CPU")
    pairs = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise CheckImagesMissing(f"cannot read {path}")
        hr = _centre_crop(_luma(bgr), HR_SIZE)
        lr = cv2.resize(hr, (HR_SIZE[0] // 2, HR_SIZE[1] // 2), interpolation=cv2.INTER_AREA)
        pairs.append((lr, hr))
    return pairs


def _luma(bgr: np.ndarray) -> np.ndarray:
    """BT.601 limited-range Y, rounded: what a decoder hands the generator."""
    b, g, r = (bgr[..., i].astype(np.float32) for i in range(3))
    return np.clip(np.rint(16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255), 0, 255).astype(np.uint8)


def _centre_crop(y: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centre ``size`` (width, height) of ``y``, enlarged first (area) if the photograph is smaller."""
    width, height = size
    scale = max(width / y.shape[1], height / y.shape[0], 1.0)
    if scale > 1.0:
        y = cv2.resize(y, (round(y.shape[1] * scale), round(y.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    y0, x0 = (y.shape[0] - height) // 2, (y.shape[1] - width) // 2
    return np.ascontiguousarray(y[y0 : y0 + height, x0 : x0 + width])


def psnr_y(upscale: LumaUpscale, pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """PSNR-Y (dB) of ``upscale``'s outputs against the HR crops, pooled over all photographs."""
    errors = []
    for lr, hr in pairs:
        sr = upscale(lr).astype(np.float64)[SHAVE:-SHAVE, SHAVE:-SHAVE]
        errors.append(np.mean((sr - hr[SHAVE:-SHAVE, SHAVE:-SHAVE]) ** 2))
    return float(10 * np.log10(255.0**2 / max(float(np.mean(errors)), 1e-10)))


def check(
    name: str,
    upscale: LumaUpscale,
    reference: tuple[str, LumaUpscale] | None = None,
    pairs: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> CheckResult:
    """Score ``upscale`` (and ``reference``, ``(name, upscale)``, when given) on the photographs; decide."""
    pairs = check_pairs() if pairs is None else pairs
    model_db, bicubic_db = psnr_y(upscale, pairs), psnr_y(bicubic, pairs)
    ref_name, ref_db = (reference[0], psnr_y(reference[1], pairs)) if reference else (None, None)
    if model_db <= bicubic_db:
        passed, reason = False, f"{model_db:.2f} dB is not above bicubic's {bicubic_db:.2f} dB on this CPU"
    elif ref_db is not None and model_db < ref_db - MAX_LOSS_DB:
        passed, reason = (
            False,
            (
                f"{model_db:.2f} dB is {ref_db - model_db:.2f} dB below its reference {ref_name} "
                f"({ref_db:.2f} dB) on this CPU (at most {MAX_LOSS_DB} allowed)"
            ),
        )
    else:
        margin = f", {model_db - ref_db:+.2f} dB against {ref_name}" if ref_db is not None else ""
        passed, reason = True, f"{model_db:.2f} dB, {model_db - bicubic_db:+.2f} dB over bicubic{margin}"
    return CheckResult(name, model_db, bicubic_db, ref_name, ref_db, passed, reason)
