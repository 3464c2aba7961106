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
Each step: D(HR) once with gradients (used detached by G, with gradients by D, as D does not
change in between), D(SR) for G with D frozen, D(SR.detach()) for D: three D passes, not four.
(One batched D pass on [HR; SR] with G's and D's gradients taken separately by autograd.grad was
tried and ran slower on CPU: 1.1-1.2 against 1.3-1.6 steps/s.)

CPU speed, 1 thread, batch 16, patch 96, while another process used the other core: 4.1
steps/s with ``--d-base 16`` (the default), 1.3-1.6 with 32; the discriminator is most of it.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import losses as L
from .arch import build, count_macs, count_params, fused
from .discriminator import PatchDiscriminator
from .evaluate import evaluate, load_samples
from .train import (
    checkpoint,
    cosine_lr,
    load_training_data,
    save,
    temporal_loss,
    torch_upscaler,
)

log = logging.getLogger(__name__)

REMEDIES = ("pixel", "patch_anchor", "down", "grad", "artifact", "flat", "fm", "adv")


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


def loss_weights(args: argparse.Namespace) -> dict[str, float]:
    """Weights of the generator's loss terms; a term with weight 0 is not computed at all."""
    return {name: float(getattr(args, name)) for name in REMEDIES}


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
    terms["total"] = sum(w[k] * terms[k] for k in w)
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


def train_gan(args: argparse.Namespace, command: str = "") -> dict:
    """Run (or resume) stage 2; returns per-step loss records, the best PSNR, steps and wall time."""
    if args.temporal and not args.pairs:
        raise SystemExit("--temporal needs consecutive coded frames: give --pairs (a cache with clips)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resume = args.resume and (out / "last.pt").is_file()
    ckpt = torch.load(out / "last.pt", map_location=device, weights_only=False) if resume else None
    if ckpt is None:
        if not args.init:
            raise SystemExit("--init CKPT (a stage-1 checkpoint) is needed to start stage 2")
        config, gen_state = load_init(args.init, device)
    else:
        config, gen_state = ckpt["config"], ckpt["model"]

    gen = build(config).to(device)
    gen.load_state_dict(gen_state)
    ema = copy.deepcopy(gen).requires_grad_(False) if args.ema else None
    disc = PatchDiscriminator(args.d_base).to(device)
    opt_g = torch.optim.Adam(gen.parameters(), lr=args.lr_g, betas=(0.9, 0.99))
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr_d, betas=(0.9, 0.99))
    rng = np.random.default_rng(args.seed)
    step, best, elapsed = 0, -math.inf, 0.0
    weights = loss_weights(args)
    if args.adv_inputs == "clean" and not args.pairs:
        raise SystemExit("--adv-inputs clean needs a codec-aware pair cache (--pairs)")
    if weights["artifact"] and ema is None:
        raise SystemExit("--artifact needs the generator EMA (--ema > 0)")
    if ckpt is not None:
        if (
            {k: ckpt["weights"].get(k, 0.0) for k in weights} != weights
            or ckpt["d_base"] != args.d_base
            or ckpt.get("temporal", 0.0) != args.temporal
        ):
            raise SystemExit(
                f"loss weights / --temporal / --d-base differ from the checkpoint's {ckpt['weights']}, "
                f"temporal {ckpt.get('temporal', 0.0)}, d-base {ckpt['d_base']}"
            )
        disc.load_state_dict(ckpt["disc"])
        opt_g.load_state_dict(ckpt["optimizer"])
        opt_d.load_state_dict(ckpt["optimizer_d"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"] or ckpt["model"])
        rng.bit_generator.state = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        step, best, elapsed = ckpt["step"], ckpt["best_psnr"], ckpt["elapsed_s"]
        command = ckpt.get("command", command)
        log.info("resumed from %s at step %d", out / "last.pt", step)

    plain = fused(gen).cpu()
    log.info(
        "generator %s: %d params at inference, %.3f GMAC at 640x360; discriminator %d params; "
        "weights %s, %s, EMA %s, device %s",
        config,
        count_params(plain),
        count_macs(plain) / 1e9,
        count_params(disc),
        {k: v for k, v in weights.items() if v},
        args.gan,
        args.ema or "off",
        device,
    )
    data = load_training_data(args)
    val = load_samples(args.val) if args.val else []
    d_loss_fn = L.ADVERSARIAL[args.gan][0]
    needs_disc = bool(weights["adv"] or weights["fm"])

    def state(best: float) -> dict:
        return {
            "config": config,
            "model": gen.state_dict(),
            "ema": ema.state_dict() if ema else None,
            "disc": disc.state_dict(),
            "d_base": args.d_base,
            "optimizer": opt_g.state_dict(),
            "optimizer_d": opt_d.state_dict(),
            "weights": weights,
            "temporal": args.temporal,
            "stage": "gan",
            "init": args.init,
            "rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "best_psnr": best,
            "elapsed_s": elapsed + time.perf_counter() - t0,
            "command": command,
            "args": vars(args),
        }

    def validate() -> float:
        model = ema if ema is not None else gen
        model.eval()
        psnr = evaluate(val, torch_upscaler(model, device))["model"]
        gen.train()
        return psnr

    records: list[dict[str, float]] = []
    t0 = time.perf_counter()
    t_rate, s_rate = t0, step
    gen.train()
    disc.train()
    with (
        logging_redirect_tqdm(),
        tqdm(total=args.steps, initial=step, desc="gan", unit="step", dynamic_ncols=True) as bar,
    ):
        while step < args.steps:
            for opt, peak in ((opt_g, args.lr_g), (opt_d, args.lr_d)):
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(step, args.steps, peak, 0.01 * peak)
            judged = None
            if args.adv_inputs == "clean":
                lr_b, hr_b, coded = data.sample_coded(args.batch, rng)
                judged = ~coded.to(device)
            else:
                lr_b, hr_b = data.sample(args.batch, rng)
            lr_b, hr_b = lr_b.to(device, non_blocking=True), hr_b.to(device, non_blocking=True)
            judge = needs_disc and (judged is None or bool(judged.any()))
            sr = gen(lr_b)
            ema_sr = None
            if weights["artifact"]:
                with torch.no_grad():
                    ema_sr = ema(lr_b)
            # With D gradients: reused by the D step.
            real = disc(judged_only(hr_b, judged)) if judge else None

            disc.requires_grad_(False)
            terms = generator_terms(
                sr, hr_b, lr_b, weights, disc, real, args.gan, args.down_kernel, args.down_target, ema_sr, judged
            )
            if args.temporal:
                terms["temporal"] = temporal_loss(gen, data, args.temporal_batch, rng, device)
                terms["total"] = terms["total"] + args.temporal * terms["temporal"]
            opt_g.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt_g.step()
            disc.requires_grad_(True)
            if ema is not None:
                ema_update(ema, gen, args.ema)

            record = {k: v.item() for k, v in terms.items()}
            if weights["adv"] and judge:
                fake_logits, _ = disc(judged_only(sr.detach(), judged))
                loss_d = d_loss_fn(real[0], fake_logits)
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                record["d"] = loss_d.item()
            if not all(math.isfinite(v) for v in record.values()):
                raise FloatingPointError(f"non-finite loss at step {step}: {record}")
            records.append(record)
            step += 1
            bar.update(1)
            if step % 20 == 0 or step == args.steps:
                now = time.perf_counter()
                rate = (step - s_rate) / max(now - t_rate, 1e-9)
                t_rate, s_rate = now, step
                recent = defaultdict(list)
                for r in records[-100:]:
                    for k, v in r.items():
                        recent[k].append(v)
                bar.set_postfix({k: f"{np.mean(v):.4g}" for k, v in recent.items()} | {"steps/s": f"{rate:.2f}"})
            best = checkpoint(
                step,
                args,
                out,
                state,
                validate if val else None,
                best,
                lambda psnr, top: (
                    f"total {np.mean([r['total'] for r in records[-args.val_every :]]):.5f}, {Path(args.val).name} "
                    f"PSNR-Y {psnr:.3f} dB (best {top:.3f}), "
                    f"{len(records) / max(time.perf_counter() - t0, 1e-9):.2f} steps/s this session"
                ),
            )
    wall = time.perf_counter() - t0
    if not val:
        save(out / "best.pt", **state(best))
    log.info(
        "done: %d steps, %.2f steps/s this session, %.1f min wall in total, best PSNR-Y %.3f dB",
        step,
        len(records) / max(wall, 1e-9),
        (elapsed + wall) / 60,
        best,
    )
    return {"records": records, "best_psnr": best, "steps": step, "wall_s": elapsed + wall}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    command = "python -m srtc.training.gan " + " ".join(shlex.quote(a) for a in argv if a != "--resume")
    train_gan(args, command)


if __name__ == "__main__":
    main()
