"""Quantisation-aware fine-tuning (QAT): teach the generator onnxruntime's int8 arithmetic.

``python -m srtc.training.qat --ckpt CKPT --base NAME --out RUN --steps N [--target hr|teacher]
[--pairs CACHE] [--export src/srtc/zoo/NAME_int8.onnx --images DIRS... [--register]]``

Why: post-training QDQ quantisation of this 12.8k-parameter net loses 0.3-0.9 dB (model card,
"int8"); the loss comes from rounding activations, not weights. Here the fused (plain-conv) net
runs with every tensor that onnxruntime's QDQ graph rounds rounded the same way in the forward
pass (straight-through gradients), and is fine-tuned so that it works *through* that rounding:

- weights: symmetric, one scale per output channel = max|w| / levels: 8-bit levels (127) for the first
  conv, exported as uint8 with zero point 128, and 7-bit levels (64) for the others (see ``WMAX``);
- activations: uint8 affine per tensor, with scale and zero point learnt (LSQ) from a percentile
  start: the first conv's input (LR - 0.5), every conv output, every LeakyRelu output;
- the LR input and the output are pinned to the 1/255 grid (zero point 0): the input already
  lies on it, and the output is rounded to display levels anyway, so both roundings are free.

Export hands onnxruntime's ``quantize_static`` exactly those scales and zero points
(``TensorQuantOverrides``), so the int8 model computes what was trained. The result is gated like
any int8 variant (``srtc.training.quantize``): at most 0.1 dB below the fp32 base on every folder and
faster than it, else nothing is registered.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from .arch import NEGATIVE_SLOPE, QuarterResSR
from .evaluate import load_samples
from .export import load_checkpoint_model
from .fullres import FullResSR
from .graph import outer_scope_producers
from .loop import (
    ConfigError,
    Schedule,
    cosine_lr,
    prepare,
    run,
    settings_record,
    stage_command,
    stage_settings,
    torch_upscaler,
    validation_psnr,
)
from .losses import LOSSES
from .sources import DataConfig, load_training_data

log = logging.getLogger(__name__)

QMIN, QMAX = 0, 255  # uint8 activations
# onnxruntime's x86 kernels for uint8 activations and int8 weights (VPMADDUBSW on AVX2, and on AVX-512
# without VNNI) add two products in int16 with saturation: with 8-bit weights 2 * 255 * 127 overflows and
# the output is garbage on such CPUs. So int8 weights use only -64..64 (2 * 255 * 64 = 32640 fits), and the
# first conv, whose input is the pixels themselves and whose 36 weights per channel need their precision,
# keeps 8-bit levels but is exported with uint8 weights (zero point 128), which every kernel sums in int32.
WMAX = 64
HEAD_WMAX = 127
START_PERCENTILE = 99.99
GRID_SHIFT = 128.0 / 255.0
MAX_FALLBACK_LOSS_DB = 0.5  # a fallback stands in for bicubic (2-3 dB lower), not for the fp32 model
Generator = QuarterResSR | FullResSR


class FakeQuant(nn.Module):
    """Per-tensor uint8 affine rounding with a learnable scale and zero point (LSQ).

    The scale is learnt as its logarithm: Adam's steps are about ``lr`` in size whatever the
    gradient, so a linear scale of 0.003 would be swept away by steps of 1e-3.
    """

    def __init__(self, learn: bool = True) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor([math.log(1.0 / 255.0)]), requires_grad=learn)
        self.zero_point = nn.Parameter(torch.tensor([0.0]), requires_grad=learn)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def set_range(self, lo: float, hi: float) -> None:
        """onnxruntime's rule for a calibrated range: include 0, scale = span / 255."""
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = max(hi - lo, 1e-6) / (QMAX - QMIN)
        with torch.no_grad():
            self.log_scale.fill_(math.log(scale))
            self.zero_point.fill_(float(np.clip(round(QMIN - lo / scale), QMIN, QMAX)))

    def qparams(self) -> tuple[float, int]:
        """The (scale, zero point) onnxruntime is to use for this tensor."""
        return float(self.scale.detach()), int(np.clip(round(float(self.zero_point.detach())), QMIN, QMAX))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale
        if not self.log_scale.requires_grad:
            return torch.fake_quantize_per_tensor_affine(x, float(scale), int(self.qparams()[1]), QMIN, QMAX)
        grad_factor = 1.0 / math.sqrt(x.numel() * QMAX)  # LSQ's step-size gradient scale
        return torch._fake_quantize_learnable_per_tensor_affine(x, scale, self.zero_point, QMIN, QMAX, grad_factor)


@torch.no_grad()
def grid_shift(net: Generator) -> Generator:
    """The same net with its input shift moved from 0.5 to 128/255, the head's bias compensating.

    ``LR - 0.5`` falls halfway between the levels of any uint8 grid of step 1/255, so rounding it
    moves every input pixel by half a level (0.02 dB on Set5); ``LR - 128/255`` lies on the grid.
    Only the zero padding at the frame border sees the 0.002 difference.
    """
    delta = GRID_SHIFT - net.shift
    head = cast(nn.Conv2d, net.head)  # the fused (plain-conv) net
    assert head.bias is not None
    head.bias.add_(head.weight.sum(dim=(1, 2, 3)) * delta)
    net.shift = GRID_SHIFT
    return net


def weight_scale(w: torch.Tensor, levels: int = WMAX) -> torch.Tensor:
    """The per-output-channel step of symmetric weights: max|w| / ``levels``."""
    return (w.detach().abs().amax(dim=(1, 2, 3)) / levels).clamp_min(1e-8)


def fake_quant_weight(w: torch.Tensor, scale: torch.Tensor | None = None, levels: int = WMAX) -> torch.Tensor:
    """Per-output-channel symmetric rounding of a conv weight to -levels..levels, straight-through.

    QAT passes a fixed ``scale``: if the step followed max|w| as the weights move, every weight of
    a channel would change level whenever its largest one moved, and training would not settle.
    """
    scale = weight_scale(w, levels) if scale is None else scale
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -levels, levels)


def weight_levels(index: int) -> int:
    """How many levels each side of zero conv ``index``'s weights use (see ``WMAX``)."""
    return HEAD_WMAX if index == 0 else WMAX


class QuantSR(nn.Module):
    """A plain generator (QuarterResSR or FullResSR) run with onnxruntime's QDQ rounding at the same tensors.

    The tensors: the first conv's input, then for each conv its output and (all but the last)
    its LeakyRelu output; the input and the residual sum are fixed. With ReLU (``slope`` 0)
    onnxruntime folds the activation into the conv, so there is one rounding per conv, of the
    ReLU's output, over a range that starts at 0 and so spends all 256 levels on what is kept.

    ``float_tail`` keeps the last that many convs in float: their weights, their outputs, the
    activation that feeds the first of them and the residual sum are not rounded (the export keeps
    those nodes out of the int8 graph). The end of the net is where a rounding has no later layer
    to absorb it, and for the 32-feature nets the tail's convs are a small share of the work.
    """

    def __init__(self, net: Generator, float_tail: int = 0) -> None:
        super().__init__()
        self.full_res = bool(getattr(net, "full_res", False))
        if getattr(net, "reparam", False):
            raise ValueError("QAT needs the fused (plain-conv) net: pass srtc.training.arch.fused(model)")
        self.net = grid_shift(net)
        convs = self.convs()
        if not 0 <= float_tail < len(convs):
            raise ValueError(
                f"float_tail must be 0..{len(convs) - 1} (the net has {len(convs)} convs), got {float_tail}"
            )
        self.float_tail = float_tail
        self.q_input = FakeQuant(learn=False)
        self.q_shifted = FakeQuant(learn=False)
        self.q_conv = nn.ModuleList(FakeQuant() for _ in convs)
        self.relu = self.net.slope == 0
        self.q_act = nn.ModuleList(FakeQuant() for _ in ([] if self.relu else convs[:-1]))
        self.q_output = FakeQuant(learn=False)
        for i, conv in enumerate(convs):  # fixed weight grids, handed to onnxruntime at export
            self.register_buffer(f"w_scale{i}", weight_scale(conv.weight, weight_levels(i)))
        self.quantize = True
        self.record: dict[str, list[torch.Tensor]] | None = None  # start_ranges() collects conv outputs here

    def convs(self) -> list[nn.Conv2d]:
        mix = getattr(self.net, "mix", None)  # a full-resolution net's 1x1 mixing conv, when it has one
        return [self.net.head, *self.net.body, self.net.tail, *([mix] if mix is not None else [])]

    def weight_scales(self) -> list[torch.Tensor]:
        return [getattr(self, f"w_scale{i}") for i in range(len(self.convs()))]

    def int8_convs(self) -> int:
        """How many convs, from the first, run in int8 (the rest are the float tail)."""
        return len(self.convs()) - self.float_tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.quantize
        h, w = x.shape[-2], x.shape[-1]
        x = self.q_input(x) if q else x
        if self.full_res:  # features at LR resolution, the input itself is the residual
            base = x.expand(-1, 4, -1, -1)
            f = x - self.net.shift
        else:  # features at quarter resolution, each sub-pixel channel adds the LR channel it lies over
            x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
            lr4 = F.pixel_unshuffle(x, 2)
            base = lr4.index_select(1, cast(torch.Tensor, self.net.nearest_index))
            f = lr4 - self.net.shift
        f = self.q_shifted(f) if q else f
        rounded = self.points() if q else {}  # the float tail's tensors are not among them
        convs, scales, n_int8 = self.convs(), self.weight_scales(), self.int8_convs()
        for i, conv in enumerate(convs):
            weight = fake_quant_weight(conv.weight, scales[i], weight_levels(i)) if q and i < n_int8 else conv.weight
            f = F.conv2d(f, weight, conv.bias, padding=conv.padding)
            hidden = i < len(convs) - 1
            if hidden and self.relu:
                f = F.relu(f)  # onnxruntime folds a ReLU into the conv's output rounding
            if self.record is not None:
                self.record.setdefault(f"conv{i}", []).append(f.detach().flatten()[:: max(1, f.numel() // 200_000)])
            f = rounded[f"conv{i}"](f) if f"conv{i}" in rounded else f
            if hidden and not self.relu:
                f = F.leaky_relu(f, self.net.slope)
                f = rounded[f"act{i}"](f) if f"act{i}" in rounded else f
        sub = f + base
        sub = rounded["output"](sub) if "output" in rounded else sub
        if self.full_res:
            return F.pixel_shuffle(sub, 2)
        return F.pixel_shuffle(sub, 4)[..., : 2 * h, : 2 * w]

    def points(self) -> dict[str, FakeQuant]:
        """Every rounding point by role: input, shifted, conv{i}, act{i}, output (those the float tail
        leaves unrounded are not listed)."""
        n_int8 = self.int8_convs()
        out = {"input": self.q_input, "shifted": self.q_shifted}
        if not self.float_tail:
            out["output"] = self.q_output
        out.update({f"conv{i}": cast(FakeQuant, q) for i, q in enumerate(self.q_conv) if i < n_int8})
        out.update(
            {f"act{i}": cast(FakeQuant, q) for i, q in enumerate(self.q_act) if i + 1 < n_int8}
        )  # an int8 conv's input
        return out


@torch.no_grad()
def start_ranges(qmodel: QuantSR, batches: list[torch.Tensor], percentile: float = START_PERCENTILE) -> None:
    """Initial ranges from the float net's activations on real inputs (percentile, as the sweep's best).

    The input and the output are set to 0..1 (the 1/255 grid) whatever the data.
    """
    qmodel.quantize, qmodel.record = False, {}
    for x in batches:
        qmodel(x)
    seen, qmodel.quantize, qmodel.record = qmodel.record, True, None
    lo_q, hi_q = (100.0 - percentile) / 100.0, percentile / 100.0
    for name, values in seen.items():
        v = torch.cat(values)
        lo, hi = float(torch.quantile(v, lo_q)), float(torch.quantile(v, hi_q))
        i = int(name[4:])
        cast(FakeQuant, qmodel.q_conv[i]).set_range(lo, hi)
        if i < len(qmodel.q_act):  # the LeakyRelu of this conv output
            cast(FakeQuant, qmodel.q_act[i]).set_range(lo * qmodel.net.slope if lo < 0 else lo, hi)
    qmodel.q_shifted.set_range(-GRID_SHIFT, 1.0 - GRID_SHIFT)  # scale 1/255, zero point 128: exact
    qmodel.q_input.set_range(0.0, 1.0)
    qmodel.q_output.set_range(0.0, 1.0)


# ---------------------------------------------------------------- export


def onnx_points(model: onnx.ModelProto) -> dict[str, str]:
    """The tensor name of each rounding point in an exported generator graph (found by structure)."""
    nodes = list(model.graph.node)
    convs = [n for n in nodes if n.op_type == "Conv"]
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    points = {"input": model.graph.input[0].name, "shifted": convs[0].input[0]}
    for i, conv in enumerate(convs):
        points[f"conv{i}"] = conv.output[0]
        for nxt in consumers.get(conv.output[0], []):
            if nxt.op_type == "LeakyRelu":
                points[f"act{i}"] = nxt.output[0]
            elif nxt.op_type == "Relu":  # folded into the conv: the rounding is of the ReLU's output
                points[f"conv{i}"] = nxt.output[0]
            elif nxt.op_type == "Add":
                points["output"] = nxt.output[0]
    return points


def residual_tensor(model: onnx.ModelProto) -> str | None:
    """The tensor the last conv's output is added to: the LR pixels themselves (a gather or copy of the
    input), which onnxruntime's quantiser would otherwise round on a range calibrated from frames."""
    nodes = list(model.graph.node)
    last = [n for n in nodes if n.op_type == "Conv"][-1].output[0]
    add = next((n for n in nodes if n.op_type == "Add" and last in n.input), None)
    return None if add is None else next(i for i in add.input if i != last)


def quant_overrides(qmodel: QuantSR, model: onnx.ModelProto) -> dict[str, list[dict]]:
    """``TensorQuantOverrides`` giving onnxruntime the trained scale and zero point of every point."""
    names = onnx_points(model)
    missing = set(qmodel.points()) - set(names)
    if missing:
        raise ValueError(f"rounding points not found in the ONNX graph: {sorted(missing)}")
    out = {}
    for role, fq in qmodel.points().items():
        scale, zero = fq.qparams()
        out[names[role]] = [{"scale": np.array(scale, np.float32), "zero_point": np.array(zero, np.uint8)}]
    residual = residual_tensor(model)
    if residual is not None and residual not in out and not qmodel.float_tail:  # the input's 1/255 grid, as simulated
        out[residual] = out[names["input"]]
    convs = [n for n in model.graph.node if n.op_type == "Conv"][: qmodel.int8_convs()]
    for conv, scales in zip(convs, qmodel.weight_scales()):  # per channel: one dict per output channel
        out[conv.input[1]] = [
            {"scale": np.array(v, np.float32), "zero_point": np.array(0, np.int8), "axis": 0} for v in scales.tolist()
        ]
    return out


def float_nodes(qmodel: QuantSR, model: onnx.ModelProto) -> list[str]:
    """The nodes the int8 graph keeps in float for ``qmodel.float_tail``: the tail's convs, the
    activations that feed them, and everything after the last conv with the residual branch."""
    if not qmodel.float_tail:
        return []
    from .quantize import excluded_nodes

    nodes = list(model.graph.node)
    convs = [n for n in nodes if n.op_type == "Conv"]
    float_convs = convs[qmodel.int8_convs() :]
    feeds = {i for conv in convs[qmodel.int8_convs() - 1 :] for i in conv.output}
    acts = [n for n in nodes if n.op_type in ("LeakyRelu", "Relu") and n.input[0] in feeds]
    return sorted({n.name for n in float_convs + acts} | set(excluded_nodes(model, ("residual",))))


@torch.no_grad()
def clamped_net(qmodel: QuantSR) -> Generator:
    """A copy of the net with each int8 conv's weights clamped to the range the simulation rounds them to.

    The weight steps are fixed when QAT starts; a weight that grows past ``levels`` steps during training is
    clamped by the simulation, and must be here too, or onnxruntime would store it beyond that range (and,
    past 64, on a CPU without VNNI, overflow; see ``WMAX``)."""
    net = copy.deepcopy(qmodel.net)
    convs = [net.head, *net.body, net.tail, *([net.mix] if getattr(net, "mix", None) is not None else [])]
    for i, (conv, scale) in enumerate(zip(convs[: qmodel.int8_convs()], qmodel.weight_scales())):
        bound = (scale * weight_levels(i))[:, None, None, None]
        conv.weight.copy_(torch.maximum(torch.minimum(conv.weight, bound), -bound))
    return net


def export_int8(qmodel: QuantSR, out: Path, calibration: list[np.ndarray]) -> Path:
    """Write the QDQ int8 ONNX of ``qmodel`` with its trained ranges (calibration only fills the rest)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .export import export_onnx
    from .quantize import (
        SAFE_WEIGHT_LEVEL,
        LumaReader,
        saturating_convs,
        widen_first_conv,
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx"
        export_onnx(clamped_net(qmodel), fp32)
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        graph = onnx.load(str(pre))
        quantize_static(
            str(pre),
            str(out),
            LumaReader(calibration, graph.graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=outer_scope_producers(graph) + float_nodes(qmodel, graph),
            extra_options={"WeightSymmetric": True, "TensorQuantOverrides": quant_overrides(qmodel, graph)},
        )
    widen_first_conv(out)
    risky = saturating_convs(onnx.load(str(out)))
    if risky:
        raise ValueError(f"{out}: int8 weights beyond -{SAFE_WEIGHT_LEVEL}..{SAFE_WEIGHT_LEVEL} in {risky}")
    return out


# ---------------------------------------------------------------- training


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="stage-1 or stage-2 checkpoint (.pt) of the fp32 model")
    ap.add_argument("--base", required=True, help="manifest name of that fp32 model (the gate's reference)")
    ap.add_argument("--out", required=True, help="run folder (last.pt, resumable; best.pt by validation)")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument(
        "--target",
        choices=("hr", "teacher"),
        default="hr",
        help="hr: L1 to the HR patch (fidelity); teacher: L1 to the fp32 model's own output (keeps a GAN model's look)",
    )
    ap.add_argument(
        "--loss",
        choices=("l1", "mse"),
        default=None,
        help="default: l1 against hr, mse against the teacher (PSNR is an MSE measure)",
    )
    ap.add_argument("--data", default="../shared/data/train", help="HR images for clean pairs")
    ap.add_argument("--pairs", default=None, help="a codec-aware pair cache (srtc.training.degrade) instead of --data")
    ap.add_argument("--val", default="../shared/data/benchmarks/Set5", help="validation folder ('' to skip)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of the weights")
    ap.add_argument("--range-lr", type=float, default=1e-3, help="peak learning rate of scales and zero points")
    ap.add_argument("--min-lr", type=float, default=1e-6)
    ap.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="steps of linear learning-rate warm-up (default: 10%% of --steps, at most 500)",
    )
    ap.add_argument("--val-every", type=int, default=1000)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit-images", type=int, default=None, help="use only the first N images (tests)")
    ap.add_argument("--export", default=None, help="write the int8 ONNX here after training")
    ap.add_argument("--images", nargs="*", default=[], help="benchmark folders for the gate (with --export)")
    ap.add_argument(
        "--register",
        action="store_true",
        help="list the int8 model in the manifest, named after the --export file, if it passes",
    )
    ap.add_argument(
        "--register-fallback",
        action="store_true",
        help="if it misses the variant gate but passes the fallback gate (faster, at most "
        f"{MAX_FALLBACK_LOSS_DB} dB lost), list it as the base model's fallback: the server's "
        "step down under load before bicubic",
    )
    ap.add_argument(
        "--float-tail",
        type=int,
        default=0,
        help="keep the last N convs (and the activation feeding them) in float: the end of the net "
        "has no later layer to absorb a rounding, and in the 32-feature full-resolution nets "
        "its convs are a small share of the work",
    )
    ap.add_argument(
        "--temporal",
        type=float,
        default=0.0,
        help="weight of a temporal term (needs --pairs with clips): the loss between the int8 net's "
        "frame-to-frame change and the target's (the fp32 net's with --target teacher), on "
        "consecutive coded frames; int8 rounding flickers in flat areas where the fp32 net does not",
    )
    ap.add_argument("--temporal-batch", type=int, default=16, help="clip patch pairs per step for --temporal")
    ap.add_argument("--calib-frames", type=int, default=8, help="decoded frames for tensors without a trained range")
    return ap


@dataclass(frozen=True)
class QatConfig:
    """Quantisation-aware fine-tuning's settings, checked at the edge (:meth:`from_args`)."""

    schedule: Schedule
    data: DataConfig
    ckpt: str  # the fp32 model's checkpoint
    base: str  # its manifest name (the gate's reference)
    target: str = "hr"  # hr: the HR patch; teacher: the fp32 model's own output
    loss: str = "l1"
    val: str = "../shared/data/benchmarks/Set5"
    lr: float = 1e-4
    range_lr: float = 1e-3
    min_lr: float = 1e-6
    warmup: int = 0
    export: str | None = None
    images: tuple[str, ...] = ()
    register: bool = False
    register_fallback: bool = False
    float_tail: int = 0
    calib_frames: int = 8

    def __post_init__(self) -> None:
        if self.target not in ("hr", "teacher") or self.loss not in ("l1", "mse"):
            raise ConfigError(f"--target must be hr or teacher and --loss l1 or mse, got {self.target}, {self.loss}")
        if self.warmup < 0 or self.float_tail < 0 or self.calib_frames < 1:
            raise ConfigError("--warmup and --float-tail must be >= 0, --calib-frames >= 1")
        if (self.register or self.register_fallback) and not (self.export and self.images):
            raise ConfigError("--register and --register-fallback need --export and --images (the gate's folders)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> QatConfig:
        schedule = Schedule(Path(args.out), args.steps, val_every=args.val_every, save_every=args.save_every,
                            seed=args.seed, threads=args.threads, resume=args.resume)  # fmt: skip
        data = DataConfig(args.data, args.pairs, args.patch, args.batch, args.limit_images,
                          temporal=args.temporal, temporal_batch=args.temporal_batch)  # fmt: skip
        own = stage_settings(cls, args)
        own["loss"] = args.loss or ("mse" if args.target == "teacher" else "l1")  # PSNR is an MSE measure
        own["warmup"] = min(500, args.steps // 10) if args.warmup is None else args.warmup
        own["images"] = tuple(args.images)
        return cls(schedule, data, **own)


def parse_config(argv: list[str]) -> QatConfig:
    """The command line's settings; :class:`ConfigError` when they do not fit together."""
    return QatConfig.from_args(make_parser().parse_args(argv))


class QatStage:
    """Quantisation-aware fine-tuning for the loop: the net with int8 rounding simulated (on the CPU, where
    it runs), its trained ranges, and the fp32 net as teacher."""

    label = "qat"
    headline = "loss"

    def __init__(self, cfg: QatConfig) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.schedule.seed)
        net, _ = load_checkpoint_model(cfg.ckpt)
        self.teacher = copy.deepcopy(net).eval().requires_grad_(False)
        self.qmodel = QuantSR(cast(Generator, net.train()), cfg.float_tail)
        self.data = load_training_data(cfg.data, cfg.schedule.seed)
        weights = list(self.qmodel.net.parameters())
        ranges = [p for n, p in self.qmodel.named_parameters() if n.startswith("q_") and p.requires_grad]
        self.opt = torch.optim.Adam([{"params": weights, "peak": cfg.lr}, {"params": ranges, "peak": cfg.range_lr}])
        self.val = load_samples(cfg.val) if cfg.val else []
        self.val_name = f"int8-simulated {Path(cfg.val).name}"
        self.loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
            F.mse_loss if cfg.loss == "mse" else LOSSES["l1"]
        )
        self.start_psnr = math.nan

    def state(self) -> dict[str, Any]:
        return {"qmodel": self.qmodel.state_dict(), "config": qmodel_config(self.qmodel),
                "optimizer": self.opt.state_dict()}  # fmt: skip

    def load(self, ckpt: dict[str, Any]) -> None:
        self.qmodel.load_state_dict(ckpt["qmodel"])
        self.opt.load_state_dict(ckpt["optimizer"])

    def begin(self) -> float | None:
        """Ranges from a few batches, then the fp32 and the simulated int8 scores the run starts from."""
        start_ranges(self.qmodel, [self.data.sample(self.cfg.data.batch, self.rng)[0] for _ in range(8)])
        if not self.val:
            return None
        self.qmodel.quantize = False
        log.info("fp32 start: %s PSNR-Y %.3f dB", Path(self.cfg.val).name, self.validate())
        self.qmodel.quantize = True
        self.start_psnr = self.validate() or math.nan
        log.info("int8 simulated before QAT: %.3f dB", self.start_psnr)
        return self.start_psnr

    def set_rates(self, step: int, total: int) -> None:
        for group in self.opt.param_groups:
            group["lr"] = warmup_factor(step, self.cfg.warmup) * cosine_lr(step, total, group["peak"], self.cfg.min_lr)

    def step(self) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        lr_b, hr_b = self.data.sample(cfg.data.batch, self.rng)
        if cfg.target == "teacher":
            with torch.no_grad():
                hr_b = self.teacher(lr_b)
        loss = self.loss_fn(self.qmodel(lr_b), hr_b)
        if cfg.data.temporal:
            teacher = self.teacher if cfg.target == "teacher" else None
            loss = loss + cfg.data.temporal * change_loss(self.qmodel, teacher, self.data, cfg.data.temporal_batch,
                                                          self.rng, self.loss_fn)  # fmt: skip
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def validate(self) -> float | None:
        return validation_psnr(self.qmodel, self.val, torch.device("cpu"))


def qat(cfg: QatConfig, command: str = "") -> dict:
    """Fine-tune with int8 rounding simulated; returns the QuantSR, the losses, and the simulated
    validation PSNR before the first step (``start_psnr``, NaN on resume) and at its best."""
    prepare(cfg.schedule)
    stage = QatStage(cfg)
    result = run(stage, cfg.schedule, settings_record(cfg), command)
    return {"qmodel": stage.qmodel, "losses": [r["loss"] for r in result.records], "start_psnr": stage.start_psnr,
            "best_psnr": result.best_psnr, "wall_s": result.wall_s}  # fmt: skip


def warmup_factor(step: int, warmup: int) -> float:
    """Linear ramp of the learning rate over the first ``warmup`` steps.

    Adam's first steps move every parameter by about the learning rate, whatever its gradient, because
    its second-moment estimate rests on a few batches. A converged net pushed that way at full rate
    loses quality before it regains it: a 150-step run at 3e-4 dipped 1 dB on Set5 at step 25 (on an
    AVX2 CPU; the same run on AVX-512 rounds a little differently and did not dip) and ended 0.6 dB
    below its start when the dip fell on its end.
    """
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def change_loss(
    qmodel: QuantSR, teacher: nn.Module | None, data, batch: int, rng: np.random.Generator, loss_fn
) -> torch.Tensor:
    """``loss_fn`` between the int8 net's change from one coded frame to the next and the target's: the HR's,
    or the fp32 ``teacher``'s when given (what QAT should keep is the fp32 net's own steadiness)."""
    lr, hr = data.sample_temporal(batch, rng)
    b, _, h, w = lr.shape
    frames = lr.reshape(2 * b, 1, h, w)
    sr = qmodel(frames).reshape(b, 2, *hr.shape[-2:])
    if teacher is not None:
        with torch.no_grad():
            hr = teacher(frames).reshape(b, 2, *hr.shape[-2:])
    return loss_fn(sr[:, 1] - sr[:, 0], hr[:, 1] - hr[:, 0])


def qmodel_config(qmodel: QuantSR) -> dict:
    """What a QAT checkpoint records to rebuild its net's shape (``load_qmodel``)."""
    net = qmodel.net
    config = {
        "widths": list(net.widths),
        "slope": net.slope,
        "full_res": qmodel.full_res,
        "float_tail": qmodel.float_tail,
    }
    if getattr(net, "mix_width", 0):
        config["mix"] = net.mix_width
    return config


def load_qmodel(path: str | Path) -> QuantSR:
    """A QuantSR from a QAT checkpoint (``last.pt`` or ``best.pt``)."""
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    config = ckpt["config"]
    slope = config.get("slope", NEGATIVE_SLOPE)
    net: Generator
    if config.get("full_res"):
        net = FullResSR(tuple(config["widths"]), slope=slope, mix=config.get("mix", 0))
    else:
        net = QuarterResSR(tuple(config["widths"]), slope=slope)
    qmodel = QuantSR(net, config.get("float_tail", 0))
    qmodel.load_state_dict(ckpt["qmodel"])
    return qmodel.eval()


def export_and_gate(qmodel: QuantSR, args: QatConfig, command: str) -> bool:
    """Export int8, compare with the fp32 base (PSNR per folder, speed), register if it passes."""
    from srtc.zoo import resolve

    from . import quantize as Q

    assert args.export is not None, "export_and_gate runs with --export"
    out = Path(args.export)
    calib = Q.calibration_lumas(args.calib_frames, 0)
    export_int8(qmodel, out, calib)
    agree = simulation_agreement(qmodel, out, calib[0])
    log.info("wrote %s; onnxruntime int8 vs torch simulation on a decoded frame: %.1f dB", out, agree)
    if not args.images:
        return False
    base_path = resolve(args.base)
    ref = Q.Result("fp32", Q.measure_psnr(base_path, list(args.images)))
    res = Q.Result("qat int8", Q.measure_psnr(out, list(args.images)))
    speed = Q.measure_speed({"fp32": base_path, "qat int8": out})
    ref.ms, res.ms = speed["fp32"], speed["qat int8"]
    log.info("%s (QAT) vs fp32 %s:\n%s", out, args.base, Q.table([res], ref))
    ok, why = Q.qualifies(res, ref)
    if not ok:
        log.warning("int8 model does not qualify as a variant: %s; not registered as one", why)
        fallback_ok, why = Q.qualifies(res, ref, MAX_FALLBACK_LOSS_DB)
        if args.register_fallback and fallback_ok:
            register_fallback(args.base, out, res, ref, command)
        elif args.register_fallback:
            log.warning("nor as a fallback: %s", why)
        return False
    if args.register:
        Q.register(
            out.stem,
            out,
            args.base,
            Q.Variant("quantisation-aware fine-tuned, trained ranges", per_channel=True),
            command,
        )
    return True


def register_fallback(base: str, out: Path, res, ref, command: str) -> None:
    """List ``out`` (under its file's stem, ``BASE_int8`` by convention) with role "fallback" and point the
    base's ``"fallback"`` at it.

    Not an int8 *variant* (it misses the 0.1 dB gate): the server only runs it for the frames the
    governor would otherwise send as bicubic, and the manifest entry says how much it loses.
    """
    from srtc.zoo import MANIFEST_PATH, load_manifest

    from .export import update_manifest

    manifest = load_manifest()
    src = manifest["models"][base]
    try:
        file = out.resolve().relative_to(MANIFEST_PATH.parent)
    except ValueError as err:
        raise ConfigError(f"--export must lie inside {MANIFEST_PATH.parent} to be registered") from err
    losses = ", ".join(f"{k} {res.psnr[k] - ref.psnr[k]:+.2f} dB" for k in ref.psnr)
    name = out.stem
    update_manifest(
        name,
        {
            "file": file.as_posix(),
            "kind": src.get("kind", "fidelity"),
            "precision": "int8",
            "role": "fallback",
            "reference": base,
            "params": src["params"],
            "scale": src.get("scale", 2),
            "description": f"{base}'s int8 build (quantisation-aware, 7-bit weights): {losses} against fp32; "
            "the governor's step down under load.",
            "command": command,
        },
        make_default=False,
    )
    manifest = load_manifest()
    manifest["models"][base]["fallback"] = name
    update_manifest(base, manifest["models"][base], make_default=False)
    log.info("manifest: %s is %s's fallback (%s)", name, base, losses)


@torch.no_grad()
def simulation_agreement(qmodel: QuantSR, path: Path, luma: np.ndarray) -> float:
    """PSNR (dB, display levels) between the int8 ONNX output and the torch simulation on one frame."""
    from .evaluate import onnx_upscaler, to_display
    from .imaging import psnr

    sim = torch_upscaler(qmodel.eval(), torch.device("cpu"))(luma)
    real = onnx_upscaler(path, threads=2)(luma)
    return psnr(to_display(real), to_display(sim), 0)


def qat_and_export(cfg: QatConfig, command: str) -> dict:
    """The fine-tuning, then (with ``--export``) the int8 file, its gate and its registration."""
    result = qat(cfg, command)
    if cfg.export:
        # The end of the schedule, not the best validation step: Set5 is also what the gate measures.
        export_and_gate(result["qmodel"].eval(), cfg, command)
    return result


def main(argv: list[str] | None = None) -> None:
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)
    stage_command("srtc.training.qat", make_parser, QatConfig.from_args, qat_and_export, argv)


if __name__ == "__main__":
    main()
