"""The full-resolution generator: the fidelity model, where quality matters more than time.

Why a second shape: ``models.arch.QuarterResSR`` spends its parameters at a quarter of the LR pixels,
which makes it fast, and at 15k parameters it stopped near 36.8 dB on Set5, short of FSRCNN's 37.00
(models/MODEL_CARD.md). The same budget spent at LR resolution (ECBSR's plain shape: a 3x3 conv
from the luma to C features, M 3x3 convs C->C, a 3x3 conv to the 4 sub-pixels of each LR pixel, pixel
shuffle 2, plus the input repeated as a nearest-neighbour residual) sees every LR pixel with its own
features, at 4x the multiply-adds per parameter.

Activations are LeakyReLU(0.1) and the input is shifted by -0.5, as in QuarterResSR (same reasons).
``reparam=True`` trains each 3x3 conv as an ECB block; ``fused_full_res()`` folds them for export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.arch import NEGATIVE_SLOPE, activate, start_as_nearest
from models.reparam import ECB


class FullResSR(nn.Module):
    """x2 luma SR at LR resolution: head -> body -> tail to 4 sub-pixels -> shuffle 2, plus nearest residual.

    Input [N,1,H,W] in 0..1, output [N,1,2H,2W]; any H and W.
    """

    full_res = True  # lets shared code (export, training) tell the two generators apart

    def __init__(self, widths: tuple[int, ...] = (16,) * 7, reparam: bool = False,
                 slope: float = NEGATIVE_SLOPE) -> None:
        """``widths``: output channels of the head and of each body conv (16 x 7 is M6C16, 14,660 params)."""
        super().__init__()
        self.widths = tuple(widths)
        self.reparam = reparam
        self.slope = float(slope)

        def conv(cin: int, cout: int) -> nn.Module:
            return ECB(cin, cout) if reparam else nn.Conv2d(cin, cout, 3, padding=1)

        self.head = conv(1, widths[0])
        self.body = nn.ModuleList(conv(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.tail = conv(widths[-1], 4)
        self.shift = 0.5
        start_as_nearest(self.tail)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return activate(x, self.slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.act(self.head(x - self.shift))
        for conv in self.body:
            f = self.act(conv(f))
        # The input broadcasts over the 4 sub-pixels: the same sums as repeating it, without the
        # 4-channel copy an explicit expand costs onnxruntime (an Expand node) on every frame.
        return F.pixel_shuffle(self.tail(f) + x, 2)


@torch.no_grad()
def fused_full_res(model: FullResSR) -> FullResSR:
    """The plain FullResSR computing what ``model`` computes (ECB blocks folded into 3x3 convs)."""
    plain = FullResSR(model.widths, slope=model.slope).to(next(model.parameters()).device)
    plain.shift = model.shift
    for src, dst in zip([model.head, *model.body, model.tail], [plain.head, *plain.body, plain.tail]):
        conv = src.fuse() if isinstance(src, ECB) else src
        dst.weight.copy_(conv.weight)
        dst.bias.copy_(conv.bias)
    return plain.train(model.training)
