"""Distillation: a stronger published x2 model's output as (part of) the training target.

Our training set is 291 images on a CPU; the ETDS repository's models were trained on DIV2K for
about 1.6 M GPU iterations. Their output on our training LR carries what that training learnt, and a
student fitted to it inherits some of it (Hinton's distillation, applied to the output image). The
teacher runs once per training image at load time, so a step costs what it costs without one.

Any x2 peer file that ``srtc.training.peers`` can rebuild works (``--teacher ../shared/peers/etds/ETDS_M7C48_x2.pth``);
the weights are read from their path, never copied. The ETDS-repository weights are Apache-2.0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .peers import PEER_FILES, build_peer

log = logging.getLogger(__name__)

Teacher = Callable[[np.ndarray], np.ndarray]  # LR luma [H, W] on 0..1 -> SR luma [2H, 2W] on 0..1


def peer_family(path: Path) -> tuple[str, str]:
    """(short name, family) of a peer file, recognised by its place in the peer folder's layout."""
    posix = Path(path).resolve().as_posix()
    for short, family, rel in PEER_FILES:
        if posix.endswith("/" + rel):
            return short, family
    known = ", ".join(rel for _, _, rel in PEER_FILES)
    raise ValueError(f"{path} is not a known x2 peer file (expected one of: {known})")


def load_teacher(path: str | Path, device=None) -> tuple[str, Teacher]:
    """The peer at ``path`` as a function on whole luma images, and its name; it runs on ``device``
    (a torch device; the CPU when None)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights not found: {path}")
    short, family = peer_family(path)
    model, _, params = build_peer(family, path)
    device = device or torch.device("cpu")
    model = model.to(device)
    log.info("teacher %s: %d params, from %s", short, params, path)

    @torch.no_grad()
    def run(lr: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(lr, np.float32))[None, None].to(device)
        return model(x)[0, 0].cpu().numpy().astype(np.float32)

    return short, run


def blend(hr: np.ndarray, taught: np.ndarray, weight: float) -> np.ndarray:
    """The training target: ``weight`` of the teacher's output, the rest the real HR."""
    if hr.shape != taught.shape:
        raise ValueError(f"teacher output {taught.shape} does not match the HR {hr.shape}")
    return ((1.0 - weight) * hr + weight * taught).astype(np.float32)
