"""The generators by name: build one from a checkpoint's config, and fold one into its exported form.

Two shapes exist: :class:`~srtc.training.quarterres.QuarterResSR` (convs at a quarter of the LR
pixels) and :class:`~srtc.training.fullres.FullResSR` (convs at LR resolution); a checkpoint's config
says which.
"""

from __future__ import annotations

from typing import cast

import torch

from .fullres import FullResSR, fused_full_res
from .layers import NEGATIVE_SLOPE, activate, count_macs, count_params, start_as_nearest
from .quarterres import QuarterResSR, fused_quarter_res

__all__ = [
    "NEGATIVE_SLOPE",
    "FullResSR",
    "QuarterResSR",
    "activate",
    "build",
    "checkpoint_generator",
    "count_macs",
    "count_params",
    "fused",
    "start_as_nearest",
]


def build(config: dict | None = None) -> QuarterResSR | FullResSR:
    """Make the generator from a checkpoint's config dict (so checkpoints rebuild themselves).

    ``{"widths": [...]}`` is the plain net (every checkpoint before re-parameterisation);
    ``{"widths": [...], "reparam": true}`` the ECB training form; ``"full_res": true`` the
    full-resolution generator (``srtc.training.fullres``).
    """
    config = dict(config or {})
    if config.pop("full_res", False):
        return FullResSR(**config)
    return QuarterResSR(**config)


def checkpoint_generator(ckpt: dict) -> QuarterResSR | FullResSR:
    """The generator of a loaded training checkpoint in its training form, with the weights that get
    exported: the EMA weights when the checkpoint has them (stage 2, ``srtc.training.gan``)."""
    model = build(ckpt["config"])
    model.load_state_dict(ckpt.get("ema") or ckpt["model"])
    return model


@torch.no_grad()
def fused(model: QuarterResSR | FullResSR, dense_tail: bool = False) -> QuarterResSR | FullResSR:
    """The plain generator computing what ``model`` computes: ECB blocks folded into 3x3 convs.

    A plain model is returned as a copy, so callers can always export ``fused(model)``.
    ``dense_tail``: an LR-resolution tail runs in its dense quarter-resolution form (same output, faster
    in onnxruntime; see ``QuarterResSR``). A full-resolution model has no such tail.
    """
    if getattr(model, "full_res", False):  # QAT wrappers carry the flag too
        return fused_full_res(cast(FullResSR, model))
    return fused_quarter_res(cast(QuarterResSR, model), dense_tail)
