"""Quality measures beyond PSNR, all on luma (Y, 0..255 float), for ``srtc.training.evaluate`` and the crop sheet.

- ``ssim``: Wang et al. 2004 SSIM: 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255,
  "valid" filtering (as the authors' MATLAB ``ssim_index`` and BasicSR), mean of the SSIM map, after
  shaving ``shave`` px at each border. Identical images give exactly 1.
- ``temporal_psnr``: how faithfully frame-to-frame change is reproduced, without optical flow:
  ``D = (SR_t - SR_{t-1}) - (HR_t - HR_{t-1})`` over consecutive frame pairs, MSE of D pooled over all
  pairs (shaved), reported as 10 log10(255^2 / MSE). Higher is better: flicker, crawling artefacts and
  lost motion all add to D; a static error that is the same in every frame does not.
- ``downsample_psnr``: down-sampling consistency: the SR downscaled x2 by the same antialiased bicubic
  that made the LR (PIL BICUBIC) against the LR itself. A model that invents detail should still
  reproduce its input when brought back to its size (GAN target: >= 40 dB).
- ``gradient_stats``: Sobel gradient magnitude of SR and HR: ratio of their means (1 = as sharp as HR,
  < 1 blurrier, > 1 over-sharpened or noisy) and the L1 distance between their normalised
  histograms (0 = same statistics, 2 = disjoint), so a perceptual model can be shown closer to HR's
  texture statistics than a fidelity model even where its PSNR is lower.
- ``flat_noise``: the grain a GAN invents where the original is smooth: where the HR's local standard
  deviation (5x5) is under ``FLAT_STD`` levels, the RMS of the high-pass part of SR - HR (the error
  minus its 5x5 mean, so a smooth offset does not count), in luma levels. 0 = as smooth as the HR
  there; bicubic and fidelity models stay low, false texture raises it. NaN for an image with no
  flat area (averaged over the others).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2
FLAT_STD = 2.0  # luma levels: a 5x5 window of the HR this even is "flat"
FLAT_WINDOW = 5
GRAD_BINS = np.linspace(0.0, 200.0, 51)  # Sobel magnitude / 8 (per-pixel slope on 0..255); last bin open


def _shave(a: np.ndarray, shave: int) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return a[shave:-shave, shave:-shave] if shave else a


def ssim(a: np.ndarray, b: np.ndarray, shave: int = 0) -> float:
    """Mean SSIM of two luma images on the 0..255 scale (Gaussian window, valid part only)."""
    x, y = _shave(a, shave), _shave(b, shave)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    m = SSIM_WINDOW // 2

    def filt(img: np.ndarray) -> np.ndarray:  # separable Gaussian; the border rows are cut ("valid")
        out = cv2.GaussianBlur(img, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)
        return out[m:-m, m:-m]

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    num = (2 * mx * my + C1) * (2 * sxy + C2)
    den = (mx * mx + my * my + C1) * (sxx + syy + C2)
    return float(np.mean(num / den))


def mse_to_psnr(mse: float) -> float:
    """10 log10(255^2 / mse); infinite for a perfect match."""
    return float("inf") if mse <= 0 else float(10.0 * np.log10(255.0**2 / mse))


def downscale_y(y: np.ndarray, scale: int = 2) -> np.ndarray:
    """Antialiased bicubic (PIL BICUBIC, as ``imaging.downscale``) on a float luma plane."""
    img = Image.fromarray(np.ascontiguousarray(y, np.float32))
    return np.asarray(img.resize((img.width // scale, img.height // scale), Image.Resampling.BICUBIC), np.float64)


def downsample_psnr(sr: np.ndarray, lr: np.ndarray, shave: int = 1, scale: int = 2) -> float:
    """PSNR between the SR brought back to LR size and the LR (``shave`` in LR pixels)."""
    back = np.clip(downscale_y(sr, scale), 0.0, 255.0)
    d = _shave(back, shave) - _shave(lr, shave)
    return mse_to_psnr(float(np.mean(d * d)))


class TemporalError:
    """Running ``temporal_psnr`` over a stream, one frame at a time (keeps only the previous frame)."""

    def __init__(self, shave: int = 0) -> None:
        self.shave = shave
        self.prev: tuple[np.ndarray, np.ndarray] | None = None
        self.sq_sum = 0.0
        self.count = 0

    def add(self, sr: np.ndarray, hr: np.ndarray) -> None:
        sr, hr = _shave(sr, self.shave), _shave(hr, self.shave)
        if self.prev is not None:
            d = (sr - self.prev[0]) - (hr - self.prev[1])
            self.sq_sum += float(np.sum(d * d))
            self.count += d.size
        self.prev = (sr, hr)

    def psnr(self) -> float:
        if not self.count:
            raise ValueError("temporal PSNR needs at least two frames")
        return mse_to_psnr(self.sq_sum / self.count)


def temporal_psnr(srs: list[np.ndarray], hrs: list[np.ndarray], shave: int = 0) -> float:
    """PSNR of the frame-difference error pooled over consecutive pairs (see module docstring)."""
    acc = TemporalError(shave)
    for sr, hr in zip(srs, hrs, strict=True):
        acc.add(sr, hr)
    return acc.psnr()


def gradient_magnitude(y: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude, divided by 8 so a unit slope reads 1 (luma levels per pixel)."""
    y = np.asarray(y, np.float64)
    gx = cv2.Sobel(y, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(y, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    return np.hypot(gx, gy) / 8.0


def gradient_histogram(g: np.ndarray) -> np.ndarray:
    """Normalised histogram of gradient magnitudes on ``GRAD_BINS`` (values past the end in the last bin)."""
    n = len(GRAD_BINS) - 1
    idx = np.minimum((np.ravel(g) * (n / GRAD_BINS[-1])).astype(np.int64), n - 1)  # uniform bins, fast
    h = np.bincount(idx, minlength=n).astype(np.float64)
    return h / max(h.sum(), 1.0)


def gradient_stats(sr: np.ndarray, hr: np.ndarray, shave: int = 0) -> dict:
    """``grad_ratio`` (mean |grad| SR / HR) and ``grad_hist_l1`` (histogram L1 distance, 0..2)."""
    gs, gh = _shave(gradient_magnitude(sr), shave), _shave(gradient_magnitude(hr), shave)
    ratio = float(gs.mean() / gh.mean()) if gh.mean() > 0 else float("nan")
    l1 = float(np.abs(gradient_histogram(gs) - gradient_histogram(gh)).sum())
    return {"grad_ratio": ratio, "grad_hist_l1": l1}


def _box_mean(a: np.ndarray, size: int = FLAT_WINDOW) -> np.ndarray:
    return cv2.blur(a, (size, size), borderType=cv2.BORDER_REFLECT)


def local_std(y: np.ndarray) -> np.ndarray:
    """Standard deviation of each ``FLAT_WINDOW`` x ``FLAT_WINDOW`` window (what "flat" is judged by)."""
    y = np.asarray(y, np.float64)
    return np.sqrt(np.maximum(_box_mean(y * y) - _box_mean(y) ** 2, 0.0))


def flat_grain_map(sr: np.ndarray, hr: np.ndarray) -> np.ndarray:
    """Per pixel: the squared high-pass error of SR where HR is flat, NaN elsewhere (``flat_noise``'s terms)."""
    d = np.asarray(sr, np.float64) - np.asarray(hr, np.float64)
    high = d - _box_mean(d)
    return np.where(local_std(hr) < FLAT_STD, high * high, np.nan)


def flat_noise(sr: np.ndarray, hr: np.ndarray, shave: int = 0) -> float:
    """RMS high-pass error of SR where HR is flat (see the module docstring), in luma levels."""
    grain = _shave(flat_grain_map(sr, hr), shave)
    if np.isnan(grain).all():
        return float("nan")
    return float(np.sqrt(np.nanmean(grain)))
