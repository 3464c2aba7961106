"""The full-resolution generator: the fidelity model, where quality matters more than time.

Why a second shape: ``srtc.training.arch.QuarterResSR`` spends its parameters at a quarter of the LR pixels,
which makes it fast, and at 15k parameters it stopped near 36.8 dB on Set5, short of FSRCNN's 37.00
(docs/MODELS.md). The same budget spent at LR resolution (ECBSR's plain shape: a 3x3 conv
from the luma to C features, M 3x3 convs C->C, a 3x3 conv to the 4 sub-pixels of each LR pixel, pixel
shuffle 2, plus the input repeated as a nearest-neighbour residual) sees every LR pixel with its own
features, at 4x the multiply-adds per parameter.

Activations are LeakyReLU(0.1) and the input is shifted by -0.5, as in QuarterResSR (same reasons).
``reparam=True`` trains each 3x3 conv as an ECB block; ``fused_full_res()`` folds them for export.

``mix=N`` ends the net as ETDS does: the tail's 3x3 conv emits N features, not 4, and after its
activation a 1x1 conv mixes them into the 4 sub-pixels. Why it is nearly free: onnxruntime's blocked
(NCHWc) convs compute output channels in blocks of 8 or 16 (AVX2 / AVX-512), so a 3x3 conv to 4
channels costs what one to 16 costs (measured: the 16->4 tail took as long as a 16->16 body conv).
With ``mix=16`` those padded channels become an extra nonlinear layer; the 1x1 costs a ninth of a 3x3.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .layers import NEGATIVE_SLOPE, activate, start_as_nearest
from .reparam import ECB


class FullResSR(nn.Module):
    """x2 luma SR at LR resolution: head -> body -> tail to 4 sub-pixels -> shuffle 2, plus nearest residual.

    Input [N,1,H,W] in 0..1, output [N,1,2H,2W]; any H and W.
    """

    full_res = True  # lets shared code (export, training) tell the two generators apart

    def __init__(
        self, widths: tuple[int, ...] = (16,) * 7, reparam: bool = False, slope: float = NEGATIVE_SLOPE, mix: int = 0
    ) -> None:
        """``widths``: output channels of the head and of each body conv (16 x 7 is M6C16, 14,660 params).
        ``mix``: 0 for a 3x3 tail straight to the 4 sub-pixels; N for a 3x3 tail to N features and a
        1x1 conv from them to the 4 sub-pixels."""
        super().__init__()
        if mix < 0:
            raise ValueError(f"mix must be 0 (no 1x1 mixing conv) or a width, got {mix}")
        self.widths = tuple(widths)
        self.reparam = reparam
        self.slope = float(slope)

        def conv(cin: int, cout: int) -> nn.Module:
            return ECB(cin, cout) if reparam else nn.Conv2d(cin, cout, 3, padding=1)

        self.head = conv(1, widths[0])
        self.body = nn.ModuleList(conv(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.tail = conv(widths[-1], mix or 4)
        self.mix = nn.Conv2d(mix, 4, 1) if mix else None
        self.shift = 0.5
        start_as_nearest(self.mix if self.mix is not None else self.tail)

    @property
    def mix_width(self) -> int:
        """Features the tail hands the 1x1 mixing conv (0: no mixing conv)."""
        return 0 if self.mix is None else self.mix.in_channels

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return activate(x, self.slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.act(self.head(x - self.shift))
        for conv in self.body:
            f = self.act(conv(f))
        sub = self.tail(f)
        if self.mix is not None:
            sub = self.mix(self.act(sub))
        # The input broadcasts over the 4 sub-pixels: the same sums as repeating it, without the
        # 4-channel copy an explicit expand costs onnxruntime (an Expand node) on every frame.
        return F.pixel_shuffle(sub + x, 2)


@torch.no_grad()
def fused_full_res(model: FullResSR) -> FullResSR:
    """The plain FullResSR computing what ``model`` computes (ECB blocks folded into 3x3 convs)."""
    plain = FullResSR(model.widths, slope=model.slope, mix=model.mix_width).to(next(model.parameters()).device)
    plain.shift = model.shift
    pairs = [(model.head, plain.head), *zip(model.body, plain.body), (model.tail, plain.tail)]
    if model.mix is not None:
        assert plain.mix is not None  # built with model's mix width
        pairs.append((model.mix, plain.mix))
    for src, dst in pairs:
        conv = src.fuse() if isinstance(src, ECB) else cast(nn.Conv2d, src)  # not an ECB: a plain conv
        target = cast(nn.Conv2d, dst)  # the plain net has plain convs only
        assert conv.bias is not None and target.bias is not None  # every conv is built with a bias
        target.weight.copy_(conv.weight)
        target.bias.copy_(conv.bias)
    return plain.train(model.training)
