"""Train the x2 luma generator on random patches, validating PSNR-Y on Set5.

``python -m srtc.training.train --data ../shared/data/train --out runs/NAME --steps N --seed S [--resume]``

Writes ``last.pt`` (every ``--save-every`` steps and at the end; ``--resume`` continues from it
with the same data order) and ``best.pt`` (best validation PSNR-Y) into ``--out``.
L1 (or Charbonnier) loss, Adam, cosine learning-rate decay to ``--min-lr``.
This is stage 1 (fidelity). ``--reparam`` trains the ECB re-parameterised form (``srtc.training.reparam``);
its checkpoints export as the plain net. Stage 2, adversarial fine-tuning from a stage-1
checkpoint, is ``python -m srtc.training.gan --init OUT/last.pt`` (see that module).
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .arch import build, count_macs, count_params, fused
from .data import DevicePatches, PatchPairs
from .evaluate import evaluate, load_samples
from .losses import temporal_change

log = logging.getLogger(__name__)


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Smooth L1 variant: behaves like L1 away from zero, differentiable at zero."""
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()


LOSSES = {"l1": F.l1_loss, "charbonnier": charbonnier, "mse": F.mse_loss}  # mse: a PSNR-oriented fine-tune


def temporal_loss(
    model: torch.nn.Module, data, batch: int, rng: np.random.Generator, device: torch.device
) -> torch.Tensor:
    """``srtc.training.losses.temporal_change`` of ``model`` on a batch of consecutive coded frames (``data``: a
    ``CodecPatchPairs``, whose clip pairs keep the frame before)."""
    lr, hr = data.sample_temporal(batch, rng)
    b, _, h, w = lr.shape
    sr = model(lr.to(device).reshape(2 * b, 1, h, w)).reshape(b, 2, *hr.shape[-2:])
    return temporal_change(sr, hr.to(device))


def cosine_lr(step: int, total: int, peak: float, floor: float) -> float:
    """Cosine decay from ``peak`` at step 0 to ``floor`` at ``total``."""
    t = min(step / max(total, 1), 1.0)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * t))


def torch_upscaler(model: torch.nn.Module, device: torch.device):
    """Wrap the torch model in the evaluation's uint8-luma -> 0..1 interface."""

    @torch.no_grad()
    def run(lr_y: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(lr_y.astype(np.float32) / 255.0)[None, None].to(device)
        return model(x)[0, 0].float().cpu().numpy()

    return run


def annealed_slope(step: int, steps: int, final: float, start: float = 0.1) -> float:
    """LeakyReLU slope moved linearly from ``start`` to ``final`` over ``steps`` steps, then held."""
    return final + (start - final) * max(0.0, 1.0 - step / steps)


def parse_widths(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default="../shared/data/train", help="folder of HR training images (searched recursively)"
    )
    ap.add_argument(
        "--pairs",
        default=None,
        help="train on a codec-aware pair cache made by `python -m srtc.training.degrade` instead of --data",
    )
    ap.add_argument(
        "--teacher",
        default=None,
        help="distil: a published x2 peer file (e.g. ../shared/peers/etds/ETDS_M7C48_x2.pth) whose "
        "output on each training LR is blended into the target (srtc.training.teacher)",
    )
    ap.add_argument(
        "--teacher-weight",
        type=float,
        default=0.5,
        help="share of the teacher's output in the target (0..1; the rest is the real HR)",
    )
    ap.add_argument("--val", default="../shared/data/benchmarks/Set5", help="validation folder ('' to skip)")
    ap.add_argument("--out", required=True, help="run folder for checkpoints")
    ap.add_argument("--steps", type=int, default=0, help="total optimisation steps (or --minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument(
        "--init",
        default=None,
        help="start from this checkpoint's weights (same --widths/--reparam), e.g. to fine-tune on --pairs",
    )
    ap.add_argument("--widths", type=parse_widths, default=(32, 32, 16, 16), help="conv widths, e.g. 32,32,16,16")
    ap.add_argument(
        "--reparam", action="store_true", help="train each 3x3 conv as an ECB block (fused into plain convs for export)"
    )
    ap.add_argument(
        "--full-res",
        action="store_true",
        help="the full-resolution generator (srtc.training.fullres; --widths are its head and body widths, "
        "e.g. 16,16,16,16,16,16,16): the fidelity model's shape, 4x the multiply-adds per parameter",
    )
    ap.add_argument(
        "--lr-tail",
        type=int,
        default=0,
        help="end at LR resolution with this many features per LR pixel (srtc.training.arch; 0: the "
        "quarter-resolution tail)",
    )
    ap.add_argument(
        "--mix",
        type=int,
        default=0,
        help="with --full-res: the tail's 3x3 conv emits this many features and a 1x1 conv mixes them "
        "into the 4 sub-pixels (ETDS's ending; nearly free in onnxruntime, see srtc.training.fullres)",
    )
    ap.add_argument(
        "--slope",
        type=float,
        default=0.1,
        help="LeakyReLU negative slope; 0 = ReLU, which int8 inference folds into the conv (srtc/training/qat.py)",
    )
    ap.add_argument(
        "--slope-anneal",
        type=int,
        default=0,
        help="start at slope 0.1 and move linearly to --slope over this many steps (a ReLU net "
        "trained from scratch at slope 0 loses its units at once)",
    )
    ap.add_argument(
        "--full-range",
        type=float,
        default=0.0,
        help="share of clean patch pairs stretched from limited-range (16..235) to full-range luma, "
        "so the model also serves grey images and full-range video (srtc.training.data.stretch_full_range)",
    )
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--patch", type=int, default=96, help="HR patch side (px)")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    ap.add_argument("--min-lr", type=float, default=1e-5)
    ap.add_argument("--loss", choices=sorted(LOSSES), default="l1")
    ap.add_argument(
        "--temporal",
        type=float,
        default=0.0,
        help="weight of a temporal loss (needs --pairs with clips): L1 between the SR's and the HR's "
        "change from the previous frame, on a second batch of consecutive-frame patches",
    )
    ap.add_argument("--temporal-batch", type=int, default=16, help="clip patch pairs per step for --temporal")
    ap.add_argument("--val-every", type=int, default=2000)
    ap.add_argument("--save-every", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument(
        "--sampler",
        choices=("auto", "host", "device"),
        default="auto",
        help="where clean patches are cut: 'host' (numpy, srtc.training.data.PatchPairs), 'device' (on the "
        "training device, srtc.training.data.DevicePatches); 'auto' is 'device' on a GPU",
    )
    ap.add_argument(
        "--minutes",
        type=float,
        default=0.0,
        help="a wall-time budget instead of a step count: after a short warm-up the run measures its "
        "steps per second and fixes --steps (recorded in the checkpoint) to end in about this time",
    )
    ap.add_argument(
        "--stop-at",
        type=int,
        default=0,
        help="end this session after this step, saving last.pt, while the learning-rate schedule still "
        "runs to --steps: one schedule split over sessions (continue with --resume)",
    )
    ap.add_argument("--limit-images", type=int, default=None, help="use only the first N images (tests)")
    return ap


def save(path: Path, **state) -> None:
    """Write atomically so an interrupted save never corrupts the resume point."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def checkpoint(
    step: int,
    args: argparse.Namespace,
    out: Path,
    state: Callable[[float], dict],
    validate: Callable[[], float] | None,
    best: float,
    report: Callable[[float, float], str],
) -> float:
    """The schedule's bookkeeping after an optimisation step, shared by every training stage.

    On a validation step (``--val-every``, and the last step): validate, keep ``best.pt`` when it
    improves, log ``report(psnr, best)``. On a save step (``--save-every``, and the last): ``last.pt``,
    the resume point. ``state(best)`` is the checkpoint's content. Returns the best PSNR so far.
    """
    final = step == args.steps or step == getattr(args, "stop_at", 0)
    if validate is not None and (step % args.val_every == 0 or final):
        psnr = validate()
        if psnr > best:
            best = psnr
            save(out / "best.pt", **state(best))
        log.info("step %d: %s", step, report(psnr, best))
    if step % args.save_every == 0 or final:
        save(out / "last.pt", **state(best))
    return best


def train(args: argparse.Namespace, command: str = "") -> dict:
    """Run (or resume) training; returns this session's losses, the best PSNR and the wall time."""
    if args.steps <= 0 and args.minutes <= 0:
        raise SystemExit("give --steps N or --minutes M")
    if getattr(args, "temporal", 0.0) and not args.pairs:
        raise SystemExit("--temporal needs consecutive coded frames: give --pairs (a cache with clips)")
    if getattr(args, "mix", 0) and not getattr(args, "full_res", False):
        raise SystemExit("--mix is an option of the full-resolution generator: add --full-res")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = device.type == "cuda"
    sampler_state = None

    config = model_config(args)
    model = build(config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    step, best, elapsed = 0, -math.inf, 0.0
    history: list[list] = [[0, command]]
    if args.resume and (out / "last.pt").is_file():
        ckpt = torch.load(out / "last.pt", map_location=device, weights_only=False)
        if ckpt["config"] != config:
            raise SystemExit(f"--widths {config} differs from the checkpoint's {ckpt['config']}")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        rng.bit_generator.state = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        step, best, elapsed = ckpt["step"], ckpt["best_psnr"], ckpt["elapsed_s"]
        sampler_state = ckpt.get("sampler")
        if args.minutes and ckpt.get("args", {}).get("steps"):
            args.steps, args.minutes = ckpt["args"]["steps"], 0.0  # the budget was fixed as a step count
        # A resumed run may change its settings (e.g. --steps): keep every command with the step it took over at.
        history = ckpt.get("history") or [[0, ckpt.get("command", command)]]
        if command and command != history[-1][1]:
            history.append([step, command])
        command = ckpt.get("command", command)
        log.info("resumed from %s at step %d", out / "last.pt", step)
    elif args.init:
        init = torch.load(args.init, map_location=device, weights_only=False)
        if init["config"] != config:
            raise SystemExit(f"--init {args.init} has config {init['config']}, this run {config}")
        model.load_state_dict(init["model"])
        log.info(
            "starting from the weights of %s (step %d there); new optimiser and schedule",
            args.init,
            init.get("step", 0),
        )
    elif args.resume:
        log.info("no %s yet; starting fresh", out / "last.pt")

    plain = fused(model).cpu()
    log.info(
        "%s %s: %d params at inference (%d while training), %.3f GMAC at 640x360, device %s",
        type(model).__name__,
        config,
        count_params(plain),
        count_params(model),
        count_macs(plain) / 1e9,
        device,
    )
    data = load_training_data(args, device)
    on_device = args.sampler == "device" or (args.sampler == "auto" and device.type == "cuda")
    if isinstance(data, PatchPairs) and on_device:
        data = DevicePatches(data, device, args.seed)
        if sampler_state is not None:
            data.restore(sampler_state)
    val = load_samples(args.val) if args.val else []
    loss_fn = LOSSES[args.loss]

    def state(best: float) -> dict:
        extra = {"sampler": data.state()} if isinstance(data, DevicePatches) else {}
        return {
            "config": config,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "best_psnr": best,
            "elapsed_s": elapsed + time.perf_counter() - t0,
            "command": command,
            "history": history,
            "args": vars(args),
            **extra,
        }

    def validate() -> float:
        model.eval()
        psnr = evaluate(val, torch_upscaler(model, device))["model"]
        model.train()
        return psnr

    losses: list[float] = []
    pending: list[torch.Tensor] = []  # this step's losses, read back in groups: a read per step stalls a GPU
    budget = StepBudget(args.minutes, step) if args.minutes else None
    if budget:
        args.steps = budget.provisional
    t0 = time.perf_counter()
    model.train()
    with (
        logging_redirect_tqdm(),
        tqdm(total=args.steps, initial=step, desc="train", unit="step", dynamic_ncols=True) as bar,
    ):
        while step < args.steps and not (args.stop_at and step >= args.stop_at):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, args.steps, args.lr, args.min_lr)
            if args.slope_anneal:
                model.slope = annealed_slope(step, args.slope_anneal, args.slope)
            lr_b, hr_b = data.sample(args.batch, rng)
            loss = loss_fn(model(lr_b.to(device)), hr_b.to(device))
            if getattr(args, "temporal", 0.0):
                loss = loss + args.temporal * temporal_loss(model, data, args.temporal_batch, rng, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            pending.append(loss.detach())
            if budget and budget.fixes(step):
                args.steps = bar.total = budget.steps(step)
                log.info("%.1f steps/s: %d steps fit the %.1f-minute budget", budget.rate, args.steps, args.minutes)
            bar.update(1)
            if step % 20 == 0 or step % args.val_every == 0 or step == args.steps:
                losses.extend(torch.stack(pending).tolist())
                pending.clear()
                bar.set_postfix(loss=f"{np.mean(losses[-100:]):.5f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
            best = checkpoint(
                step,
                args,
                out,
                state,
                validate if val else None,
                best,
                lambda psnr, top: (
                    f"loss {np.mean(losses[-args.val_every :]):.5f}, {Path(args.val).name} PSNR-Y {psnr:.3f} dB "
                    f"(best {top:.3f})"
                ),
            )
    wall = elapsed + time.perf_counter() - t0
    if not val:
        save(out / "best.pt", **state(best))
    log.info("done: %d steps, %.1f min wall in total, best PSNR-Y %.3f dB", step, wall / 60, best)
    return {"losses": losses, "best_psnr": best, "steps": step, "wall_s": wall}


class StepBudget:
    """Turns a wall-time budget into a step count, so the learning-rate schedule can end on time.

    The rate is first measured over steps ``warmup``..``warmup + window`` of this session (the first steps
    pay for cuDNN's algorithm search and the allocator's growth), then again every ``every`` steps (runs
    sharing a GPU speed up or slow down as the others start and end); validation and saving are left a margin.
    """

    def __init__(
        self,
        minutes: float,
        start_step: int,
        warmup: int = 50,
        window: int = 250,
        margin: float = 0.95,
        every: int = 2000,
    ) -> None:
        self.seconds = 60.0 * minutes
        self.start_step, self.warmup, self.window, self.margin, self.every = start_step, warmup, window, margin, every
        self.last_step = start_step
        self.t_start = time.perf_counter()
        self.t_warm = self.t_start
        self.rate = 0.0
        self.provisional = start_step + 10**9  # the schedule stays at its peak until the count is fixed

    def fixes(self, step: int) -> bool:
        """True at the steps where the count is (re)estimated."""
        done = step - self.start_step
        if done == self.warmup:
            self.t_warm, self.last_step = time.perf_counter(), step
        return done == self.warmup + self.window or (done > self.warmup + self.window and done % self.every == 0)

    def steps(self, step: int) -> int:
        now = time.perf_counter()
        self.rate = (step - self.last_step) / max(now - self.t_warm, 1e-9)
        self.t_warm, self.last_step = now, step
        left = self.seconds * self.margin - (now - self.t_start)
        return step + max(int(self.rate * left), 1)


def model_config(args: argparse.Namespace) -> dict:
    """The checkpoint's generator config; plain runs keep the old ``{"widths": ...}`` form."""
    config: dict = {"widths": list(args.widths)}
    if getattr(args, "full_res", False):
        config["full_res"] = True
    if getattr(args, "reparam", False):
        config["reparam"] = True
    if getattr(args, "slope", 0.1) != 0.1:
        config["slope"] = args.slope
    if getattr(args, "lr_tail", 0):
        config["lr_tail"] = args.lr_tail
    if getattr(args, "mix", 0):
        config["mix"] = args.mix
    return config


def load_training_data(args: argparse.Namespace, device: torch.device | None = None):
    """Clean bicubic pairs cut from --data, or the degraded (codec-aware) pairs of a --pairs cache."""
    teacher_path = getattr(args, "teacher", None)  # srtc.training.gan's arguments have no teacher
    full_range = getattr(args, "full_range", 0.0)  # nor a full-range share
    if args.pairs:
        if teacher_path:
            raise SystemExit("--teacher works on --data (clean pairs), not on a --pairs cache")
        if full_range:
            raise SystemExit("--full-range works on --data (clean pairs), not on a --pairs cache")
        from .degrade import (
            CodecPatchPairs,  # imports PyAV; only needed for codec-aware training
        )

        return CodecPatchPairs(args.pairs, args.patch, args.limit_images, seed=args.seed)
    if not 0.0 <= full_range <= 1.0:
        raise SystemExit(f"--full-range is a share of patches, 0..1; got {full_range}")
    if not teacher_path:
        return PatchPairs(args.data, args.patch, args.limit_images, full_range=full_range)
    if not 0.0 < args.teacher_weight <= 1.0:
        raise SystemExit(f"--teacher-weight must be in (0, 1], got {args.teacher_weight}")
    from .teacher import load_teacher

    name, teacher = load_teacher(teacher_path, device)
    t0 = time.perf_counter()
    data = PatchPairs(
        args.data,
        args.patch,
        args.limit_images,
        teacher=teacher,
        teacher_weight=args.teacher_weight,
        full_range=full_range,
    )
    log.info(
        "targets: %.0f%% %s, %.0f%% HR (teacher ran in %.0f s)",
        100 * args.teacher_weight,
        name,
        100 * (1 - args.teacher_weight),
        time.perf_counter() - t0,
    )
    return data


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    command = "python -m srtc.training.train " + " ".join(shlex.quote(a) for a in argv if a != "--resume")
    train(args, command)


if __name__ == "__main__":
    main()
