"""Deepen a trained full-resolution generator by one body conv that starts as the identity.

Why: the peer-class model (M3C32) levelled off at 37.31 dB on Set5 after five hours on one core;
one more 32->32 conv is the next step up (ECBSR and ETDS gain about 0.07 dB per body conv at
C32), but training M4C32 from scratch on two cores would take the whole session again. Starting
from the trained net with the new conv as the identity keeps what it learnt (Net2DeeperNet, Chen
et al. 2016), so the fine-tune only has to teach the new layer.

The activation after the new conv is the catch: its input is already LeakyReLU(0.1)'s output, so a
plain identity scales the negative side twice (0.01 instead of 0.1), and the M3C32 parent fell from
37.31 to 35.56 dB on Set5. ``offset`` avoids that: the new conv adds a constant ``c`` to every feature,
which lifts them all above zero, where the activation is the identity, and the next conv's bias takes
``c`` off again. Exact inside the image, but the next conv's zero padding at the border differs by ``c``:
the features reach -4 on Set14, and offsets of 0.5 / 1 / 2 started at 36.63 / 36.52 / 34.72 dB, no
better. So the default is the plain identity (offset 0), which also lets the new conv use its
nonlinearity from the first step; the fine-tune recovers the rest (docs/MODELS.md).

In the ECB training form every branch keeps its random initialisation (so each gets gradients from
the first step) and the plain 3x3 branch absorbs the difference, which makes the sum exactly the
identity kernel.
"""

from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path
from typing import cast

import torch
from torch import nn

from .arch import FullResSR, build, checkpoint_generator
from .reparam import ECB

log = logging.getLogger(__name__)


@torch.no_grad()
def set_identity(conv: nn.Module, offset: float = 0.0) -> None:
    """Make a square 3x3 conv (plain or ECB) compute its input unchanged, plus ``offset``."""
    conv = cast("ECB | nn.Conv2d", conv)  # a generator's 3x3 conv is one or the other
    cout, cin = (conv.cout, conv.cin) if isinstance(conv, ECB) else (conv.out_channels, conv.in_channels)
    if cout != cin:
        raise ValueError(f"an identity conv needs as many outputs as inputs, got {cin}->{cout}")
    eye = torch.zeros(cout, cin, 3, 3)
    eye[:, :, 1, 1] = torch.eye(cout)
    if isinstance(conv, ECB):
        w, b = conv.weight_bias()
        assert conv.conv3.bias is not None  # built with a bias
        conv.conv3.weight += eye.to(w) - w
        conv.conv3.bias += offset - b
    else:
        assert conv.bias is not None  # built with a bias
        conv.weight.copy_(eye.to(conv.weight))
        conv.bias.fill_(offset)


@torch.no_grad()
def subtract_input_offset(conv: nn.Module, offset: float) -> None:
    """Change a 3x3 conv's bias so that it gives on ``x + offset`` what it gave on ``x`` (zero padding aside)."""
    conv = cast("ECB | nn.Conv2d", conv)  # a generator's 3x3 conv is one or the other
    w = conv.weight_bias()[0] if isinstance(conv, ECB) else conv.weight
    bias = conv.conv3.bias if isinstance(conv, ECB) else conv.bias
    assert bias is not None  # every conv is built with a bias
    bias -= offset * w.sum((1, 2, 3))


def deepen(ckpt: dict, at: int, seed: int = 0, offset: float = 0.0) -> dict:
    """A checkpoint of the net in ``ckpt`` with an identity body conv inserted before body conv ``at``
    (0 = right after the head; len(body) = right before the tail). Optimiser and schedule are dropped:
    the result is for ``srtc.training.train --init``. ``offset``: see the module's docstring (0: a plain identity)."""
    config = dict(ckpt["config"])
    if not config.get("full_res"):
        raise ValueError("deepen works on the full-resolution generator (config full_res); this one is not")
    widths = list(config["widths"])
    if not 0 <= at <= len(widths) - 1:
        raise ValueError(f"--at must be in 0..{len(widths) - 1} (body convs: {len(widths) - 1}), got {at}")
    width = widths[at]  # the new conv maps the features at that point to as many: the neighbours are unchanged
    # Both are FullResSR: the config is a full-resolution one (checked above).
    parent = cast(FullResSR, checkpoint_generator(ckpt))  # the weights export would ship (EMA ones when there are any)
    config["widths"] = widths[: at + 1] + [width] + widths[at + 1 :]
    torch.manual_seed(seed)
    child = cast(FullResSR, build(config))
    child.head.load_state_dict(parent.head.state_dict())
    for i, conv in enumerate(parent.body):
        child.body[i if i < at else i + 1].load_state_dict(conv.state_dict())
    child.tail.load_state_dict(parent.tail.state_dict())
    if parent.mix is not None:
        assert child.mix is not None  # the same config, hence the same mix width
        child.mix.load_state_dict(parent.mix.state_dict())
    child.shift = parent.shift
    set_identity(child.body[at], offset)
    if offset:
        subtract_input_offset(child.body[at + 1] if at + 1 < len(child.body) else child.tail, offset)
    out = {key: copy.deepcopy(ckpt[key]) for key in ("command", "history") if key in ckpt}
    out.update(
        config=config,
        model=child.state_dict(),
        step=0,
        grown_from={"config": ckpt["config"], "step": ckpt.get("step", 0), "inserted_at": at},
    )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="a full-resolution generator checkpoint (srtc.training.train's)")
    ap.add_argument(
        "--out", required=True, help="where to write the deeper checkpoint (for srtc.training.train --init)"
    )
    ap.add_argument(
        "--at",
        type=int,
        default=-1,
        help="insert before this body conv (0: after the head); default: the middle of the body",
    )
    ap.add_argument(
        "--offset",
        type=float,
        default=0.0,
        help="constant the new conv adds and the next one removes, so the activation between them "
        "starts as the identity (0: a plain identity kernel; see the docstring)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seeds the new block's ECB branches")
    ap.add_argument(
        "--val", default="../shared/data/benchmarks/Set5", help="folder to score parent and grown model on ('' to skip)"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    path = Path(args.ckpt)
    if not path.is_file():
        raise SystemExit(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    body = len(ckpt["config"]["widths"]) - 1
    at = body // 2 + 1 if args.at < 0 else args.at
    try:
        grown = deepen(ckpt, at, args.seed, args.offset)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(grown, args.out)
    log.info(
        "%s -> %s: widths %s -> %s (identity conv at body position %d)",
        path,
        args.out,
        ckpt["config"]["widths"],
        grown["config"]["widths"],
        at,
    )
    if args.val:
        from .evaluate import load_samples
        from .loop import validation_psnr

        samples = load_samples(args.val)
        for name, c in (("parent", ckpt), ("grown", grown)):
            psnr = validation_psnr(checkpoint_generator(c), samples, torch.device("cpu"))
            log.info("%s on %s: %.3f dB", name, args.val, psnr)


if __name__ == "__main__":
    main()
