"""Tests for the models package: training, export contract, shipped model, evaluation protocol.

Tests that need torch skip when it is not installed (it is in the ``train`` extra); tests that
need images skip when ``../shared/data`` (next to the repository, or $SRTC_SHARED/data) is absent.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from srtc.server.config import CLIENT_DIR
from srtc.shared import SHARED
from srtc.zoo import MANIFEST_PATH

ROOT = Path(__file__).resolve().parents[1]
DATA = SHARED / "data"
SAMPLES = CLIENT_DIR / "samples"
SET5 = DATA / "benchmarks" / "Set5"

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch not installed (pip install -e '.[train]')")
needs_data = pytest.mark.skipif(not SET5.is_dir(), reason=f"shared data not found at {DATA}")


@needs_torch
@needs_data
@pytest.mark.shared
def test_short_training_lowers_loss(tmp_path: Path) -> None:
    import torch
    import torch.nn.functional as F

    from srtc.training import train
    from srtc.training.arch import build
    from srtc.training.data import PatchPairs

    args = train.parse_config(
        [
            "--data",
            str(DATA / "train" / "BSDS200"),
            "--val",
            "",
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "150",
            "--seed",
            "0",
            "--batch",
            "16",
            "--patch",
            "48",
            "--limit-images",
            "6",
            "--save-every",
            "50",
        ]
    )
    # The same fixed batch scores the initial and the trained weights, so the check is not noisy.
    pairs = PatchPairs(args.data.data, args.data.patch, args.data.limit_images)
    lr_b, hr_b = pairs.sample(64, np.random.default_rng(123))
    torch.manual_seed(args.schedule.seed)
    initial = build({"widths": list(args.widths)})
    summary = train.train(args)
    assert summary["steps"] == len(summary["losses"]) == 150
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    trained = build(ckpt["config"])
    trained.load_state_dict(ckpt["model"])
    with torch.no_grad():
        before = F.l1_loss(initial(lr_b), hr_b).item()
        after = F.l1_loss(trained(lr_b), hr_b).item()
    assert after < 0.97 * before, (before, after)  # about 0.95 after 150 steps
    assert (tmp_path / "run" / "best.pt").is_file()


@needs_torch
def test_export_matches_torch(tmp_path: Path) -> None:
    import onnx
    import torch

    from srtc.training.arch import QuarterResSR, count_params
    from srtc.training.export import TOLERANCE, export_onnx, max_diff

    torch.manual_seed(0)
    model = QuarterResSR()
    assert count_params(model) <= 20_000
    path = tmp_path / "m.onnx"
    export_onnx(model, path)
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version == 17
    assert [i.name for i in graph.graph.input] == ["lr"]
    assert [o.name for o in graph.graph.output] == ["sr"]
    assert max_diff(model, path) < TOLERANCE  # includes odd sizes and 640x360


@needs_torch
def test_written_graph_is_the_traced_graph_without_its_plumbing(tmp_path: Path) -> None:
    """srtc.training.graph writes what torch's tracer exports, to the bit, on a real-looking frame of even and of odd
    size; an even frame meets no pad, crop or transpose outside the If branches that only odd frames take."""
    import onnx
    import onnxruntime as ort
    import torch

    from srtc.training.arch import QuarterResSR
    from srtc.training.graph import quarter_res_graph

    torch.manual_seed(3)
    model = QuarterResSR(widths=(32, 16, 16, 16)).eval()
    for conv in (model.head, *model.body, model.tail):  # a trained-looking net: every layer contributes
        torch.nn.init.normal_(conv.weight, std=0.08)
    traced = tmp_path / "traced.onnx"
    torch.onnx.export(
        model,
        (torch.rand(1, 1, 64, 96),),
        str(traced),
        dynamo=False,
        opset_version=17,
        input_names=["lr"],
        output_names=["sr"],
        dynamic_axes={"lr": {2: "h", 3: "w"}, "sr": {2: "h2", 3: "w2"}},
    )
    written = quarter_res_graph(model)
    a = ort.InferenceSession(str(traced), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(written.SerializeToString(), providers=["CPUExecutionProvider"])
    ramp = np.add.outer(np.arange(90), 2 * np.arange(160)) % 256
    texture = (ramp + 40 * np.sin(np.arange(160) / 3.0)[None]).clip(0, 255)
    for h, w in ((90, 160), (89, 159), (90, 159)):
        x = (texture[:h, :w] / 255.0).astype(np.float32)[None, None]
        out = b.run(None, {"lr": x})[0]
        assert out.shape == (1, 1, 2 * h, 2 * w)
        assert np.array_equal(out, a.run(None, {"lr": x})[0])
        assert out.std() > 0.05  # real content, not a flat plane
    top = [n.op_type for n in written.graph.node]
    assert "SpaceToDepth" in top and not {"Pad", "Transpose"} & set(top)
    assert top.count("If") == 2 and top.count("Slice") == 2  # the two shape slices; the crop is in a branch
    slices = [n for n in written.graph.node if n.op_type == "Slice"]
    assert all(n.input[0] in ("lr_shape", "hr_shape") for n in slices)
    onnx.checker.check_model(written)


def test_manifest_shape_and_resolve() -> None:
    from srtc.zoo import MANIFEST_PATH, ROLES, load_manifest, resolve, sha256_of

    manifest = load_manifest()
    assert set(manifest) == {*ROLES, "models"}
    keys = {"file", "sha256", "kind", "precision", "params", "scale", "description", "recipe"}
    for name, entry in manifest["models"].items():
        assert keys <= set(entry) <= keys | {"fallback", "role", "reference"}, name
        assert sha256_of(MANIFEST_PATH.parent / entry["file"]) == entry["sha256"], (
            f"{name}: the file is not the one listed"
        )
        assert "\n" not in entry["description"] and len(entry["description"]) < 200, f"{name}: one line"
        # an int8 build names the fp32 model it was made from: the server's self-check compares the two
        assert (entry["precision"] == "int8") == ("reference" in entry), name
        assert entry["scale"] == 2 and entry["params"] <= 20_000, name
        if "fallback" in entry:  # the governor's step down: a faster build of the same net
            fallback = manifest["models"][entry["fallback"]]
            assert fallback["role"] == "fallback" and fallback["params"] == entry["params"], name
        assert resolve(name) == MANIFEST_PATH.parent / entry["file"]
    for role in ROLES:
        assert manifest[role] in manifest["models"] and resolve(role) == resolve(manifest[role])
    assert manifest["models"][manifest["fidelity"]]["kind"] == "fidelity"
    assert resolve(None) == resolve(manifest["default"])
    with pytest.raises(FileNotFoundError, match="no_such_model.onnx"):
        resolve("no_such_model.onnx")


def test_every_recipe_leads_to_the_file_it_ships() -> None:
    """Each shipped model's recipe ends by exporting (or quantising) that very file, and a checkpoint it
    exports is one an earlier step writes or one the checkout carries."""
    import shlex

    from srtc.zoo import MANIFEST_PATH, load_manifest

    for name, entry in load_manifest()["models"].items():
        recipe = MANIFEST_PATH.parent / entry["recipe"]
        steps = [
            shlex.split(line)
            for line in recipe.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith(("#", "set "))
        ]
        written: set[str] = set()
        for words in steps:
            if words[0] == "cp":
                written.add(words[-1])
            elif "srtc.training.export" in words:
                ckpt = words[words.index("--ckpt") + 1]
                made = any(ckpt.startswith(out.rstrip("/") + "/") for out in written)
                assert ckpt in written or made or (ROOT / ckpt).is_file(), (
                    f"{name}: exports {ckpt}, which nothing writes"
                )
            elif "--out" in words:
                written.add(words[words.index("--out") + 1])
        last = steps[-1] if steps[-1][0] != "cp" else steps[-2]
        out = last[last.index("--export" if "--export" in last else "--out") + 1]
        assert Path(out).name == entry["file"], f"{name}: the recipe's last step makes {out}"


@needs_torch
def test_export_records_the_copy_out_of_the_run_folder(tmp_path: Path) -> None:
    from srtc.training.export import copy_step

    final = {"step": 500, "args": {"out": "runs/r1", "steps": 500}}
    assert copy_step(final, "checkpoints/m_stage1.pt") == "cp runs/r1/last.pt checkpoints/m_stage1.pt"
    assert copy_step({**final, "step": 300}, "checkpoints/m_stage1.pt").startswith("cp runs/r1/best.pt ")
    stopped = {"step": 300, "args": {"out": "runs/r1", "steps": 500, "stop_at": 300}}  # --stop-at 300
    assert copy_step(stopped, "checkpoints/m_stage1.pt").startswith("cp runs/r1/last.pt ")
    assert copy_step(final, "runs/r1/last.pt") == ""  # exported where it was trained: nothing to copy
    assert copy_step({"step": 1}, tmp_path / "old.pt") == ""  # checkpoints from before ``args`` was kept


@needs_data
@pytest.mark.shared
def test_default_model_beats_bicubic() -> None:
    from srtc.training.evaluate import evaluate, load_samples, onnx_upscaler
    from srtc.training.speed import make_session
    from srtc.zoo import resolve

    sess = make_session(resolve(None))
    samples = load_samples(SET5)
    x = samples[0].lr_y.astype(np.float32)[None, None] / 255.0
    out = sess.run(None, {"lr": x})[0]
    assert out.shape == (1, 1, 2 * x.shape[2], 2 * x.shape[3])
    assert out.dtype == np.float32

    result = evaluate(samples, onnx_upscaler(resolve(None)))
    for row in result["images"]:
        assert row["model"] > row["bicubic"], row
    # The default is trained for coded video (the video-aware GAN) and gives up 1.3 dB of
    # clean-image quality for it (model card, "perceptual_video_x2"); on clean LR it must still be far above
    # bicubic (+1.46 dB on Set5 when written; a net that only blurred or copied would be near or below 0).
    assert result["model"] > result["bicubic"] + 1.2


def shipped_models() -> list[str]:
    import json

    return sorted(json.loads(MANIFEST_PATH.read_text())["models"])


@needs_torch
@needs_data
@pytest.mark.shared
@pytest.mark.parametrize("name", shipped_models())
def test_every_shipped_model_handles_full_range_grey_input(name: str) -> None:
    """Set14's grey image (bridge) gives the model Y from 0 to 255, where every training input is the limited-range
    Y of an RGB image (16..235). A net can learn to misbehave out there (a warm restart of a full-resolution generator
    once put out 0-12 for 40-49 in bridge's dark areas, below bicubic, with 10x the flat-region noise). Every
    shipped model must stay above bicubic there (all do by 0.7 dB or more) without that noise (all at 2.5 or
    less). One case per model, so one failure never hides another."""
    import json

    from srtc.training.evaluate import (
        SHAVE,
        image_metrics,
        load_samples,
        onnx_upscaler,
        to_display,
    )
    from srtc.training.imaging import psnr

    (bridge,) = [s for s in load_samples(DATA / "benchmarks" / "Set14") if s.name == "bridge"]
    assert bridge.lr_y.min() < 16 and bridge.lr_y.max() > 235
    bicubic = psnr(bridge.bicubic_y, bridge.hr_y, SHAVE)
    info = json.loads(MANIFEST_PATH.read_text())["models"][name]
    upscale = onnx_upscaler(MANIFEST_PATH.parent / info["file"], threads=1)
    metrics = image_metrics(to_display(upscale(bridge.lr_y)), bridge.hr_y, bridge.lr_y)
    assert metrics["psnr"] > bicubic + 0.3, (name, metrics["psnr"], bicubic)
    assert metrics["flat_noise"] < 4.0, (name, metrics["flat_noise"])


@needs_data
@pytest.mark.shared
def test_bicubic_reproduces_set5_reference() -> None:
    from srtc.training.evaluate import evaluate, load_samples

    samples = load_samples(SET5)
    bicubic = evaluate(samples, lambda lr: np.zeros((2 * lr.shape[0], 2 * lr.shape[1])))["bicubic"]
    assert abs(bicubic - 33.66) < 0.05, bicubic


@needs_torch
def test_short_training_on_a_codec_aware_cache_lowers_loss(tmp_path: Path) -> None:
    """--pairs: the loop trains on degraded pairs from srtc.training.degrade's cache just as on clean images."""
    from srtc.training import train
    from srtc.training.degrade import build_cache

    samples = SAMPLES
    cache = build_cache(tmp_path / "cache", samples, None, pairs=6, seed=0, progress=False)
    args = train.parse_config(
        [
            "--pairs",
            str(cache),
            "--val",
            "",
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "120",
            "--seed",
            "0",
            "--batch",
            "16",
            "--patch",
            "48",
            "--save-every",
            "60",
        ]
    )
    summary = train.train(args)
    losses = summary["losses"]
    assert summary["steps"] == 120
    assert np.mean(losses[-20:]) < 0.97 * np.mean(losses[:20]), (np.mean(losses[:20]), np.mean(losses[-20:]))


@needs_torch
def test_init_starts_a_fine_tune_from_another_runs_weights(tmp_path: Path) -> None:
    """--init: same weights as the source checkpoint at step 0, fresh step count; a config mismatch is refused."""
    import torch

    from srtc.training import train
    from srtc.training.loop import ConfigError

    base = ["--data", str(SAMPLES), "--val", "", "--seed", "0", "--batch", "4", "--patch", "48", "--save-every", "5"]
    train.train(train.parse_config(base + ["--out", str(tmp_path / "a"), "--steps", "10"]))
    source = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    tuned = train.train(
        train.parse_config(
            base
            + [
                "--out",
                str(tmp_path / "b"),
                "--steps",
                "1",
                "--lr",
                "1e-12",
                "--min-lr",
                "1e-12",
                "--init",
                str(tmp_path / "a" / "last.pt"),
            ]
        )
    )
    assert tuned["steps"] == 1
    after = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    for name, value in source["model"].items():  # a 1e-12 step cannot move the weights measurably
        assert torch.allclose(after["model"][name], value, atol=1e-6), name
    with pytest.raises(ConfigError, match="config"):
        train.train(
            train.parse_config(
                base
                + [
                    "--out",
                    str(tmp_path / "c"),
                    "--steps",
                    "1",
                    "--widths",
                    "16,16",
                    "--init",
                    str(tmp_path / "a" / "last.pt"),
                ]
            )
        )


@needs_torch
def test_stop_at_splits_one_schedule_and_resume_finishes_it(tmp_path: Path) -> None:
    """--stop-at N ends the session at step N on the full schedule's learning rate; --resume then ends
    exactly where an uninterrupted run does (same weights), so a split run is the run its command names."""
    import torch

    from srtc.training import loop, train

    base = [
        "--data",
        str(SAMPLES),
        "--val",
        "",
        "--seed",
        "0",
        "--batch",
        "4",
        "--patch",
        "48",
        "--save-every",
        "5",
        "--steps",
        "12",
        "--lr",
        "1e-2",
    ]
    whole = train.train(train.parse_config(base + ["--out", str(tmp_path / "whole")]))
    first = train.train(train.parse_config(base + ["--out", str(tmp_path / "split"), "--stop-at", "7"]))
    assert first["steps"] == 7 and whole["steps"] == 12
    stopped = torch.load(tmp_path / "split" / "last.pt", weights_only=False)
    assert stopped["step"] == 7  # saved at the stop, although 7 is not a --save-every step
    # still on the 12-step schedule: the lr of step 6 is the 12-step cosine's, not the end of a 7-step one
    assert stopped["optimizer"]["param_groups"][0]["lr"] == pytest.approx(loop.cosine_lr(6, 12, 1e-2, 1e-5))
    rest = train.train(train.parse_config(base + ["--out", str(tmp_path / "split"), "--resume"]))
    assert rest["steps"] == 12
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=False)["model"]
    for name, value in a.items():
        assert torch.allclose(b[name], value, atol=1e-6), name
    assert any(not torch.equal(stopped["model"][name], b[name]) for name in b)  # the resumed steps trained


def test_the_manifest_command_lists_every_phase_of_a_resumed_run() -> None:
    from srtc.training.export import training_command

    plain = {"command": "python -m srtc.training.train --steps 10"}
    assert training_command(plain) == "python -m srtc.training.train --steps 10"
    resumed = {
        "command": "python -m srtc.training.train --steps 10",
        "history": [[0, "python -m srtc.training.train --steps 10"], [4, "python -m srtc.training.train --steps 8"]],
    }
    text = training_command(resumed)
    assert text.startswith("python -m srtc.training.train --steps 10 ;")
    assert "(stopped at step 4) python -m srtc.training.train --steps 8 --resume" in text


def test_a_re_export_keeps_the_models_registered_fallback(tmp_path: Path) -> None:
    """Re-exporting a model (new weights, new description) must not drop the int8 fallback srtc.training.qat
    registered for it, or the governor would lose its step down, nor the role it was given; the entry's
    sha256 follows the new file, and the command that made it becomes its recipe."""
    import json

    from srtc.training.export import update_manifest
    from srtc.zoo import sha256_of

    path = tmp_path / "manifest.json"
    (tmp_path / "m.onnx").write_bytes(b"first weights")
    update_manifest(
        "m",
        {
            "file": "m.onnx",
            "params": 1,
            "command": "python -m srtc.training.train --steps 10 && "
            "python -m srtc.training.export --ckpt runs/m/last.pt --name m",
        },
        make_default=True,
        path=path,
    )
    manifest = json.loads(path.read_text())
    assert manifest["default"] == "m" and manifest["models"]["m"]["recipe"] == "recipes/m.sh"
    recipe = (tmp_path / "recipes" / "m.sh").read_text().splitlines()
    assert recipe[-2:] == [
        "python -m srtc.training.train --steps 10",
        "python -m srtc.training.export --ckpt runs/m/last.pt --name m",
    ]
    manifest["models"]["m"]["fallback"] = "m_int8"
    manifest["models"]["m"]["role"] = "fallback"
    path.write_text(json.dumps(manifest))
    (tmp_path / "m.onnx").write_bytes(b"new weights")
    update_manifest("m", {"file": "m.onnx", "params": 2}, make_default=False, path=path)
    manifest = json.loads(path.read_text())
    assert manifest["models"]["m"] == {
        "file": "m.onnx",
        "sha256": sha256_of(tmp_path / "m.onnx"),
        "role": "fallback",
        "params": 2,
        "fallback": "m_int8",
        "recipe": "recipes/m.sh",
    }
    assert manifest["default"] == "m"


def test_slope_anneals_from_leaky_to_the_target_and_is_recorded() -> None:
    torch = pytest.importorskip("torch", reason="torch not installed (pip install -e '.[train]')")
    from srtc.training import train
    from srtc.training.arch import build, fused

    assert train.annealed_slope(0, 100, 0.0) == pytest.approx(0.1)
    assert train.annealed_slope(50, 100, 0.0) == pytest.approx(0.05)
    assert train.annealed_slope(100, 100, 0.0) == train.annealed_slope(500, 100, 0.0) == 0.0
    args = train.parse_config(["--out", "x", "--steps", "1", "--reparam", "--slope", "0"])
    config = train.model_config(args)
    assert config["slope"] == 0.0
    net = fused(build(config))  # a ReLU net exports Relu, which int8 folds into the conv
    assert net.slope == 0.0
    x = torch.rand(1, 1, 8, 8) - 0.5
    assert torch.equal(net.act(x), torch.relu(x))


def test_interleaved_timing_takes_turns_and_ratios_are_per_round() -> None:
    """``srtc.training.speed --interleave``: one run of each model per round, and ratios taken within rounds, so
    a load spike in one round cannot favour one model (behaviour only; no wall-clock figure is asserted)."""
    from srtc.training.speed import ratio_to, time_interleaved

    models = MANIFEST_PATH.parent
    times = time_interleaved(
        [models / "fidelity_fast_x2.onnx", models / "fidelity_x2.onnx"], 36, 64, threads=1, rounds=4, warmup=1
    )
    assert [len(t) for t in times] == [4, 4] and all(v > 0 for t in times for v in t)
    # a 10x spike in one round moves a whole-run ratio of medians or means, not the median per-round ratio
    assert ratio_to([2.0, 4.0, 60.0, 8.0], [1.0, 2.0, 30.0, 4.0]) == 2.0
    assert ratio_to([1.0, 1.0, 1.0], [1.0, 10.0, 1.0]) == 1.0
