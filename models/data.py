"""Random (LR, HR) luma patch pairs for training, from a folder of HR images held in memory.

Each image is prepared once at load time exactly like the evaluation protocol
(``models.imaging``): HR cropped to even size, LR = PIL bicubic downscale of the RGB, LR luma
rounded to uint8 as a decoder would give it, HR luma kept unrounded as the target. Patches are
then cut at matching positions from the whole-image pair, so no patch carries the border
artefacts of downscaling a small crop, and sampling costs only array slicing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from models import imaging
from models.teacher import blend

log = logging.getLogger(__name__)

SCALE = 2


def find_images(root: str | Path) -> list[Path]:
    """Images anywhere under ``root`` (e.g. train/T91 and train/BSDS200), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in imaging.IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images under {root}")
    return files


class PatchPairs:
    """In-memory training pairs with random crops, flips and 90-degree rotations.

    Patches are drawn with probability proportional to image area, i.e. uniformly over all
    patch positions of the whole set, so small T91 images are not over-sampled.
    """

    def __init__(self, root: str | Path, patch: int = 96, limit: int | None = None,
                 teacher: Callable[[np.ndarray], np.ndarray] | None = None, teacher_weight: float = 0.0) -> None:
        """``teacher``: a whole-image x2 luma model whose output, at ``teacher_weight``, is blended into
        each HR target once here (``models.teacher``); the rest of training is unchanged."""
        if patch % SCALE:
            raise ValueError(f"patch size {patch} must be a multiple of {SCALE}")
        self.patch = patch
        self.lr: list[np.ndarray] = []
        self.hr: list[np.ndarray] = []
        for path in find_images(root)[:limit]:
            hr = imaging.crop_to_multiple(imaging.load_image(path), SCALE)
            if min(hr.size) < patch:
                log.warning("skipping %s: smaller than the %d px patch", path, patch)
                continue
            lr = imaging.luma_u8(imaging.downscale(hr, SCALE)).astype(np.float32) / 255.0
            target = (imaging.luma(hr) / 255.0).astype(np.float32)
            if teacher is not None and teacher_weight > 0:
                target = blend(target, teacher(lr), teacher_weight)
            self.lr.append(lr)
            self.hr.append(target)
        if not self.hr:
            raise ValueError(f"no usable images under {root}")
        areas = np.array([a.size for a in self.lr], dtype=np.float64)
        self.weights = areas / areas.sum()
        log.info("loaded %d images (%.1f M HR pixels) from %s", len(self.hr), areas.sum() * 4 / 1e6, root)

    def __len__(self) -> int:
        return len(self.hr)

    def sample(self, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch: LR [B,1,p/2,p/2] and HR [B,1,p,p], float32 on the 0..1 scale."""
        p, q = self.patch, self.patch // SCALE
        lrs = np.empty((batch, 1, q, q), np.float32)
        hrs = np.empty((batch, 1, p, p), np.float32)
        for b, i in enumerate(rng.choice(len(self.hr), size=batch, p=self.weights)):
            lrs[b, 0], hrs[b, 0] = crop_pair(self.lr[i], self.hr[i], p, rng)
        return torch.from_numpy(lrs), torch.from_numpy(hrs)


def crop_pair(lr: np.ndarray, hr: np.ndarray, patch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One aligned patch pair (LR patch/2, HR patch) at a random place, with a random flip and rotation.

    Shared by every training source, so clean and codec-degraded pairs are cut and augmented alike.
    """
    q = patch // SCALE
    y = int(rng.integers(lr.shape[0] - q + 1))
    x = int(rng.integers(lr.shape[1] - q + 1))
    lp = lr[y:y + q, x:x + q]
    hp = hr[SCALE * y:SCALE * y + patch, SCALE * x:SCALE * x + patch]
    k = int(rng.integers(4))
    if rng.integers(2):
        lp, hp = lp[:, ::-1], hp[:, ::-1]
    return np.rot90(lp, k), np.rot90(hp, k)
