"""What both generator shapes share: their activation, how a new one starts, and how their cost is counted."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

NEGATIVE_SLOPE = 0.1


def activate(x: torch.Tensor, slope: float) -> torch.Tensor:
    """LeakyReLU with ``slope``; ReLU at 0 (which onnxruntime folds into the conv before it)."""
    return F.relu(x) if slope == 0 else F.leaky_relu(x, slope)


@torch.no_grad()
def start_as_nearest(tail: nn.Module) -> None:
    """Zero the tail's bias and shrink its weights, so a new generator starts as nearest-neighbour
    upsampling (its residual) with the detail branch near zero."""
    for name, p in tail.named_parameters():
        if name.endswith("bias"):
            p.zero_()
        else:
            p.mul_(0.1)


def count_params(model: nn.Module) -> int:
    """Trainable parameter count (what the 20k budget limits; for a reparam net, count ``fused(model)``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, height: int = 360, width: int = 640) -> int:
    """Multiply-accumulates of the convolutions for one [1,1,height,width] input."""
    macs = 0

    def hook(mod: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        macs += out.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, height, width))
    finally:
        for h in handles:
            h.remove()
    if getattr(model, "dense_tail", False):  # its tail is a functional conv the hooks do not see
        lr_tail = cast(int, model.lr_tail)  # QuarterResSR's int, set whenever dense_tail is
        macs += 16 * 4 * lr_tail * 9 * ((height + 1) // 2) * ((width + 1) // 2)
    return macs
