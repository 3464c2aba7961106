"""Loss terms of stage-2 adversarial fine-tuning (``srtc.training.gan``), one function per remedy.

Why so many anchors: a 14k-parameter generator has little capacity to spare, and a plain GAN
loss lets it trade fidelity for invented texture, shift mean brightness or drift off the LR.
Each term below pins one property the adversarial term may not change, and ``srtc.training.gan``
switches each on or off (weight 0) so an ablation shows what each one buys.
All images are luma on the 0..1 scale, [N,1,H,W].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F

from . import quality

_SOBEL_X = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]) / 8.0


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Smooth L1 variant: behaves like L1 away from zero, differentiable at zero."""
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()


def pixel_anchor(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """L1 to the HR: keeps the output on the fidelity solution the adversary pulls away from."""
    return F.l1_loss(sr, hr)


def patch_anchor(sr: torch.Tensor, hr: torch.Tensor, sizes: tuple[int, ...] = (4, 8)) -> torch.Tensor:
    """L1 between 4x4 / 8x8 patch means: fixes local brightness while leaving texture free."""
    total = sum(F.l1_loss(F.avg_pool2d(sr, s), F.avg_pool2d(hr, s)) for s in sizes)
    return cast(torch.Tensor, total) / len(sizes)  # a sum of tensors (no sizes: the division raises)


def downscale2(img: torch.Tensor, kernel: str = "bicubic") -> torch.Tensor:
    """x2 downscale like the LR was made: antialiased bicubic (as PIL) or area (box)."""
    if kernel == "area":
        return F.avg_pool2d(img, 2)
    return F.interpolate(img, scale_factor=0.5, mode="bicubic", antialias=True, align_corners=False)


def down_consistency(sr: torch.Tensor, lr: torch.Tensor, kernel: str = "bicubic") -> torch.Tensor:
    """L1 between the downscaled SR and the LR input: whatever detail is invented must not change the LR."""
    return F.l1_loss(downscale2(sr, kernel), lr)


def gradients(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel x and y derivatives (valid region, no padding artefacts)."""
    kx = _SOBEL_X.to(img)[None, None]
    return F.conv2d(img, kx), F.conv2d(img, kx.transpose(2, 3))


def gradient_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """L1 between image gradients (tangent-space constraint): edges where HR has them, no fake ones."""
    (sx, sy), (hx, hy) = gradients(sr), gradients(hr)
    return F.l1_loss(sx, hx) + F.l1_loss(sy, hy)


def temporal_change(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """L1 between the SR's and the HR's change from frame to frame; ``sr``, ``hr``: [B, 2, H, W], previous first.

    Why: a per-frame model that answers the codec's noise differently in each frame flickers where the scene
    is still; bicubic does not. This is ``srtc.training.quality.temporal_psnr``'s error, made a loss.
    """
    return torch.mean(torch.abs((sr[:, 1] - sr[:, 0]) - (hr[:, 1] - hr[:, 0])))


def feature_matching(feats_sr: list[torch.Tensor], feats_hr: list[torch.Tensor]) -> torch.Tensor:
    """L1 between discriminator features of SR and HR (latent matching); HR features are targets."""
    total = sum(F.l1_loss(a, b.detach()) for a, b in zip(feats_sr, feats_hr))
    return cast(torch.Tensor, total) / len(feats_sr)  # a sum of tensors (no features: the division raises)


def local_variance(x: torch.Tensor, size: int = 7) -> torch.Tensor:
    """Variance of ``x`` in each ``size`` x ``size`` window (same size as ``x``; borders use the pixels inside)."""
    pad = size // 2
    mean = F.avg_pool2d(x, size, stride=1, padding=pad, count_include_pad=False)
    mean_sq = F.avg_pool2d(x * x, size, stride=1, padding=pad, count_include_pad=False)
    return (mean_sq - mean * mean).clamp_min(0.0)


def artifact_map(sr: torch.Tensor, hr: torch.Tensor, ema_sr: torch.Tensor, size: int = 7) -> torch.Tensor:
    """Where the generator's error looks like an artefact, as a per-pixel weight (LDL, Liang et al., CVPR 2022).

    A GAN's false texture (grain in flat areas, ringing) is an error that varies quickly from pixel to
    pixel, while a fidelity model's error is smooth: so the weight is the local variance of |SR - HR|
    (7x7), scaled per image by the variance of the whole residual to the power 1/5. Pixels where the
    current generator errs less than its EMA (a smoothed, more stable version of itself) are real
    detail the adversary taught it, and get weight 0. Returned detached: a map, not a path for gradients.
    """
    with torch.no_grad():
        residual = (hr - sr).abs()
        patch = residual.var(dim=(1, 2, 3), keepdim=True) ** 0.2
        weight = patch * local_variance(residual, size)
        return weight * (residual >= (hr - ema_sr).abs()).to(weight)


def artifact_loss(sr: torch.Tensor, hr: torch.Tensor, ema_sr: torch.Tensor) -> torch.Tensor:
    """L1 to the HR weighted by :func:`artifact_map`: pulls the generator back only where it invents noise.

    The map's values are small (a variance of errors on the 0..1 scale, ~1e-5..1e-3), so this term's
    weight in ``srtc.training.gan`` is correspondingly large."""
    weight = artifact_map(sr, hr, ema_sr)
    return F.l1_loss(weight * sr, weight * hr)


FLAT_STD = quality.FLAT_STD / 255.0  # the evaluation's threshold, on the 0..1 scale
FLAT_WINDOW = quality.FLAT_WINDOW


def flat_grain(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """Mean |high-pass of SR - HR| where the HR is flat (5x5 std under 2 levels): no texture where there is none.

    The training-time form of ``srtc.training.quality.flat_noise`` (L1 instead of RMS). The adversary learns
    that real photographs have fine texture and pushes the generator to add it everywhere, including
    skies and walls; this term forbids exactly that and nothing else: a smooth error (an offset, a soft
    edge) has no high-pass part, and busy areas are outside the mask.
    """
    pad = FLAT_WINDOW // 2
    with torch.no_grad():
        mask = (local_variance(hr, FLAT_WINDOW) < FLAT_STD**2).to(hr)
    d = sr - hr
    high = d - F.avg_pool2d(d, FLAT_WINDOW, stride=1, padding=pad, count_include_pad=False)
    return (high.abs() * mask).sum() / mask.sum().clamp_min(1.0)


def ragan_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Relativistic average discriminator loss (ESRGAN): real more real than the average fake, and vice versa."""
    return 0.5 * (
        F.binary_cross_entropy_with_logits(real - fake.mean(), torch.ones_like(real))
        + F.binary_cross_entropy_with_logits(fake - real.mean(), torch.zeros_like(fake))
    )


def ragan_g(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Relativistic average generator loss: the symmetric objective, so G gets gradients from real logits too."""
    return 0.5 * (
        F.binary_cross_entropy_with_logits(real - fake.mean(), torch.zeros_like(real))
        + F.binary_cross_entropy_with_logits(fake - real.mean(), torch.ones_like(fake))
    )


def vanilla_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Standard non-saturating GAN discriminator loss (the ablation baseline for RaGAN)."""
    return 0.5 * (
        F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    )


def vanilla_g(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Standard non-saturating GAN generator loss (``real`` unused)."""
    del real
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


ADVERSARIAL = {"ragan": (ragan_d, ragan_g), "vanilla": (vanilla_d, vanilla_g)}


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1": F.l1_loss,
    "charbonnier": charbonnier,
    "mse": F.mse_loss,
}  # mse: a PSNR-oriented fine-tune


def temporal_loss(model: torch.nn.Module, data, batch: int, rng, device: torch.device) -> torch.Tensor:
    """:func:`temporal_change` of ``model`` on a batch of consecutive coded frames (``data``: a
    ``CodecPatchPairs``, whose clip pairs keep the frame before)."""
    lr, hr = data.sample_temporal(batch, rng)
    b, _, h, w = lr.shape
    sr = model(lr.to(device).reshape(2 * b, 1, h, w)).reshape(b, 2, *hr.shape[-2:])
    return temporal_change(sr, hr.to(device))
