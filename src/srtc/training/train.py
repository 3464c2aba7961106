"""Stage 1: train the x2 luma generator for fidelity on random patches, validating PSNR-Y on Set5.

``python -m srtc.training.train --data ../shared/data/train --out runs/NAME --steps N --seed S [--resume]``

Writes ``last.pt`` (every ``--save-every`` steps and at the end; ``--resume`` continues from it
with the same data order) and ``best.pt`` (best validation PSNR-Y) into ``--out`` (the loop:
``srtc.training.loop``). L1 (or Charbonnier) loss, Adam, cosine learning-rate decay to ``--min-lr``.
``--reparam`` trains the ECB re-parameterised form (``srtc.training.reparam``); its checkpoints export
as the plain net. Stage 2, adversarial fine-tuning from a stage-1 checkpoint, is
``python -m srtc.training.gan --init OUT/last.pt`` (see that module).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .arch import build, count_macs, count_params, fused
from .data import DevicePatches, PatchPairs
from .evaluate import load_samples
from .loop import (
    ConfigError,
    Schedule,
    cosine_lr,
    prepare,
    run,
    settings_record,
    stage_command,
    stage_settings,
    validation_psnr,
)
from .losses import LOSSES, temporal_loss
from .sources import DataConfig, load_training_data

log = logging.getLogger(__name__)

SAMPLERS = ("auto", "host", "device")


@dataclass(frozen=True)
class TrainConfig:
    """Stage 1's settings, checked at the edge (:meth:`from_args`)."""

    schedule: Schedule
    data: DataConfig
    val: str = "../shared/data/benchmarks/Set5"  # validation folder ('' to skip)
    init: str | None = None  # start from this checkpoint's weights (same generator config)
    widths: tuple[int, ...] = (32, 32, 16, 16)
    reparam: bool = False
    full_res: bool = False
    lr_tail: int = 0
    mix: int = 0
    slope: float = 0.1
    slope_anneal: int = 0
    lr: float = 3e-3
    min_lr: float = 1e-5
    loss: str = "l1"
    sampler: str = "auto"

    def __post_init__(self) -> None:
        if self.mix and not self.full_res:
            raise ConfigError("--mix is an option of the full-resolution generator: add --full-res")
        if self.loss not in LOSSES or self.sampler not in SAMPLERS:
            raise ConfigError(f"--loss must be one of {sorted(LOSSES)} and --sampler one of {SAMPLERS}")
        if not self.widths or min(self.widths) < 1:
            raise ConfigError(f"--widths must be positive, got {self.widths}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        schedule = Schedule(Path(args.out), args.steps, args.minutes, args.stop_at, args.val_every, args.save_every,
                            args.seed, args.threads, args.resume)  # fmt: skip
        data = DataConfig(args.data, args.pairs, args.patch, args.batch, args.limit_images, args.teacher,
                          args.teacher_weight, args.full_range, args.temporal, args.temporal_batch)  # fmt: skip
        own = stage_settings(cls, args)
        return cls(schedule, data, **{**own, "widths": tuple(own["widths"])})


def parse_config(argv: list[str]) -> TrainConfig:
    """The command line's settings; :class:`ConfigError` when they do not fit together."""
    return TrainConfig.from_args(make_parser().parse_args(argv))


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


def model_config(cfg: TrainConfig) -> dict:
    """The checkpoint's generator config; plain runs keep the short ``{"widths": ...}`` form."""
    config: dict = {"widths": list(cfg.widths)}
    if cfg.full_res:
        config["full_res"] = True
    if cfg.reparam:
        config["reparam"] = True
    if cfg.slope != 0.1:
        config["slope"] = cfg.slope
    if cfg.lr_tail:
        config["lr_tail"] = cfg.lr_tail
    if cfg.mix:
        config["mix"] = cfg.mix
    return config


class FidelityStage:
    """Stage 1 for the loop: the generator, Adam, and an L1-like loss (plus the temporal term)."""

    label = "train"
    headline = "loss"

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.config = model_config(cfg)
        self.model = build(self.config).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.rng = np.random.default_rng(cfg.schedule.seed)
        resuming = cfg.schedule.resume and (cfg.schedule.out / "last.pt").is_file()
        if cfg.init and not resuming:
            init = torch.load(cfg.init, map_location=device, weights_only=False)
            if init["config"] != self.config:
                raise ConfigError(f"--init {cfg.init} has config {init['config']}, this run {self.config}")
            self.model.load_state_dict(init["model"])
            log.info("starting from the weights of %s (step %d there); new optimiser and schedule", cfg.init,
                     init.get("step", 0))  # fmt: skip
        plain = fused(self.model).cpu()
        log.info("%s %s: %d params at inference (%d while training), %.3f GMAC at 640x360, device %s",
                 type(self.model).__name__, self.config, count_params(plain), count_params(self.model),
                 count_macs(plain) / 1e9, device)  # fmt: skip
        data = load_training_data(cfg.data, cfg.schedule.seed, device)
        on_device = cfg.sampler == "device" or (cfg.sampler == "auto" and device.type == "cuda")
        if isinstance(data, PatchPairs) and on_device:
            data = DevicePatches(data, device, cfg.schedule.seed)
        self.data = data
        self.val = load_samples(cfg.val) if cfg.val else []
        self.val_name = Path(cfg.val).name
        self.loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = LOSSES[cfg.loss]

    def state(self) -> dict[str, Any]:
        extra = {"sampler": self.data.state()} if isinstance(self.data, DevicePatches) else {}
        return {"config": self.config, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), **extra}

    def load(self, ckpt: dict[str, Any]) -> None:
        if ckpt["config"] != self.config:
            raise ConfigError(f"--widths {self.config} differs from the checkpoint's {ckpt['config']}")
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        if isinstance(self.data, DevicePatches) and ckpt.get("sampler") is not None:
            self.data.restore(ckpt["sampler"])

    def begin(self) -> float | None:
        return None

    def set_rates(self, step: int, total: int) -> None:
        for group in self.opt.param_groups:
            group["lr"] = cosine_lr(step, total, self.cfg.lr, self.cfg.min_lr)
        if self.cfg.slope_anneal:
            self.model.slope = annealed_slope(step, self.cfg.slope_anneal, self.cfg.slope)

    def step(self) -> dict[str, torch.Tensor]:
        cfg, device = self.cfg, self.device
        lr_b, hr_b = self.data.sample(cfg.data.batch, self.rng)
        loss = self.loss_fn(self.model(lr_b.to(device)), hr_b.to(device))
        if cfg.data.temporal:
            loss = loss + cfg.data.temporal * temporal_loss(self.model, self.data, cfg.data.temporal_batch,
                                                            self.rng, device)  # fmt: skip
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def validate(self) -> float | None:
        return validation_psnr(self.model, self.val, self.device)


def train(cfg: TrainConfig, command: str = "") -> dict:
    """Run (or resume) stage 1; returns this session's losses, the best PSNR, the steps and the wall time."""
    device = prepare(cfg.schedule)
    stage = FidelityStage(cfg, device)
    stage.model.train()
    result = run(stage, cfg.schedule, settings_record(cfg), command)
    return {"losses": [r["loss"] for r in result.records], "best_psnr": result.best_psnr, "steps": result.steps,
            "wall_s": result.wall_s}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    stage_command("srtc.training.train", make_parser, TrainConfig.from_args, train, argv)


if __name__ == "__main__":
    main()
