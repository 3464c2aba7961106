"""GAN-trained tiny generator: ECB re-parameterisation, discriminator, losses and the stage-2 loop.

The loop tests train on a few real images from ../shared/data/train and skip with the reason
when ../shared (or $SRTC_SHARED) is absent; the rest need only torch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_or_skip

torch = pytest.importorskip("torch", reason="torch not installed (pip install -e '.[train]')")

import torch.nn.functional as F  # noqa: E402

from srtc.training import losses as L  # noqa: E402
from srtc.training.arch import build, count_macs, count_params, fused  # noqa: E402
from srtc.training.discriminator import PatchDiscriminator  # noqa: E402
from srtc.training.loop import ConfigError  # noqa: E402
from srtc.training.reparam import ECB  # noqa: E402

WIDTHS = [24, 24, 16, 16]


def randomise(module: torch.nn.Module, std: float = 0.1) -> None:
    """Non-trivial values everywhere (biases and edge scales included), so no branch hides behind zeros."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)


@pytest.mark.parametrize("cin,cout,identity", [(4, 24, False), (24, 24, True), (16, 16, False), (24, 16, False)])
def test_ecb_branches_fuse_into_one_conv(cin: int, cout: int, identity: bool) -> None:
    torch.manual_seed(0)
    block = ECB(cin, cout, identity=identity)
    randomise(block)
    x = torch.randn(2, cin, 13, 17)
    ref = block.forward_branches(x)  # the six branches one by one, borders included
    conv = block.fuse()
    assert type(conv) is torch.nn.Conv2d and conv.kernel_size == (3, 3) and conv.padding == (1, 1)
    with torch.no_grad():
        assert (conv(x) - ref).abs().max().item() < 1e-5
        assert (block(x) - ref).abs().max().item() < 1e-5
        # The extra branches matter: dropping them changes the result.
        assert (block.conv3(x) - ref).abs().max().item() > 1e-2


def test_reparam_generator_fuses_under_budget_and_old_config_rebuilds() -> None:
    torch.manual_seed(0)
    model = build({"widths": WIDTHS, "reparam": True})
    randomise(model, 0.05)
    plain = fused(model)
    assert not any(isinstance(m, ECB) for m in plain.modules())
    assert count_params(plain) == 14_208 <= 15_000
    assert count_params(model) > count_params(plain)  # the training form is over-parameterised
    assert count_macs(plain) == 14_112 * 320 * 180
    x = torch.rand(2, 1, 37, 50)
    with torch.no_grad():
        assert (model(x) - plain(x)).abs().max().item() < 1e-5
    # The branches themselves, not just the online-fused forward, agree with the fused model.
    with torch.no_grad():
        u = torch.nn.functional.pixel_unshuffle(x[..., :36, :50], 2)
        f = torch.nn.functional.leaky_relu(model.head.forward_branches(u - 0.5), 0.1)
        g = torch.nn.functional.leaky_relu(plain.head(u - 0.5), 0.1)
        assert (f - g).abs().max().item() < 1e-5
    old = build({"widths": [32, 32, 16, 16]})  # a plain quarter-resolution config
    assert count_params(old) == 19_696 and not old.reparam
    assert set(old.state_dict()) == set(fused(old).state_dict())


def test_fused_export_matches_torch(tmp_path: Path) -> None:
    import onnx

    from srtc.training.export import (
        TOLERANCE,
        export_onnx,
        load_checkpoint_model,
        max_diff,
    )

    torch.manual_seed(0)
    model = build({"widths": WIDTHS, "reparam": True})
    randomise(model, 0.05)
    ema = build({"widths": WIDTHS, "reparam": True})
    randomise(ema, 0.05)
    torch.save(
        {
            "config": {"widths": WIDTHS, "reparam": True},
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "stage": "gan",
        },
        tmp_path / "c.pt",
    )
    plain, _ = load_checkpoint_model(tmp_path / "c.pt")
    assert not any(isinstance(m, ECB) for m in plain.modules())
    x = torch.rand(1, 1, 24, 30)
    with torch.no_grad():
        assert (plain(x) - ema(x)).abs().max().item() < 1e-5  # exports the EMA, not the raw weights
        assert (plain(x) - model(x)).abs().max().item() > 1e-3
    path = tmp_path / "m.onnx"
    export_onnx(plain, path)
    graph = onnx.load(str(path))
    assert [i.name for i in graph.graph.input] == ["lr"] and [o.name for o in graph.graph.output] == ["sr"]
    assert sum(n.op_type == "Conv" for n in graph.graph.node) == len(WIDTHS) + 1
    assert max_diff(plain, path) < TOLERANCE  # odd sizes and 640x360 included


def test_lr_tail_ends_at_lr_resolution_fuses_and_exports(tmp_path: Path) -> None:
    """``lr_tail``: a 1x1 expansion, shuffle to LR resolution, a 3x3 conv there; the nearest residual kept."""
    from srtc.training.export import TOLERANCE, export_onnx, max_diff

    torch.manual_seed(0)
    config = {"widths": [32, 16, 16, 16], "reparam": True, "lr_tail": 16}
    model = build(config)
    plain = fused(model)
    assert count_params(plain) == 12_116 and not any(isinstance(m, ECB) for m in plain.modules())
    x = torch.rand(1, 1, 37, 50)  # odd height: padded and cropped like the plain tail
    with torch.no_grad():
        up = plain(x)
        assert up.shape == (1, 1, 74, 100)
        # At init the tail is near zero, so the output starts as nearest-neighbour upsampling of the input.
        nearest = F.interpolate(x, scale_factor=2, mode="nearest")
        assert (up - nearest).abs().mean().item() < 0.05
    randomise(model, 0.05)
    plain = fused(model)
    with torch.no_grad():
        assert (plain(x) - model(x)).abs().max().item() < 1e-5
        assert (plain(x) - F.interpolate(x, scale_factor=2, mode="nearest")).abs().mean().item() > 0.05
    path = tmp_path / "lrt.onnx"
    export_onnx(plain, path)
    assert max_diff(plain, path) < TOLERANCE


def test_lr_tail_dense_form_is_the_same_function_with_the_same_parameters(tmp_path: Path) -> None:
    """Export's dense quarter-resolution tail: same output at even and odd sizes, same learnt weights in the
    ONNX file (the kernel is gathered from them at load), the tail's 4x multiply-adds counted."""
    import onnx

    from srtc.training.export import TOLERANCE, export_onnx, max_diff

    torch.manual_seed(1)
    model = build({"widths": [28, 16, 16, 32], "reparam": True, "lr_tail": 16})
    randomise(model, 0.05)
    plain, dense = fused(model), fused(model, dense_tail=True)
    assert dense.dense_tail and not plain.dense_tail
    for h, w in ((36, 64), (37, 51), (2, 3)):
        x = torch.rand(1, 1, h, w)
        with torch.no_grad():
            assert (dense(x) - plain(x)).abs().max().item() < 1e-5
    assert count_params(dense) == count_params(plain) == 14_736
    tail = 16 * 4 * 9 * 360 * 640  # the LR-resolution 3x3 conv, 16 -> 4, on a 640x360 input
    assert count_macs(dense) - count_macs(plain) == 4 * tail - tail
    path = tmp_path / "dense.onnx"
    export_onnx(dense, path)
    assert max_diff(dense, path) < TOLERANCE
    graph = onnx.load(str(path)).graph
    floats = sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    # The learnt weights and the gap-filling zero: no dense kernel, which alone would be 16 * 64 * 9 = 9,216 floats.
    assert floats == 14_736 + 1
    assert sum(n.op_type == "Conv" for n in graph.node) == 6  # head, 3 body, expand, dense tail


def test_discriminator_is_spectrally_normalised_and_returns_features() -> None:
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    disc = PatchDiscriminator(base=8)
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(parametrize.is_parametrized(c, "weight") for c in convs)
    for _ in range(30):  # power iterations converge; then each weight's top singular value is ~1
        disc(torch.rand(1, 1, 32, 32))
    for c in convs:
        sigma = torch.linalg.matrix_norm(c.weight.detach().flatten(1), ord=2).item()
        assert 0.9 < sigma < 1.1, sigma
    logits, feats = disc(torch.rand(3, 1, 64, 48))
    assert logits.shape[:2] == (3, 1) and logits.shape[-2:] == (8, 6)
    assert len(feats) == 5 and all(f.shape[0] == 3 for f in feats)


def test_losses_are_zero_on_the_truth_and_ragan_is_relativistic() -> None:
    gen = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 1, 32, 32, generator=gen)
    lr = L.downscale2(hr)
    assert lr.shape[-2:] == (16, 16)
    for value in (L.pixel_anchor(hr, hr), L.patch_anchor(hr, hr), L.gradient_loss(hr, hr), L.down_consistency(hr, lr)):
        assert value.item() == 0.0
    assert L.down_consistency(hr + 0.1, lr).item() == pytest.approx(0.1, abs=1e-5)
    assert L.down_consistency(hr, L.downscale2(hr, "area"), "area").item() == 0.0
    # A constant brightness offset shows in the patch anchor but not in the gradients.
    assert L.patch_anchor(hr + 0.05, hr).item() == pytest.approx(0.05, abs=1e-5)
    assert L.gradient_loss(hr + 0.05, hr).item() < 1e-6
    real, fake = torch.full((4,), 3.0), torch.full((4,), -3.0)
    assert L.ragan_d(real, fake) < L.ragan_d(fake, real)
    assert L.ragan_g(real, fake) > L.ragan_g(fake, real)
    # Relativistic: shifting both logits by the same amount changes nothing.
    assert L.ragan_d(real + 5, fake + 5).item() == pytest.approx(L.ragan_d(real, fake).item())


def gan_args(tmp_path: Path, *extra: str):
    from srtc.training import gan

    data = shared_or_skip("data", "train", "BSDS200")
    return gan.parse_config(
        [
            "--init",
            str(tmp_path / "init.pt"),
            "--data",
            str(data),
            "--val",
            "",
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "30",
            "--seed",
            "0",
            "--batch",
            "4",
            "--patch",
            "48",
            "--limit-images",
            "3",
            "--d-base",
            "8",
            "--save-every",
            "15",
            "--threads",
            "1",
            *extra,
        ]
    )


def stage1_checkpoint(path: Path) -> None:
    torch.manual_seed(0)
    model = build({"widths": WIDTHS, "reparam": True})
    torch.save({"config": {"widths": WIDTHS, "reparam": True}, "model": model.state_dict()}, path)


def test_gan_stage_runs_finite_and_resumes_to_the_same_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from srtc.training import gan, loop

    args = gan_args(tmp_path)
    stage1_checkpoint(tmp_path / "init.pt")
    (tmp_path / "cut").mkdir()
    real_save = loop.save  # every stage saves through the one training loop

    def save_and_keep_step_15(path: Path, **state) -> None:
        real_save(path, **state)
        if path.name == "last.pt" and state["step"] == 15:  # the state an interrupted run leaves
            shutil.copy(path, tmp_path / "cut" / "last.pt")

    monkeypatch.setattr(loop, "save", save_and_keep_step_15)
    summary = gan.train_gan(args)
    records = summary["records"]
    assert summary["steps"] == len(records) == 30
    assert all(np.isfinite(list(r.values())).all() for r in records)
    assert set(records[0]) == {"pixel", "patch_anchor", "down", "grad", "fm", "adv", "total", "d"}
    # From a fresh stage-1 net the anchors dominate, so the combined loss falls quickly.
    assert np.mean([r["total"] for r in records[-5:]]) < np.mean([r["total"] for r in records[:5]])
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ckpt["step"] == 30 and ckpt["ema"] is not None and ckpt["optimizer_d"]["state"]
    assert ckpt["stage"] == "gan" and ckpt["optimizer"]["state"]

    # Resume from the step-15 checkpoint (no --init needed): the same losses and weights as uninterrupted.
    monkeypatch.setattr(loop, "save", real_save)
    args_b = gan_args(tmp_path, "--resume")
    args_b = replace(args_b, init=None, schedule=replace(args_b.schedule, out=tmp_path / "cut"))
    resumed = gan.train_gan(args_b)
    assert resumed["steps"] == 30 and len(resumed["records"]) == 15
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert cut["step"] == 30
    np.testing.assert_allclose([r["total"] for r in resumed["records"]], [r["total"] for r in records[15:]], rtol=1e-4)
    for key in ("ema", "model", "disc"):
        for k, v in ckpt[key].items():
            torch.testing.assert_close(cut[key][k], v, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "flag,term",
    [
        ("--pixel", "pixel"),
        ("--patch-anchor", "patch_anchor"),
        ("--down", "down"),
        ("--grad", "grad"),
        ("--fm", "fm"),
        ("--adv", "adv"),
    ],
)
def test_each_remedy_flag_switches_its_loss_term(tmp_path: Path, flag: str, term: str) -> None:
    from srtc.training import gan

    base = gan.parse_config(["--out", str(tmp_path), "--steps", "1"])
    off = gan.parse_config(["--out", str(tmp_path), "--steps", "1", flag, "0"])
    torch.manual_seed(0)
    model = build({"widths": WIDTHS, "reparam": True})
    disc = PatchDiscriminator(8)
    lr = torch.rand(2, 1, 16, 16)
    hr = torch.rand(2, 1, 32, 32)
    sr = model(lr)
    real = disc(hr)
    on_terms = gan.generator_terms(sr, hr, lr, gan.loss_weights(base), disc, real)
    off_terms = gan.generator_terms(sr, hr, lr, gan.loss_weights(off), disc, real)
    assert term in on_terms and term not in off_terms
    weight = gan.loss_weights(base)[term]
    assert weight > 0
    expected = on_terms["total"] - weight * on_terms[term]
    assert off_terms["total"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)


def test_artifact_map_weights_grain_not_smooth_error_nor_where_the_ema_errs_more() -> None:
    """LDL's map: high on pixel-to-pixel noise, ~0 on a smooth error, 0 where the EMA errs more."""
    gen = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0.2, 0.8, 48)
    hr = (ramp[None, :] * 0.5 + ramp[:, None] * 0.5)[None, None].repeat(2, 1, 1, 1)
    noise = torch.randn(hr.shape, generator=gen) * 0.03
    smooth = hr + 0.03  # the same error size, as a flat offset
    grainy = hr + noise
    w_grain = L.artifact_map(grainy, hr, hr)  # an EMA that is exact: the generator never errs less
    w_smooth = L.artifact_map(smooth, hr, hr)
    assert w_grain.mean() > 100 * w_smooth.mean()
    assert not w_grain.requires_grad
    # Where the EMA errs more than the generator, the generator's output is kept (weight 0).
    assert L.artifact_map(grainy, hr, hr + 2 * noise).count_nonzero() == 0
    assert w_grain.count_nonzero() > 0.9 * hr.numel()
    # The loss pulls only the grainy output, with gradients to the generator.
    sr = grainy.clone().requires_grad_(True)
    loss = L.artifact_loss(sr, hr, hr)
    loss.backward()
    assert loss.item() > 0 and sr.grad.abs().sum() > 0
    assert L.artifact_loss(hr, hr, hr).item() == 0.0


def test_flat_grain_loss_penalises_noise_on_smooth_hr_only() -> None:
    gen = torch.Generator().manual_seed(0)
    hr = torch.linspace(0.3, 0.5, 40)[None, None, None, :].repeat(1, 1, 40, 1)  # a gentle ramp: flat
    hr[..., 20:] += torch.rand((1, 1, 40, 20), generator=gen) * 0.3  # the right half is busy
    noise = torch.randn(hr.shape, generator=gen) * 0.02
    left, right = torch.zeros_like(hr), torch.zeros_like(hr)
    left[..., :16], right[..., 24:] = noise[..., :16], noise[..., 24:]
    assert L.flat_grain(hr, hr).item() == 0.0
    assert L.flat_grain(hr + 0.05, hr).item() < 1e-6  # an offset has no high-pass part
    grain_left = L.flat_grain(hr + left, hr).item()
    assert grain_left > 0.01  # most of the noise's 0.016 mean |value| survives the high-pass
    assert L.flat_grain(hr + right, hr).item() < 0.05 * grain_left  # noise on busy HR is not grain
    sr = (hr + left).requires_grad_(True)
    L.flat_grain(sr, hr).backward()
    assert sr.grad[..., :16].abs().sum() > 0 and sr.grad[..., 26:].abs().sum() == 0


def test_artifact_term_needs_the_ema_output() -> None:
    from srtc.training import gan

    args = gan.parse_config(["--out", "x", "--steps", "1", "--artifact", "1000"])
    weights = gan.loss_weights(args)
    torch.manual_seed(0)
    model = build({"widths": WIDTHS, "reparam": True})
    lr, hr = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 32, 32)
    disc = PatchDiscriminator(8)
    sr = model(lr)
    with pytest.raises(ValueError, match="EMA"):
        gan.generator_terms(sr, hr, lr, weights, disc, disc(hr))
    terms = gan.generator_terms(sr, hr, lr, weights, disc, disc(hr), ema_sr=sr.detach() * 0.5)
    assert terms["artifact"].item() > 0
    without = gan.generator_terms(sr, hr, lr, {**weights, "artifact": 0.0}, disc, disc(hr))
    assert terms["total"].item() == pytest.approx(without["total"].item() + 1000 * terms["artifact"].item(), rel=1e-5)


def test_adversary_can_judge_only_the_outputs_of_clean_inputs() -> None:
    """``judged``: adv/fm from the selected samples alone; none selected, no adversarial terms this step."""
    from srtc.training import gan

    weights = gan.loss_weights(gan.parse_config(["--out", "x", "--steps", "1", "--adv", "0.05"]))
    torch.manual_seed(0)
    model = build({"widths": WIDTHS, "reparam": True})
    disc = PatchDiscriminator(8).eval()  # eval: spectral norm's power iteration holds still between calls
    lr, hr = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 32, 32)
    sr = model(lr)
    judged = torch.tensor([True, False, True, False])
    picked = gan.generator_terms(sr, hr, lr, weights, disc, disc(hr[judged]), judged=judged)
    same = gan.generator_terms(sr[judged], hr[judged], lr[judged], weights, disc, disc(hr[judged]))
    assert picked["adv"].item() == pytest.approx(same["adv"].item(), rel=1e-5)
    assert picked["fm"].item() == pytest.approx(same["fm"].item(), rel=1e-5)
    everyone = gan.generator_terms(sr, hr, lr, weights, disc, disc(hr))
    assert everyone["adv"].item() != pytest.approx(picked["adv"].item(), rel=1e-6, abs=0)
    none = gan.generator_terms(sr, hr, lr, weights, disc, None, judged=torch.zeros(4, dtype=torch.bool))
    assert "adv" not in none and "fm" not in none and "pixel" in none
    # Only the judged samples' outputs get gradients from the adversary.
    sr_leaf = sr.detach().requires_grad_(True)
    terms = gan.generator_terms(sr_leaf, hr, lr, {"adv": 1.0}, disc, disc(hr[judged]), judged=judged)
    terms["total"].backward()
    grads = sr_leaf.grad.abs().flatten(1).sum(1)
    assert (grads[judged] > 0).all() and (grads[~judged] == 0).all()


def test_codec_pairs_report_which_patches_are_coded(tmp_path: Path) -> None:
    from srtc.training import degrade

    images = shared_or_skip("data", "train", "T91")
    degrade.build_cache(
        tmp_path / "pairs",
        images,
        None,
        pairs=6,
        seed=0,
        progress=False,
        cfg=degrade.DegradeConfig(clean_share=0.5, clip_share=0.0, max_hr=(192, 192)),
    )
    data = degrade.CodecPatchPairs(tmp_path / "pairs", patch=32)
    coded_pairs = {i for i, m in enumerate(data.meta) if m.get("kbps") is not None}
    assert 0 < len(coded_pairs) < len(data.meta)
    lr, hr, coded = data.sample_coded(12, np.random.default_rng(3))
    lr2, hr2 = data.sample(12, np.random.default_rng(3))
    assert torch.equal(lr, lr2) and torch.equal(hr, hr2)  # the same draws with or without the flags
    assert coded.dtype == torch.bool and coded.shape == (12,) and 0 < int(coded.sum()) < 12


def test_ema_lags_the_generator() -> None:
    from srtc.training.gan import ema_update

    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    ema_update(a, b, 0.9)
    torch.testing.assert_close(a.weight, 0.9 * before + 0.1 * b.weight)


def test_stage1_reparam_run_checkpoints_and_exports_fused(tmp_path: Path) -> None:
    """``srtc.training.train --reparam``: the checkpoint records the ECB form and exports as the plain net."""
    from srtc.training import train
    from srtc.training.export import load_checkpoint_model

    data = shared_or_skip("data", "train", "BSDS200")
    args = train.parse_config(
        [
            "--data",
            str(data),
            "--val",
            "",
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "40",
            "--seed",
            "0",
            "--batch",
            "8",
            "--patch",
            "48",
            "--limit-images",
            "3",
            "--widths",
            "32,16,16,16",
            "--reparam",
            "--threads",
            "1",
            "--save-every",
            "20",
        ]
    )
    summary = train.train(args)
    assert summary["steps"] == 40 and all(np.isfinite(summary["losses"]))
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ckpt["config"] == {"widths": [32, 16, 16, 16], "reparam": True}
    trained = build(ckpt["config"])
    trained.load_state_dict(ckpt["model"])
    plain, _ = load_checkpoint_model(tmp_path / "run" / "last.pt")
    assert count_params(plain) == 12_768 and not any(isinstance(m, ECB) for m in plain.modules())
    x = torch.rand(1, 1, 30, 41)
    with torch.no_grad():
        assert (plain(x) - trained(x)).abs().max().item() < 1e-5
    # A plain (old-style) resume refuses the reparam checkpoint instead of silently mixing forms.
    plain = replace(args, reparam=False, schedule=replace(args.schedule, resume=True))
    with pytest.raises(ConfigError, match="differs"):
        train.train(plain)


def test_down_consistency_targets_the_lr_before_the_codec():
    """On a codec pair, the HR itself must score ~0 against the clean target, not against the damaged input."""
    import torch
    import torch.nn.functional as F

    from srtc.training import gan
    from srtc.training import losses as L

    torch.manual_seed(0)
    hr = F.avg_pool2d(torch.rand(1, 1, 64, 64), 1)
    clean = L.downscale2(hr)
    damaged = (clean + 0.08 * torch.randn_like(clean)).clamp(0, 1)  # what a codec would hand the model
    weights = {name: 0.0 for name in gan.REMEDIES} | {"down": 1.0}
    to_clean = gan.generator_terms(hr, hr, damaged, weights, down_target="clean")["down"]
    to_input = gan.generator_terms(hr, hr, damaged, weights, down_target="input")["down"]
    assert to_clean.item() < 1e-6 < 0.03 < to_input.item()


def test_temporal_term_on_clip_pairs_and_resume_keeps_its_weight(tmp_path: Path) -> None:
    """``--temporal``: the stage adds the frame-to-frame term (from clip pairs) and a resume must keep its weight."""
    from srtc.training import degrade, gan

    images = shared_or_skip("data", "train", "T91")
    degrade.build_cache(
        tmp_path / "pairs",
        images,
        None,
        pairs=6,
        seed=0,
        progress=False,
        cfg=degrade.DegradeConfig(clean_share=0.0, clip_share=1.0, max_hr=(192, 192)),
    )
    stage1_checkpoint(tmp_path / "init.pt")
    args = gan_args(
        tmp_path,
        "--pairs",
        str(tmp_path / "pairs"),
        "--temporal",
        "2",
        "--temporal-batch",
        "3",
        "--steps",
        "6",
        "--save-every",
        "6",
    )
    records = gan.train_gan(args)["records"]
    assert len(records) == 6 and all(r["temporal"] > 0 for r in records)
    assert all(r["total"] > 2 * r["temporal"] for r in records)  # the term is in the total, with its weight
    args_b = gan_args(tmp_path, "--pairs", str(tmp_path / "pairs"), "--temporal", "1", "--steps", "8", "--resume")
    with pytest.raises(ConfigError, match="differ"):
        gan.train_gan(args_b)
    with pytest.raises(ConfigError, match="--pairs"):
        gan_args(tmp_path / "x", "--temporal", "1")
