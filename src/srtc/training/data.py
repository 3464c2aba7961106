"""Random (LR, HR) luma patch pairs for training, from a folder of HR images held in memory.

Each image is prepared once at load time exactly like the evaluation protocol
(``srtc.training.imaging``): HR cropped to even size, LR = PIL bicubic downscale of the RGB, LR luma
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

from . import imaging
from .teacher import blend

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

    def __init__(
        self,
        root: str | Path,
        patch: int = 96,
        limit: int | None = None,
        teacher: Callable[[np.ndarray], np.ndarray] | None = None,
        teacher_weight: float = 0.0,
        full_range: float = 0.0,
    ) -> None:
        """``teacher``: a whole-image x2 luma model whose output, at ``teacher_weight``, is blended into
        each HR target once here (``srtc.training.teacher``); the rest of training is unchanged.
        ``full_range``: the share of patch pairs stretched to full-range luma (``stretch_full_range``)."""
        if patch % SCALE:
            raise ValueError(f"patch size {patch} must be a multiple of {SCALE}")
        if not 0.0 <= full_range <= 1.0:
            raise ValueError(f"full_range is a probability, got {full_range}")
        self.patch = patch
        self.full_range = full_range
        self.lr: list[np.ndarray] = []
        self.hr: list[np.ndarray] = []
        for name, lr, target in load_pairs(root, limit):
            if min(lr.shape) * SCALE < patch:
                log.warning("skipping %s: smaller than the %d px patch", name, patch)
                continue
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
        if self.full_range:  # drawn only when asked, so runs without it repeat exactly as before
            pick = rng.random(batch) < self.full_range
            lrs[pick], hrs[pick] = stretch_full_range(lrs[pick], hrs[pick])
        return torch.from_numpy(lrs), torch.from_numpy(hrs)


def stretch_full_range(lr, hr):
    """A limited-range (16..235) luma pair remapped to full range (0..255): the LR rounded to 8 bits and
    both clipped, as a full-range source (a grey image, yuvj420p video) would give them.

    Why: every RGB training image has limited-range Y, so without this a model never sees luma below
    16 or above 235, and one warm restart learnt to put out 0-12 where Set14's grey ``bridge`` has 40-49
    (docs/MODELS.md). The map is affine and the LR is a linear filter of the HR, so the stretched
    pair is still a downscaling pair, up to the rounding. Works on numpy arrays and torch tensors.
    """
    gain, offset = 255.0 / 219.0, 16.0 / 219.0
    lr = (lr * gain - offset).clip(0.0, 1.0)
    lr = (lr * 255.0).round() / 255.0
    return lr, (hr * gain - offset).clip(0.0, 1.0)


def load_pairs(root: str | Path, limit: int | None = None):
    """(name, LR luma, HR luma target) on 0..1 for each image under ``root``, or from a pack (``.npz``)."""
    if Path(root).suffix == ".npz":
        with np.load(root) as pack:
            names = [str(n) for n in pack["names"]][:limit]
            for i, name in enumerate(names):
                yield name, pack[f"lr{i}"].astype(np.float32) / 255.0, pack[f"hr{i}"].astype(np.float32) / 255.0
        return
    for path in find_images(root)[:limit]:
        hr = imaging.crop_to_multiple(imaging.load_image(path), SCALE)
        lr = imaging.luma_u8(imaging.downscale(hr, SCALE)).astype(np.float32) / 255.0
        yield path.name, lr, (imaging.luma(hr) / 255.0).astype(np.float32)


def pack_pairs(root: str | Path, out: str | Path) -> int:
    """Write the training pairs of ``root`` as one compressed ``.npz``: LR luma exactly as PatchPairs makes it,
    HR luma rounded to 8 bits (a quarter of the RGB PNGs' size; the rounding is 1/255 at most, zero-mean).

    Why: a GPU machine reached through the device tool takes 64 MiB of files, and the 291 RGB training
    images alone are 61 MB. ``python -m srtc.training.data --pack ../shared/data/train --out train_y.npz``.
    """
    arrays: dict[str, np.ndarray] = {}
    names = []
    for i, (name, lr, hr) in enumerate(load_pairs(root)):
        names.append(name)
        arrays[f"lr{i}"] = np.rint(lr * 255.0).astype(np.uint8)
        arrays[f"hr{i}"] = np.clip(np.rint(hr * 255.0), 0, 255).astype(np.uint8)
    np.savez_compressed(out, names=np.array(names), **arrays)  # type: ignore[arg-type]  # numpy stub's allow_pickle
    return len(names)


def crop_pair(lr: np.ndarray, hr: np.ndarray, patch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One aligned patch pair (LR patch/2, HR patch) at a random place, with a random flip and rotation.

    Shared by every training source, so clean and codec-degraded pairs are cut and augmented alike.
    """
    q = patch // SCALE
    y = int(rng.integers(lr.shape[0] - q + 1))
    x = int(rng.integers(lr.shape[1] - q + 1))
    lp = lr[y : y + q, x : x + q]
    hp = hr[SCALE * y : SCALE * y + patch, SCALE * x : SCALE * x + patch]
    k = int(rng.integers(4))
    if rng.integers(2):
        lp, hp = lp[:, ::-1], hp[:, ::-1]
    return np.rot90(lp, k), np.rot90(hp, k)


class DevicePatches:
    """A PatchPairs' images held on the training device and cropped there, for GPU training.

    Why: at the batch sizes a GPU wants, cutting patches in numpy and copying them over took longer
    than the step itself. Here every image lives in one flat tensor per resolution and a batch is one
    gather: random image (by area, as PatchPairs), random place, and a random one of the 8 flips and
    rotations applied to the index grids, so LR and HR stay aligned by construction.
    """

    def __init__(self, pairs: PatchPairs, device: torch.device | str, seed: int = 0) -> None:
        self.patch = pairs.patch
        self.full_range = getattr(pairs, "full_range", 0.0)
        self.device = torch.device(device)
        self.lr = torch.from_numpy(np.concatenate([a.ravel() for a in pairs.lr])).to(self.device)
        self.hr = torch.from_numpy(np.concatenate([a.ravel() for a in pairs.hr])).to(self.device)
        shapes = np.array([a.shape for a in pairs.lr], dtype=np.int64)
        self.lr_h, self.lr_w = self._tensor(shapes[:, 0]), self._tensor(shapes[:, 1])
        self.lr_off = self._tensor(np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])[:-1]]))
        self.hr_off = 4 * self.lr_off  # each HR image is exactly (2h, 2w)
        self.weights = torch.from_numpy(pairs.weights).to(self.device)
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        """A numpy array as a contiguous tensor on this loader's device (the gather's image sizes and offsets)."""
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def _grid(
        self, side: int, flip_y: torch.Tensor, flip_x: torch.Tensor, transpose: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample row and column offsets [B, side, side] inside the crop, transformed."""
        r = torch.arange(side, device=self.device)
        rows = r.view(1, side, 1).expand(len(flip_y), side, side)
        cols = r.view(1, 1, side).expand(len(flip_y), side, side)
        rows = torch.where(flip_y.view(-1, 1, 1), side - 1 - rows, rows)
        cols = torch.where(flip_x.view(-1, 1, 1), side - 1 - cols, cols)
        t = transpose.view(-1, 1, 1)
        return torch.where(t, cols, rows), torch.where(t, rows, cols)

    def sample(self, batch: int, rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on the device: LR [B,1,p/2,p/2] and HR [B,1,p,p] (``rng`` is unused: the device
        generator, seeded at construction, draws everything)."""
        p, q, g = self.patch, self.patch // SCALE, self.generator
        img = torch.multinomial(self.weights, batch, replacement=True, generator=g)
        h, w = self.lr_h[img], self.lr_w[img]
        y = (torch.rand(batch, device=self.device, generator=g) * (h - q + 1)).long()
        x = (torch.rand(batch, device=self.device, generator=g) * (w - q + 1)).long()
        flips = torch.rand(batch, 3, device=self.device, generator=g) < 0.5
        lr_r, lr_c = self._grid(q, flips[:, 0], flips[:, 1], flips[:, 2])
        hr_r, hr_c = self._grid(p, flips[:, 0], flips[:, 1], flips[:, 2])
        v = (-1, 1, 1)
        lr_idx = self.lr_off[img].view(v) + (y.view(v) + lr_r) * w.view(v) + x.view(v) + lr_c
        hr_idx = self.hr_off[img].view(v) + (2 * y.view(v) + hr_r) * (2 * w).view(v) + 2 * x.view(v) + hr_c
        lr, hr = self.lr[lr_idx].unsqueeze(1), self.hr[hr_idx].unsqueeze(1)
        if self.full_range:
            pick = (torch.rand(batch, device=self.device, generator=g) < self.full_range).view(-1, 1, 1, 1)
            lr_full, hr_full = stretch_full_range(lr, hr)
            lr, hr = torch.where(pick, lr_full, lr), torch.where(pick, hr_full, hr)
        return lr, hr

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def restore(self, state: torch.Tensor) -> None:
        self.generator.set_state(state.cpu())


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Pack a folder of training images into one .npz of luma pairs.")
    ap.add_argument("--pack", required=True, help="folder of HR training images")
    ap.add_argument("--out", required=True, help="the .npz to write")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    n = pack_pairs(args.pack, args.out)
    log.info("packed %d images into %s (%.1f MB)", n, args.out, Path(args.out).stat().st_size / 1e6)


if __name__ == "__main__":
    main()
