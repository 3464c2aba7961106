"""Stage 2: adversarial fine-tuning of a stage-1 (fidelity) generator, with toggleable remedies.

``python -m srtc.training.gan --init runs/STAGE1/last.pt --out runs/NAME --steps N [--resume]``

Stage 1 is ``python -m srtc.training.train`` (L1/Charbonnier). This stage starts from its checkpoint
(``--init``; generator config and weights, EMA weights if it has them), adds a spectral-norm
patch discriminator (``srtc.training.discriminator``) and trains both with Adam, cosine-decayed to
1% of the peak rates. Generator loss = sum of weighted terms (``srtc.training.losses``); every remedy is
a weight, 0 switches it off, so an ablation is a list of commands differing in one flag:

- ``--pixel``        L1 to HR (pixel anchoring)
- ``--patch-anchor`` L1 between 4x4 and 8x8 patch means of SR and HR
- ``--down``         downscaled SR (``--down-kernel`` bicubic antialiased | area) vs the LR: with
                     ``--down-target clean`` (the default) the HR downscaled the same way, i.e. the LR
                     before any codec (on clean pairs the same thing as the input; on codec pairs,
                     matching the decoded input would teach the model to keep the codec's artefacts);
                     ``--down-target input`` compares with the model's input as given
- ``--grad``         L1 between Sobel gradients of SR and HR (tangent-space constraint)
- ``--fm``           L1 between discriminator features of SR and HR (latent matching)
- ``--artifact``     L1 weighted by the LDL artefact map (``srtc.training.losses.artifact_map``): high where the
                     error varies from pixel to pixel (false texture) and the generator errs more than its
                     EMA; needs ``--ema``. The map is small (~1e-4), hence weights in the thousands
- ``--flat``         L1 of the high-pass error where the HR is flat (``srtc.training.losses.flat_grain``): no
                     texture where the original has none
- ``--adv``          adversarial term, ``--gan ragan`` (relativistic average, ESRGAN) or ``vanilla``
- ``--adv-inputs``   ``all`` (the default) or ``clean``: with a pair cache, the adversarial and feature
                     matching terms (and the discriminator) see only the outputs of clean LR patches;
                     on coded ones the generator gets the fidelity terms alone, so it learns to sharpen
                     real detail without learning to sharpen the codec's blocks
- ``--ema``          decay of the generator EMA used for validation and export (0: none)

Checkpoints (``last.pt`` every ``--save-every`` steps, ``best.pt`` by Set5 PSNR-Y) hold the
generator, its EMA, the discriminator and both optimisers, the RNG states and the step, so
``--resume`` continues exactly; ``srtc.training.export`` exports the EMA weights when present, fused.
Each step runs the discriminator three times, not four (see ``GanStage``). (One batched D pass on
[HR; SR] with G's and D's gradients taken separately by autograd.grad was tried and ran slower on CPU:
1.1-1.2 against 1.3-1.6 steps/s.)

CPU speed, 1 thread, batch 16, patch 96, while another process used the other core: 4.1
steps/s with ``--d-base 16`` (the default), 1.3-1.6 with 32; the discriminator is most of it.
"""

from __future__ import annotations

import argparse
import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from . import losses as L
from .arch import build, count_macs, count_params, fused
from .discriminator import PatchDiscriminator
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
from .sources import DataConfig, load_training_data

log = logging.getLogger(__name__)

REMEDIES = ("pixel", "patch_anchor", "down", "grad", "artifact", "flat", "fm", "adv")


@dataclass(frozen=True)
class GanConfig:
    """Stage 2's settings, checked at the edge (:meth:`from_args`)."""

    schedule: Schedule
    data: DataConfig
    init: str | None = None  # the stage-1 checkpoint to start from (not needed to resume)
    val: str = "../shared/data/benchmarks/Set5"
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    d_base: int = 16
    pixel: float = 1.0
    patch_anchor: float = 1.0
    down: float = 1.0
    down_kernel: str = "bicubic"
    down_target: str = "clean"
    grad: float = 0.5
    artifact: float = 0.0
    flat: float = 0.0
    fm: float = 0.1
    adv: float = 5e-3
    gan: str = "ragan"
    adv_inputs: str = "all"
    ema: float = 0.999

    def __post_init__(self) -> None:
        if self.adv_inputs == "clean" and not self.data.pairs:
            raise ConfigError("--adv-inputs clean needs a codec-aware pair cache (--pairs)")
        if self.artifact and not self.ema:
            raise ConfigError("--artifact needs the generator EMA (--ema > 0)")
        if self.gan not in L.ADVERSARIAL or not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"--gan must be one of {sorted(L.ADVERSARIAL)} and --ema in [0, 1)")
        if any(getattr(self, name) < 0 for name in REMEDIES):
            raise ConfigError("loss weights must be >= 0 (0 switches a term off)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GanConfig:
        schedule = Schedule(Path(args.out), args.steps, val_every=args.val_every, save_every=args.save_every,
                            seed=args.seed, threads=args.threads, resume=args.resume)  # fmt: skip
        data = DataConfig(args.data, args.pairs, args.patch, args.batch, args.limit_images,
                          temporal=args.temporal, temporal_batch=args.temporal_batch)  # fmt: skip
        return cls(schedule, data, **stage_settings(cls, args))


def parse_config(argv: list[str]) -> GanConfig:
    """The command line's settings; :class:`ConfigError` when they do not fit together."""
    return GanConfig.from_args(make_parser().parse_args(argv))


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", default=None, help="stage-1 checkpoint to start from (not needed to --resume)")
    ap.add_argument("--data", default="../shared/data/train", help="folder of HR training images")
    ap.add_argument("--pairs", default=None, help="codec-aware pair cache (srtc.training.degrade) instead of --data")
    ap.add_argument("--val", default="../shared/data/benchmarks/Set5", help="validation folder ('' to skip)")
    ap.add_argument("--out", required=True, help="run folder for checkpoints")
    ap.add_argument("--steps", type=int, required=True, help="total optimisation steps of this stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=96, help="HR patch side (px)")
    ap.add_argument("--lr-g", type=float, default=1e-4, help="generator peak learning rate")
    ap.add_argument("--lr-d", type=float, default=1e-4, help="discriminator peak learning rate")
    ap.add_argument(
        "--d-base",
        type=int,
        default=16,
        help="discriminator base width (16: 59k params; 32: 233k, ~2.7x slower on CPU)",
    )
    ap.add_argument("--pixel", type=float, default=1.0, help="weight of L1 to HR (0: off)")
    ap.add_argument("--patch-anchor", type=float, default=1.0, help="weight of 4x4/8x8 patch-mean L1 (0: off)")
    ap.add_argument("--down", type=float, default=1.0, help="weight of down-sampling consistency (0: off)")
    ap.add_argument(
        "--down-kernel",
        choices=("bicubic", "area"),
        default="bicubic",
        help="kernel the LR was made with (bicubic: antialiased, as PIL)",
    )
    ap.add_argument(
        "--down-target",
        choices=("clean", "input"),
        default="clean",
        help="what the downscaled SR must match: the HR downscaled (the LR before a codec) or the input",
    )
    ap.add_argument("--grad", type=float, default=0.5, help="weight of the gradient L1 (0: off)")
    ap.add_argument(
        "--artifact",
        type=float,
        default=0.0,
        help="weight of the LDL artefact-map L1 (0: off; needs --ema; the map is ~1e-4, so "
        "thousands: the shipped GAN uses 10000)",
    )
    ap.add_argument("--flat", type=float, default=0.0, help="weight of the flat-area grain L1 (0: off)")
    ap.add_argument(
        "--temporal",
        type=float,
        default=0.0,
        help="weight of the temporal loss (srtc.training.train --temporal; needs --pairs with clips; 0: off)",
    )
    ap.add_argument("--temporal-batch", type=int, default=8, help="clip patch pairs per step for --temporal")
    ap.add_argument(
        "--fm",
        type=float,
        default=0.1,
        help="weight of discriminator feature matching (0: off; D trains only when --adv > 0)",
    )
    ap.add_argument("--adv", type=float, default=5e-3, help="weight of the adversarial term (0: off)")
    ap.add_argument("--gan", choices=sorted(L.ADVERSARIAL), default="ragan", help="adversarial loss")
    ap.add_argument(
        "--adv-inputs",
        choices=("all", "clean"),
        default="all",
        help="which outputs the adversary judges: all, or only those of clean (uncoded) LR patches",
    )
    ap.add_argument("--ema", type=float, default=0.999, help="generator EMA decay (0: no EMA)")
    ap.add_argument("--val-every", type=int, default=1000)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--limit-images", type=int, default=None, help="use only the first N images (tests)")
    return ap


def loss_weights(cfg: GanConfig) -> dict[str, float]:
    """Weights of the generator's loss terms; a term with weight 0 is not computed at all."""
    return {name: float(getattr(cfg, name)) for name in REMEDIES}


def generator_terms(
    sr: torch.Tensor,
    hr: torch.Tensor,
    lr: torch.Tensor,
    weights: dict[str, float],
    disc: nn.Module | None = None,
    real: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
    gan: str = "ragan",
    down_kernel: str = "bicubic",
    down_target: str = "clean",
    ema_sr: torch.Tensor | None = None,
    judged: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Unweighted loss terms of the switched-on remedies, plus ``total`` (their weighted sum).

    ``real``: the discriminator's (logits, features) on HR, needed by ``adv`` and ``fm``;
    they are used detached, so only the generator receives gradients from these terms.
    ``ema_sr``: the EMA generator's output on the same LR, needed by ``artifact``.
    ``judged``: bool [B], the samples the adversary sees (``real`` is then on those alone); an empty
    selection leaves ``adv`` and ``fm`` out of this step.
    """
    w = {k: v for k, v in weights.items() if v}
    terms: dict[str, torch.Tensor] = {}
    if "pixel" in w:
        terms["pixel"] = L.pixel_anchor(sr, hr)
    if "patch_anchor" in w:
        terms["patch_anchor"] = L.patch_anchor(sr, hr)
    if "down" in w:
        target = L.downscale2(hr, down_kernel) if down_target == "clean" else lr
        terms["down"] = L.down_consistency(sr, target, down_kernel)
    if "grad" in w:
        terms["grad"] = L.gradient_loss(sr, hr)
    if "artifact" in w:
        if ema_sr is None:
            raise ValueError("the artifact term needs the EMA generator's output (--ema > 0)")
        terms["artifact"] = L.artifact_loss(sr, hr, ema_sr)
    if "flat" in w:
        terms["flat"] = L.flat_grain(sr, hr)
    if judged is not None and not bool(judged.any()):
        w = {k: v for k, v in w.items() if k not in ("adv", "fm")}
    if "adv" in w or "fm" in w:
        if disc is None or real is None:
            raise ValueError("adv/fm need the discriminator and its output on HR")
        fake_logits, fake_feats = disc(judged_only(sr, judged))
        real_logits, real_feats = real
        if "adv" in w:
            terms["adv"] = L.ADVERSARIAL[gan][1](real_logits.detach(), fake_logits)
        if "fm" in w:
            terms["fm"] = L.feature_matching(fake_feats, real_feats)
    terms["total"] = cast(torch.Tensor, sum(w[k] * terms[k] for k in w))
    return terms


def judged_only(batch: torch.Tensor, judged: torch.Tensor | None) -> torch.Tensor:
    """The samples of ``batch`` the adversary sees: all of them, or those ``judged`` (``--adv-inputs clean``)."""
    return batch if judged is None else batch[judged]


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)


def load_init(path: str | Path, device: torch.device) -> tuple[dict, dict]:
    """Generator config and weights of a stage-1 (or stage-2) checkpoint; its EMA when it has one."""
    ckpt = torch.load(str(path), map_location=device, weights_only=False)
    return ckpt["config"], ckpt.get("ema") or ckpt["model"]


class GanStage:
    """Stage 2 for the loop: the generator (with its EMA), the patch discriminator, and both optimisers.

    Each step: D(HR) once with gradients (used detached by G, with gradients by D, as D does not change
    in between), D(SR) for G with D frozen, D(SR.detach()) for D: three D passes, not four.
    """

    label = "gan"
    headline = "total"

    def __init__(self, cfg: GanConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        last = cfg.schedule.out / "last.pt"
        if cfg.schedule.resume and last.is_file():
            ckpt = torch.load(last, map_location=device, weights_only=False)
            self.config, gen_state = ckpt["config"], ckpt["model"]
        elif cfg.init:
            self.config, gen_state = load_init(cfg.init, device)
        else:
            raise ConfigError("--init CKPT (a stage-1 checkpoint) is needed to start stage 2")
        self.gen = build(self.config).to(device)
        self.gen.load_state_dict(gen_state)
        self.ema = copy.deepcopy(self.gen).requires_grad_(False) if cfg.ema else None
        self.disc = PatchDiscriminator(cfg.d_base).to(device)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=cfg.lr_g, betas=(0.9, 0.99))
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.lr_d, betas=(0.9, 0.99))
        self.rng = np.random.default_rng(cfg.schedule.seed)
        self.weights = loss_weights(cfg)
        plain = fused(self.gen).cpu()
        log.info("generator %s: %d params at inference, %.3f GMAC at 640x360; discriminator %d params; "
                 "weights %s, %s, EMA %s, device %s", self.config, count_params(plain), count_macs(plain) / 1e9,
                 count_params(self.disc), {k: v for k, v in self.weights.items() if v}, cfg.gan, cfg.ema or "off",
                 device)  # fmt: skip
        self.data = load_training_data(cfg.data, cfg.schedule.seed)
        self.val = load_samples(cfg.val) if cfg.val else []
        self.val_name = Path(cfg.val).name
        self.d_loss_fn = L.ADVERSARIAL[cfg.gan][0]
        self.needs_disc = bool(self.weights["adv"] or self.weights["fm"])

    def state(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "model": self.gen.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "disc": self.disc.state_dict(),
            "d_base": self.cfg.d_base,
            "optimizer": self.opt_g.state_dict(),
            "optimizer_d": self.opt_d.state_dict(),
            "weights": self.weights,
            "temporal": self.cfg.data.temporal,
            "stage": "gan",
            "init": self.cfg.init,
        }

    def load(self, ckpt: dict[str, Any]) -> None:
        if (
            {k: ckpt["weights"].get(k, 0.0) for k in self.weights} != self.weights
            or ckpt["d_base"] != self.cfg.d_base
            or ckpt.get("temporal", 0.0) != self.cfg.data.temporal
        ):
            raise ConfigError(
                f"loss weights / --temporal / --d-base differ from the checkpoint's {ckpt['weights']}, "
                f"temporal {ckpt.get('temporal', 0.0)}, d-base {ckpt['d_base']}"
            )
        self.gen.load_state_dict(ckpt["model"])
        self.disc.load_state_dict(ckpt["disc"])
        self.opt_g.load_state_dict(ckpt["optimizer"])
        self.opt_d.load_state_dict(ckpt["optimizer_d"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"] or ckpt["model"])

    def begin(self) -> float | None:
        return None

    def set_rates(self, step: int, total: int) -> None:
        for opt, peak in ((self.opt_g, self.cfg.lr_g), (self.opt_d, self.cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, peak, 0.01 * peak)

    def step(self) -> dict[str, torch.Tensor]:
        cfg, device, weights, disc = self.cfg, self.device, self.weights, self.disc
        judged = None
        if cfg.adv_inputs == "clean":
            lr_b, hr_b, coded = self.data.sample_coded(cfg.data.batch, self.rng)
            judged = ~coded.to(device)
        else:
            lr_b, hr_b = self.data.sample(cfg.data.batch, self.rng)
        lr_b, hr_b = lr_b.to(device, non_blocking=True), hr_b.to(device, non_blocking=True)
        judge = self.needs_disc and (judged is None or bool(judged.any()))
        sr = self.gen(lr_b)
        ema_sr = None
        if weights["artifact"] and self.ema is not None:
            with torch.no_grad():
                ema_sr = self.ema(lr_b)
        real = disc(judged_only(hr_b, judged)) if judge else None  # with D gradients: reused by the D step

        disc.requires_grad_(False)
        terms = generator_terms(sr, hr_b, lr_b, weights, disc, real, cfg.gan, cfg.down_kernel, cfg.down_target,
                                ema_sr, judged)  # fmt: skip
        if cfg.data.temporal:
            terms["temporal"] = L.temporal_loss(self.gen, self.data, cfg.data.temporal_batch, self.rng, device)
            terms["total"] = terms["total"] + cfg.data.temporal * terms["temporal"]
        self.opt_g.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.opt_g.step()
        disc.requires_grad_(True)
        if self.ema is not None:
            ema_update(self.ema, self.gen, cfg.ema)

        record = {k: v.detach() for k, v in terms.items()}
        if weights["adv"] and judge and real is not None:
            fake_logits, _ = disc(judged_only(sr.detach(), judged))
            loss_d = self.d_loss_fn(real[0], fake_logits)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            record["d"] = loss_d.detach()
        return record

    def validate(self) -> float | None:
        return validation_psnr(self.ema if self.ema is not None else self.gen, self.val, self.device)


def train_gan(cfg: GanConfig, command: str = "") -> dict:
    """Run (or resume) stage 2; returns per-step loss records, the best PSNR, steps and wall time."""
    device = prepare(cfg.schedule)
    stage = GanStage(cfg, device)
    stage.gen.train()
    stage.disc.train()
    result = run(stage, cfg.schedule, settings_record(cfg), command)
    return {"records": result.records, "best_psnr": result.best_psnr, "steps": result.steps, "wall_s": result.wall_s}


def main(argv: list[str] | None = None) -> None:
    stage_command("srtc.training.gan", make_parser, GanConfig.from_args, train_gan, argv)


if __name__ == "__main__":
    main()
