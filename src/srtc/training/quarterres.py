"""The generator: a Y-only x2 network that works at quarter resolution.

Why this shape: onnxruntime on 2 CPU threads spends its time per output pixel of each conv,
so wide convs on few pixels beat narrow convs on many. The LR luma is pixel-unshuffled by 2
(4 channels at H/2 x W/2), a short stack of 3x3 convs runs there, and the last conv emits the
16 sub-pixels of each 4x4 HR block, which a pixel shuffle by 4 lays out at 2H x 2W.

Global residual: each 4x4 HR block starts from the nearest-neighbour upsampling of its LR
pixels (a fixed channel gather before the shuffle, almost free), so the convs learn detail only.

Activations are LeakyReLU(0.1): with plain ReLU this small net lost most of its units early in
training (dead ReLUs; Set5 stuck near nearest-neighbour quality), and onnxruntime fuses
LeakyRelu into the conv as it does Relu (PReLU is not fused and cost ~60% more time).
The conv stack sees the input shifted by -0.5 (zero-mean-ish), which kept training stable at
learning rates of 3e-3..5e-3 where the unshifted net diverged to a poor solution.

``reparam=True`` trains every 3x3 conv as an ECB block (``srtc.training.reparam``); ``fused()`` folds
them into the plain QuarterResSR that is exported, so inference cost and ONNX graph are unchanged.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .layers import NEGATIVE_SLOPE, activate, start_as_nearest
from .reparam import ECB


def _lr_tail_gather(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the dense quarter-resolution form of an LR-resolution tail takes each of its values from.

    The tail's 3x3 conv (``n`` features -> 4 sub-pixels) runs on features pixel-shuffled from 4n
    quarter-resolution channels; the same sums are one 3x3 conv at quarter resolution from those 4n
    channels to the 16 sub-pixels of each 4x4 block, whose kernel is the tail's weights spread out
    with zeros (a quarter of it non-zero). Returns (kernel index [16, 4n, 3, 3], bias index [16]) into
    ``cat(tail.weight.flatten(), tail.bias, [0])``; the last entry (the zero) fills the gaps.
    """
    zero = 4 * n * 9 + 4
    kernel = torch.full((16, 4 * n, 3, 3), zero, dtype=torch.long)
    bias = torch.empty(16, dtype=torch.long)
    for o in range(4):  # the tail's output: sub-pixel (sy, sx) of an LR pixel
        sy, sx = divmod(o, 2)
        for dy in range(2):  # the LR pixel's place (dy, dx) in its 2x2 block
            for dx in range(2):
                k = (2 * dy + sy) * 4 + 2 * dx + sx  # HR pixel of the 4x4 block = output channel
                bias[k] = 4 * n * 9 + o
                for c in range(n):
                    for ry in range(2):  # input: feature c of LR pixel (ry, rx) of block (i+qy, j+qx)
                        for rx in range(2):
                            for qy in (-1, 0, 1):
                                for qx in (-1, 0, 1):
                                    ky, kx = 2 * qy + ry - dy, 2 * qx + rx - dx  # its LR offset from (dy, dx)
                                    if -1 <= ky <= 1 and -1 <= kx <= 1:
                                        kernel[k, 4 * c + 2 * ry + rx, qy + 1, qx + 1] = (
                                            ((o * n + c) * 3 + ky + 1) * 3 + kx + 1
                                        )
    return kernel, bias


def _nearest_index() -> torch.Tensor:
    """For each of the 16 output sub-pixel channels, the unshuffled LR channel it repeats.

    Output channel ``4*i + j`` is HR pixel (i, j) of a 4x4 block; it lies over LR pixel
    (i // 2, j // 2) of the 2x2 LR block, which is unshuffled channel ``2*(i//2) + j//2``.
    """
    return torch.tensor([2 * (i // 2) + j // 2 for i in range(4) for j in range(4)])


class QuarterResSR(nn.Module):
    """x2 luma SR: unshuffle 2 -> conv stack at quarter resolution -> shuffle 4, plus nearest residual.

    Input [N,1,H,W] in 0..1, output [N,1,2H,2W]. Odd H or W are padded by replication and the
    output is cropped back, so any size works (the deployed 640x360 needs no padding).
    """

    # Buffers, registered in __init__ (the two tail indices only with ``dense_tail``).
    nearest_index: torch.Tensor
    tail_kernel_index: torch.Tensor
    tail_bias_index: torch.Tensor

    def __init__(
        self,
        widths: tuple[int, ...] = (32, 32, 16, 16),
        reparam: bool = False,
        slope: float = NEGATIVE_SLOPE,
        lr_tail: int = 0,
        dense_tail: bool = False,
    ) -> None:
        """``widths``: output channels of the head and body convs; multiples of 16 suit
        onnxruntime's AVX-512 blocked layout (28 channels ran as slowly as 32).
        ``reparam``: train each 3x3 conv as an ECB block (no identity branch: it trained
        worse here); ``fused()`` gives the plain net for export.
        ``slope``: the LeakyReLU's negative slope; 0 makes it a ReLU, which int8 inference fuses
        into the conv (one rounding per layer instead of two, see ``srtc.training.qat``).
        ``lr_tail``: 0 for the quarter-resolution tail (a 3x3 conv to the 16 sub-pixels of each 4x4 block);
        N > 0 ends at LR resolution instead: a 1x1 conv to 4N channels, pixel shuffle 2 (N features per
        LR pixel, where the plain tail has one feature per HR pixel), then a 3x3 conv to the 4 sub-pixels
        of each LR pixel, shuffled to HR, plus the nearest residual. ``dense_tail`` (with ``lr_tail``)
        computes that tail as one quarter-resolution conv whose kernel is gathered from the same weights
        (``fused(..., dense_tail=True)``, what export uses): 4x the multiply-adds of the tail, but onnxruntime runs it
        at the speed of the other convs, where the LR-resolution conv with 4 outputs and the
        64-channel pixel shuffle ran several times slower; the learnt parameters are the same."""
        super().__init__()
        self.widths = tuple(widths)
        self.reparam = reparam
        self.slope = float(slope)
        self.lr_tail = int(lr_tail)
        self.dense_tail = bool(dense_tail and lr_tail)

        def conv(cin: int, cout: int) -> nn.Module:
            return ECB(cin, cout) if reparam else nn.Conv2d(cin, cout, 3, padding=1)

        self.head = conv(4, widths[0])
        self.body = nn.ModuleList(conv(a, b) for a, b in zip(widths[:-1], widths[1:]))
        if self.lr_tail:
            self.expand = nn.Conv2d(widths[-1], 4 * self.lr_tail, 1)
            self.tail = conv(self.lr_tail, 4)
        else:
            self.tail = conv(widths[-1], 16)
        self.register_buffer("nearest_index", _nearest_index(), persistent=False)
        if self.dense_tail:
            kernel, bias = _lr_tail_gather(self.lr_tail)
            self.register_buffer("tail_kernel_index", kernel, persistent=False)
            self.register_buffer("tail_bias_index", bias, persistent=False)
        self.shift = 0.5  # subtracted from the input; srtc.training.qat moves it onto the 1/255 grid
        start_as_nearest(self.tail)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return activate(x, self.slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
        lr4 = F.pixel_unshuffle(x, 2)
        f = self.act(self.head(lr4 - self.shift))
        for conv in self.body:
            f = self.act(conv(f))
        if self.lr_tail:
            f = self.act(self.expand(f))
            if not self.dense_tail:
                lr_f = F.pixel_shuffle(f, 2)  # [N, lr_tail, H, W]
                sub = self.tail(lr_f) + x.expand(-1, 4, -1, -1)  # each LR pixel's 4 sub-pixels, nearest residual
                return F.pixel_shuffle(sub, 2)[..., : 2 * h, : 2 * w]
            tail = cast(nn.Conv2d, self.tail)  # the dense form reads a plain conv's weights
            assert tail.bias is not None  # built with a bias
            flat = torch.cat([tail.weight.flatten(), tail.bias, tail.bias.new_zeros(1)])
            sub = F.conv2d(f, flat[self.tail_kernel_index], flat[self.tail_bias_index], padding=1)
        else:
            sub = self.tail(f)
        sub = sub + lr4.index_select(1, self.nearest_index)
        return F.pixel_shuffle(sub, 4)[..., : 2 * h, : 2 * w]


@torch.no_grad()
def fused_quarter_res(model: QuarterResSR, dense_tail: bool = False) -> QuarterResSR:
    """The plain QuarterResSR computing what ``model`` computes: ECB blocks folded into 3x3 convs.

    A plain model is returned as a copy. ``dense_tail``: an LR-resolution tail runs in its dense
    quarter-resolution form (same output, faster in onnxruntime; see ``QuarterResSR``).
    """
    plain = QuarterResSR(model.widths, slope=model.slope, lr_tail=model.lr_tail, dense_tail=dense_tail).to(
        next(model.parameters()).device
    )
    plain.shift = model.shift
    if model.lr_tail:
        plain.expand.load_state_dict(model.expand.state_dict())
    convs = [model.head, *model.body, model.tail]
    targets = [plain.head, *plain.body, plain.tail]
    for src, dst in zip(convs, targets):
        conv = src.fuse() if isinstance(src, ECB) else src
        dst.weight.copy_(conv.weight)
        dst.bias.copy_(conv.bias)
    return plain.train(model.training)
