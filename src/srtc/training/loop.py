"""The one training loop every stage runs: schedule, resume, checkpoints, validation, progress.

A stage (fidelity training, the GAN stage, quantisation-aware fine-tuning) supplies its models and
one optimisation step (:class:`Stage`); the loop owns the rest, the same for all of them:

- seeding, so a run is reproducible from its seed, and resuming, so a run split over sessions
  (``--stop-at``, ``--resume``) ends with the weights of the run done in one go;
- ``last.pt`` every ``save_every`` steps and at the end (written atomically: an interrupted save never
  corrupts the resume point), ``best.pt`` at the best validation PSNR-Y;
- a wall-time budget (``minutes``) turned into a step count, so the learning-rate schedule ends on time;
- the progress bar, and a check that every loss stays finite.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .errors import ConfigError
from .evaluate import evaluate

log = logging.getLogger(__name__)

__all__ = [
    "ConfigError",
    "LoopResult",
    "Schedule",
    "Stage",
    "cosine_lr",
    "prepare",
    "run",
    "save",
    "settings_record",
    "stage_command",
    "stage_settings",
    "torch_upscaler",
    "validation_psnr",
]

READ_EVERY = 20  # steps between reading the losses back: a read per step stalls a GPU


@dataclass(frozen=True)
class Schedule:
    """How long a stage runs, where it writes, and how often it validates and saves."""

    out: Path
    steps: int = 0  # total optimisation steps; 0 with ``minutes``: fixed after a warm-up
    minutes: float = 0.0  # a wall-time budget instead of a step count
    stop_at: int = 0  # end this session after this step while the schedule still runs to ``steps``
    val_every: int = 2000
    save_every: int = 1000
    seed: int = 0
    threads: int = 2
    resume: bool = False

    def __post_init__(self) -> None:
        if self.steps <= 0 and self.minutes <= 0:
            raise ConfigError("give --steps N or --minutes M")
        if self.val_every <= 0 or self.save_every <= 0:
            raise ConfigError(f"--val-every and --save-every must be positive, got {self.val_every}, {self.save_every}")
        if self.stop_at < 0 or self.threads < 1:
            raise ConfigError(f"--stop-at must be >= 0 and --threads >= 1, got {self.stop_at}, {self.threads}")


class Stage(Protocol):
    """What a training stage gives the loop."""

    label: str  # the progress bar's name
    headline: str  # the loss term the log reports at each validation
    val_name: str  # the validation set's name, for the log
    rng: np.random.Generator  # the stage's sampling RNG, saved and restored with the checkpoint

    def state(self) -> dict[str, Any]:
        """Everything of the stage a checkpoint must hold to resume exactly (models, optimisers...)."""
        ...

    def load(self, ckpt: dict[str, Any]) -> None:
        """Restore :meth:`state` from a checkpoint; :class:`ConfigError` if it does not fit this run."""
        ...

    def begin(self) -> float | None:
        """Called on a fresh start (not on resume): a starting validation PSNR to beat, or None."""
        ...

    def set_rates(self, step: int, total: int) -> None:
        """Learning rates (and any other schedule) for the step about to run."""
        ...

    def step(self) -> dict[str, torch.Tensor]:
        """One optimisation step; its loss terms as detached scalars."""
        ...

    def validate(self) -> float | None:
        """PSNR-Y on the validation set (None without one)."""
        ...


@dataclass
class LoopResult:
    """What a session of a stage did."""

    records: list[dict[str, float]] = field(default_factory=list)  # this session's loss terms, per step
    best_psnr: float = -math.inf
    steps: int = 0
    wall_s: float = 0.0  # over all sessions of the run


def prepare(schedule: Schedule) -> torch.device:
    """Seed torch, set its threads and make the run folder, before the stage builds its models."""
    schedule.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(schedule.threads)
    torch.manual_seed(schedule.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = device.type == "cuda"
    return device


def save(path: Path, **state: Any) -> None:
    """Write atomically so an interrupted save never corrupts the resume point."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def cosine_lr(step: int, total: int, peak: float, floor: float) -> float:
    """Cosine decay from ``peak`` at step 0 to ``floor`` at ``total``."""
    t = min(step / max(total, 1), 1.0)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * t))


@dataclass
class _Progress:
    """The run's position: what a checkpoint records beside the stage's own state."""

    step: int = 0
    best: float = -math.inf
    elapsed: float = 0.0
    steps: int = 0
    command: str = ""
    history: list[list] = field(default_factory=list)
    fixed: bool = False  # a time budget's step count, fixed by an earlier session


def run(stage: Stage, schedule: Schedule, record: dict[str, Any], command: str = "") -> LoopResult:
    """Run (or resume) ``stage`` under ``schedule``. ``record``: the settings saved in each checkpoint
    (``"args"``, see :func:`settings_record`; its ``steps`` is the schedule's current count)."""
    progress = _Progress(steps=schedule.steps, command=command, history=[[0, command]])
    resumed = _resume(stage, schedule, progress, command)
    t0 = time.perf_counter()

    def state(best: float) -> dict[str, Any]:
        return {
            **stage.state(),
            "rng": stage.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "step": progress.step,
            "best_psnr": best,
            "elapsed_s": progress.elapsed + time.perf_counter() - t0,
            "command": progress.command,
            "history": progress.history,
            "args": {**record, "steps": progress.steps},  # a time budget fixes the count as it goes
        }

    if not resumed:
        start = stage.begin()
        if start is not None:
            progress.best = start
            save(schedule.out / "best.pt", **state(start))
    budget = StepBudget(schedule.minutes, progress.step) if schedule.minutes and not progress.fixed else None
    if budget:
        progress.steps = budget.provisional
    result = LoopResult()
    pending: list[dict[str, torch.Tensor]] = []
    t_rate, s_rate = t0, progress.step
    with (
        logging_redirect_tqdm(),
        tqdm(total=progress.steps, initial=progress.step, desc=stage.label, unit="step", dynamic_ncols=True) as bar,
    ):
        while progress.step < progress.steps and not (schedule.stop_at and progress.step >= schedule.stop_at):
            stage.set_rates(progress.step, progress.steps)
            pending.append(stage.step())
            progress.step += 1
            if budget and budget.fixes(progress.step):
                progress.steps = bar.total = budget.steps(progress.step)
                log.info("%.1f steps/s: %d steps fit the %.1f-minute budget", budget.rate, progress.steps,
                         schedule.minutes)  # fmt: skip
            bar.update(1)
            step = progress.step
            if step % READ_EVERY == 0 or step % schedule.val_every == 0 or step == progress.steps:
                _read_back(pending, result.records, step)
                now = time.perf_counter()
                rate = (step - s_rate) / max(now - t_rate, 1e-9)
                t_rate, s_rate = now, step
                bar.set_postfix(_recent(result.records) | {"steps/s": f"{rate:.2f}"})
            final = step == progress.steps or step == schedule.stop_at
            if step % schedule.val_every == 0 or final:
                _read_back(pending, result.records, step)
                psnr = stage.validate()
                if psnr is not None:
                    if psnr > progress.best:
                        progress.best = psnr
                        save(schedule.out / "best.pt", **state(progress.best))
                    recent = [r[stage.headline] for r in result.records[-schedule.val_every :]]
                    log.info("step %d: %s %.5f, %s PSNR-Y %.3f dB (best %.3f), %.2f steps/s this session", step,
                             stage.headline, float(np.mean(recent)), stage.val_name, psnr, progress.best,
                             len(result.records) / max(time.perf_counter() - t0, 1e-9))  # fmt: skip
            if step % schedule.save_every == 0 or final:
                save(schedule.out / "last.pt", **state(progress.best))
    _read_back(pending, result.records, progress.step)
    if progress.best == -math.inf:  # nothing validated: the end of the run is the one to export
        save(schedule.out / "best.pt", **state(progress.best))
    result.best_psnr, result.steps = progress.best, progress.step
    result.wall_s = progress.elapsed + time.perf_counter() - t0
    log.info("done: %d steps, %.1f min wall in total, best PSNR-Y %.3f dB", result.steps, result.wall_s / 60,
             result.best_psnr)  # fmt: skip
    return result


def _resume(stage: Stage, schedule: Schedule, progress: _Progress, command: str) -> bool:
    """Continue from ``last.pt`` when asked and present; True if it did."""
    path = schedule.out / "last.pt"
    if not schedule.resume:
        return False
    if not path.is_file():
        log.info("no %s yet; starting fresh", path)
        return False
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    stage.load(ckpt)
    stage.rng.bit_generator.state = ckpt["rng"]
    torch.set_rng_state(ckpt["torch_rng"].cpu())
    progress.step, progress.best, progress.elapsed = ckpt["step"], ckpt["best_psnr"], ckpt["elapsed_s"]
    if schedule.minutes and ckpt.get("args", {}).get("steps"):
        progress.steps, progress.fixed = ckpt["args"]["steps"], True  # the budget was fixed as a step count
    # A resumed run may change its settings (e.g. --steps): keep every command with the step it took over at.
    progress.history = ckpt.get("history") or [[0, ckpt.get("command", command)]]
    if command and command != progress.history[-1][1]:
        progress.history.append([progress.step, command])
    progress.command = ckpt.get("command", command)
    log.info("resumed from %s at step %d", path, progress.step)
    return True


def _read_back(pending: list[dict[str, torch.Tensor]], records: list[dict[str, float]], step: int) -> None:
    """Move the pending steps' loss terms to host floats, refusing a non-finite one."""
    if not pending:
        return
    flat = torch.cat([torch.stack([v.detach().float().reshape(()) for v in p.values()]) for p in pending])
    values = iter(flat.tolist())  # one read for all of them
    for terms in pending:
        rec = {k: next(values) for k in terms}
        if not all(math.isfinite(v) for v in rec.values()):
            raise FloatingPointError(f"non-finite loss by step {step}: {rec}")
        records.append(rec)
    pending.clear()


def _recent(records: list[dict[str, float]], window: int = 100) -> dict[str, str]:
    recent: dict[str, list[float]] = defaultdict(list)
    for r in records[-window:]:
        for k, v in r.items():
            recent[k].append(v)
    return {k: f"{np.mean(v):.4g}" for k, v in recent.items()}


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


def torch_upscaler(model: torch.nn.Module, device: torch.device):
    """The torch model behind the evaluation's interface (uint8 luma in, 0..1 float out), for validation."""

    @torch.no_grad()
    def run(lr_y: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(lr_y.astype(np.float32) / 255.0)[None, None].to(device)
        return model(x)[0, 0].float().cpu().numpy()

    return run


def validation_psnr(model: torch.nn.Module, samples: list, device: torch.device) -> float | None:
    """PSNR-Y of ``model`` on the validation ``samples`` (None without any), in eval mode, its mode kept."""
    if not samples:
        return None
    training = model.training
    model.eval()
    psnr = evaluate(samples, torch_upscaler(model, device))["model"]
    model.train(training)
    return psnr


# ---------------------------------------------------------------- settings at the command-line edge


def stage_settings(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """A stage config's own fields (all but its nested ``schedule`` and ``data``), read from the command line."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if f.name not in ("schedule", "data")}


def settings_record(cfg: Any) -> dict[str, Any]:
    """A stage config as one flat dict of plain values, nested configs spliced in: what checkpoints keep."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            out.update(settings_record(value))
        else:
            out[f.name] = str(value) if isinstance(value, Path) else value
    return out


C = TypeVar("C")


def stage_command(
    module: str,
    make_parser: Callable[[], argparse.ArgumentParser],
    from_args: Callable[[argparse.Namespace], C],
    run_stage: Callable[[C, str], dict],
    argv: list[str] | None,
) -> tuple[C, dict, str]:
    """A stage's command line: settings checked at the edge (usage and exit status 2 when they do not fit),
    logging, the command recorded in checkpoints (without ``--resume``), and a one-line error when the
    checkpoint it starts from or resumes does not fit. Returns the settings, the result and the command."""
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser()
    try:
        cfg = from_args(parser.parse_args(argv))
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    command = f"python -m {module} " + " ".join(shlex.quote(a) for a in argv if a != "--resume")
    try:
        return cfg, run_stage(cfg, command), command
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
