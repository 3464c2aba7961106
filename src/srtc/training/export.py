"""Export a trained checkpoint to ONNX under the contract, verify it, and list it in the manifest.

``python -m srtc.training.export --ckpt runs/NAME/best.pt --name NAME --out src/srtc/zoo/NAME.onnx [--default]``

Contract: input "lr" float32 [1,1,H,W] (luma/255), output "sr" float32 [1,1,2H,2W], H and W
dynamic, opset 17, legacy (TorchScript) exporter.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from srtc.runtime import open_session
from srtc.zoo import MANIFEST_PATH, ROLES

from .arch import QuarterResSR, checkpoint_generator, count_macs, count_params, fused
from .graph import OPSET, quarter_res_graph

log = logging.getLogger(__name__)

TOLERANCE = 1e-4


def export_onnx(model: nn.Module, path: str | Path) -> None:
    """Write ``model`` as ONNX with the contract's names, dynamic H/W and opset.

    A quarter-resolution generator is written node by node (``srtc.training.graph``: same output, less
    plumbing per frame); other networks are traced by torch's legacy exporter.
    """
    model = model.eval().cpu()
    if isinstance(model, QuarterResSR) and not model.reparam and (model.dense_tail or not model.lr_tail):
        onnx.save(quarter_res_graph(model), str(path))
        return
    dummy = torch.rand(1, 1, 64, 96)
    with warnings.catch_warnings():
        # The contract asks for the legacy exporter on purpose; its deprecation notices are noise.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["lr"],
            output_names=["sr"],
            dynamic_axes={"lr": {2: "h", 3: "w"}, "sr": {2: "h2", 3: "w2"}},
        )
    onnx.checker.check_model(onnx.load(str(path)))


def max_diff(
    model: nn.Module, path: str | Path, sizes: tuple[tuple[int, int], ...] = ((64, 96), (37, 51), (360, 640))
) -> float:
    """Largest |onnxruntime - torch| over random inputs of several sizes (odd ones included), relative
    to the output's largest magnitude where that exceeds 1.

    Uniform noise is the hardest input (every pixel an edge), and it drives a deep net's output far
    outside 0..1 (a 60k-parameter quarter-resolution net: +-470), where float32 accumulation order
    alone differs by ~1e-6 of the value; on real frames both runtimes agree to 2e-7.
    """
    sess = open_session(path)
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    model = model.eval().cpu()
    for h, w in sizes:
        x = torch.rand(1, 1, h, w, generator=gen)
        with torch.no_grad():
            ref = model(x).numpy()
        out = sess.run(["sr"], {"lr": x.numpy()})[0]
        if out.shape != (1, 1, 2 * h, 2 * w):
            raise ValueError(f"ONNX output shape {out.shape} for input {(1, 1, h, w)}")
        worst = max(worst, float(np.abs(out - ref).max() / max(1.0, np.abs(ref).max())))
    return worst


def load_checkpoint_model(ckpt_path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the generator of a training checkpoint as the plain net that is exported.

    Takes the EMA weights when the checkpoint has them (stage 2, ``srtc.training.gan``) and folds
    re-parameterised (ECB) convs into plain 3x3 convs, and runs an LR-resolution tail in its dense
    quarter-resolution form (same output, faster in onnxruntime); returns (model, checkpoint).
    """
    ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=False)
    return fused(checkpoint_generator(ckpt), dense_tail=True).eval(), ckpt


ENTRY_ORDER = (
    "file",
    "sha256",
    "kind",
    "precision",
    "role",
    "reference",
    "params",
    "scale",
    "fallback",
    "description",
    "recipe",
)


def update_manifest(name: str, entry: dict, make_default: bool, path: Path = MANIFEST_PATH) -> None:
    """Add or replace ``name`` in the manifest; it becomes default if asked or if none is set.

    The entry gets the file's sha256; its ``"command"`` (the shell steps that made the file, joined by
    `` && ``) becomes ``recipes/NAME.sh`` beside the manifest, and the entry names that file.
    """
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    previous = manifest.setdefault("models", {}).get(name, {})
    # Registered after export (a "fallback" by srtc.training.qat, a "role" by hand): a re-export keeps them.
    entry = {**entry, **{k: previous[k] for k in ("fallback", "role", "recipe") if k in previous and k not in entry}}
    entry["sha256"] = hashlib.sha256((path.parent / entry["file"]).read_bytes()).hexdigest()
    command = entry.pop("command", "")
    if command:
        recipe = Path("recipes") / f"{name}.sh"
        (path.parent / recipe).parent.mkdir(exist_ok=True)
        (path.parent / recipe).write_text(recipe_text(name, command), encoding="utf-8")
        entry["recipe"] = recipe.as_posix()
    manifest["models"][name] = {k: entry[k] for k in ENTRY_ORDER if k in entry} | entry
    if make_default or manifest.get("default") not in manifest["models"]:
        manifest["default"] = name
    ordered = {key: manifest[key] for key in ROLES if manifest.get(key) in manifest["models"]}
    path.write_text(json.dumps({**ordered, "models": manifest["models"]}, indent=2) + "\n", encoding="utf-8")


def recipe_text(name: str, command: str) -> str:
    """A shell script of the steps in ``command`` (`` && `` between steps; `` ; (stopped at step N) `` where
    a run was resumed with other settings), one step per line."""
    lines = [
        "#!/usr/bin/env bash",
        f"# How {name} was made. Run from the checkout's root with the train extra installed and ../shared",
        "# beside it; the data and the published teacher it names are described in ../shared/data/SOURCES.md.",
        "set -euo pipefail",
        "",
    ]
    for part in command.split(" ; "):
        match = re.match(r"\(stopped at step (\d+)\) (.*)", part)
        if match:
            lines.append(f"# the run above was stopped at step {match.group(1)} and resumed with:")
            part = match.group(2)
        lines.extend(step.strip() for step in part.split(" && "))
    return "\n".join(lines) + "\n"


def training_command(ckpt: dict) -> str:
    """The command(s) that trained ``ckpt``: a resumed run with changed settings lists each, with its step."""
    history = ckpt.get("history") or []
    if len(history) <= 1:
        return ckpt.get("command", "")
    parts = [history[0][1]] + [f"(stopped at step {step}) {cmd} --resume" for step, cmd in history[1:]]
    return " ; ".join(parts)


def copy_step(ckpt: dict, ckpt_path: str | Path) -> str:
    """``cp RUN/last.pt CKPT`` when the exported checkpoint was copied out of the run folder that trained it.

    Why: shipped checkpoints live in ``checkpoints`` while training writes to ``--out``; a manifest
    command that trains into one and exports the other does not lead from the data to the file. A
    checkpoint of the run's final step (or of its ``--stop-at`` step) is its ``last.pt``, any other its ``best.pt``.
    """
    args = ckpt.get("args") or {}
    out = args.get("out")
    if not out or Path(out).resolve() == Path(ckpt_path).resolve().parent:
        return ""
    step = ckpt.get("step")
    final = step is not None and step in (args.get("steps"), args.get("stop_at"))  # --stop-at ends a session there
    name = "last.pt" if final else "best.pt"
    return f"cp {shlex.quote((Path(out) / name).as_posix())} {shlex.quote(Path(ckpt_path).as_posix())}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="training checkpoint (.pt)")
    ap.add_argument("--name", required=True, help="model name in the manifest")
    ap.add_argument("--out", help="ONNX path (default src/srtc/zoo/NAME.onnx)")
    ap.add_argument("--description", default="", help="manifest description")
    ap.add_argument("--default", action="store_true", help="make this the manifest default")
    ap.add_argument("--no-manifest", action="store_true", help="only export and check")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    out = Path(args.out) if args.out else MANIFEST_PATH.parent / f"{args.name}.onnx"
    model, ckpt = load_checkpoint_model(args.ckpt)
    export_onnx(model, out)
    diff = max_diff(model, out)
    log.info("exported %s; max |onnxruntime - torch| = %.2e (relative where the output exceeds 1)", out, diff)
    if diff >= TOLERANCE:
        raise SystemExit(f"ONNX output differs from torch by {diff:.2e} (>= {TOLERANCE})")
    if args.no_manifest:
        return

    try:
        file = out.resolve().relative_to(MANIFEST_PATH.parent)
    except ValueError as err:
        raise SystemExit(f"--out must lie inside {MANIFEST_PATH.parent} to be listed") from err
    export_cmd = "python -m srtc.training.export " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    train_cmd = " && ".join(c for c in (training_command(ckpt), copy_step(ckpt, args.ckpt)) if c)
    params = count_params(model)
    entry = {
        "file": file.as_posix(),
        "kind": "perceptual" if ckpt.get("stage") == "gan" else "fidelity",
        "precision": "fp32",
        "params": params,
        "scale": 2,
        "description": args.description
        or (
            f"Y-only x2 {type(model).__name__} {ckpt['config']}, {params} params, "
            f"{count_macs(model) / 1e9:.2f} GMAC at 640x360"
        ),
        "command": f"{train_cmd} && {export_cmd}" if train_cmd else export_cmd,
    }
    update_manifest(args.name, entry, args.default)
    log.info("manifest %s: %s%s", MANIFEST_PATH, args.name, " (default)" if args.default else "")


if __name__ == "__main__":
    main()
