"""The full-resolution fidelity generator, and the on-device patch sampler that GPU training uses."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import shared_or_skip

torch = pytest.importorskip("torch", reason="torch not installed (pip install -e '.[train]')")

from srtc.training.arch import build, count_macs, count_params, fused  # noqa: E402
from srtc.training.data import DevicePatches, PatchPairs, stretch_full_range  # noqa: E402
from srtc.training.fullres import FullResSR  # noqa: E402
from srtc.training.loop import ConfigError  # noqa: E402


def randomise(module: torch.nn.Module, std: float = 0.1) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)


def test_full_res_m6c16_fits_the_budget_and_fuses_exactly() -> None:
    model = build({"widths": [16] * 7, "reparam": True, "full_res": True})
    assert isinstance(model, FullResSR)
    randomise(model)
    plain = fused(model)
    assert count_params(plain) == 14_660 <= 15_000
    assert count_macs(plain) == 14_544 * 640 * 360  # every weight once per LR pixel (biases are not MACs)
    x = torch.rand(2, 1, 37, 52)
    with torch.no_grad():
        out, ref = plain(x), model(x)
    assert out.shape == (2, 1, 74, 104)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_full_res_starts_as_nearest_and_exports_under_the_contract(tmp_path: Path) -> None:
    from srtc.training.export import TOLERANCE, export_onnx, max_diff

    torch.manual_seed(0)
    model = build({"widths": [16, 16, 16], "full_res": True})
    x = torch.rand(1, 1, 20, 30)
    with torch.no_grad():  # the tail starts near zero: the output is close to nearest-neighbour upsampling
        assert (model(x) - x.repeat_interleave(2, 2).repeat_interleave(2, 3)).abs().max() < 0.1
    randomise(model)
    path = tmp_path / "full.onnx"
    export_onnx(fused(model), path)
    assert max_diff(fused(model), path) < TOLERANCE


def test_mix_tail_fuses_exactly_starts_as_nearest_and_exports(tmp_path: Path) -> None:
    """``mix=16``: a 3x3 tail to 16 features and a 1x1 conv to the 4 sub-pixels (ETDS's ending)."""
    from srtc.training.export import TOLERANCE, export_onnx, max_diff

    torch.manual_seed(0)
    model = build({"widths": [16] * 6, "reparam": True, "full_res": True, "mix": 16})
    x = torch.rand(1, 1, 20, 30)
    with torch.no_grad():  # the 1x1 mixing conv starts near zero: close to nearest-neighbour upsampling
        assert (model(x) - x.repeat_interleave(2, 2).repeat_interleave(2, 3)).abs().max() < 0.1
    randomise(model)
    plain = fused(model)
    assert count_params(plain) == 14_148 <= 15_000  # M5C16's 12,340 + a 16-wide tail and its 1x1 mix
    assert count_macs(plain) == (16 * 9 + 5 * 16 * 16 * 9 + 16 * 16 * 9 + 16 * 4) * 640 * 360
    with torch.no_grad():
        assert torch.allclose(plain(x), model(x), atol=1e-5)
    path = tmp_path / "mix.onnx"
    export_onnx(plain, path)
    assert max_diff(plain, path) < TOLERANCE
    import onnx

    kernels = [
        list(n.attribute[[a.name for a in n.attribute].index("kernel_shape")].ints)
        for n in onnx.load(str(path)).graph.node
        if n.op_type == "Conv"
    ]
    assert kernels[-1] == [1, 1] and kernels[-2] == [3, 3] and len(kernels) == 8


def test_mix_needs_the_full_resolution_generator(tmp_path: Path) -> None:
    from srtc.training import train

    with pytest.raises(ConfigError, match="--full-res"):
        train.parse_config(["--out", str(tmp_path), "--steps", "1", "--mix", "16"])
    with pytest.raises(ValueError, match="mix"):
        FullResSR((16, 16), mix=-1)


def test_mix_net_quantisation_simulation_finds_every_rounding_point(tmp_path: Path) -> None:
    """QAT (srtc.training.qat) takes the 1x1 mixing conv as one more conv: every rounding point it simulates
    is a tensor of the exported graph, and the int8 graph computes what the simulation computes."""
    import onnx

    from srtc.training import qat
    from srtc.training.evaluate import onnx_upscaler, to_display
    from srtc.training.export import export_onnx
    from srtc.training.imaging import psnr
    from tests.test_qat import as_input, photo_luma

    torch.manual_seed(0)
    model = build({"widths": [16] * 4, "reparam": True, "full_res": True, "mix": 16})
    randomise(model, 0.05)
    qmodel = qat.QuantSR(fused(model))
    qat.start_ranges(qmodel, [as_input(photo_luma(128, 96, i)) for i in range(3)])
    qmodel.eval()
    export_onnx(qmodel.net, tmp_path / "fp32.onnx")
    assert set(qat.onnx_points(onnx.load(str(tmp_path / "fp32.onnx")))) == set(qmodel.points())
    assert len(qmodel.q_conv) == 6  # head, 3 body convs, the 3x3 tail and the 1x1 mix
    out = qat.export_int8(qmodel, tmp_path / "int8.onnx", [photo_luma(640, 360, 2)])
    y = photo_luma(320, 180, 1)
    with torch.no_grad():
        sim = qmodel(as_input(y))[0, 0].numpy()
    assert psnr(to_display(onnx_upscaler(out, threads=1)(y)), to_display(sim), 0) > 50
    # a QAT checkpoint of a mix net rebuilds the same net, 1x1 conv included
    torch.save({"qmodel": qmodel.state_dict(), "config": qat.qmodel_config(qmodel)}, tmp_path / "q.pt")
    with torch.no_grad():
        assert torch.equal(qat.load_qmodel(tmp_path / "q.pt")(as_input(y))[0, 0], torch.from_numpy(sim))


def test_float_tail_keeps_the_last_convs_in_float_in_simulation_and_export(tmp_path: Path) -> None:
    """``--float-tail 2`` (srtc.training.qat): the tail's 3x3 conv and the 1x1 mix run in float in both the
    simulation and the int8 graph, which still computes what the simulation computes; the int8 head
    and body still round (the output differs from fp32), and a bad count is refused."""
    import onnx

    from srtc.training import qat
    from srtc.training.evaluate import onnx_upscaler, to_display
    from srtc.training.imaging import psnr
    from tests.test_qat import as_input, photo_luma

    torch.manual_seed(0)
    model = build({"widths": [16] * 4, "reparam": True, "full_res": True, "mix": 16})
    randomise(model, 0.05)
    qmodel = qat.QuantSR(fused(model), float_tail=2)
    qat.start_ranges(qmodel, [as_input(photo_luma(128, 96, i)) for i in range(3)])
    qmodel.eval()
    assert qmodel.int8_convs() == 4
    assert set(qmodel.points()) == {"input", "shifted", "conv0", "conv1", "conv2", "conv3", "act0", "act1", "act2"}
    out = qat.export_int8(qmodel, tmp_path / "int8.onnx", [photo_luma(640, 360, 2)])
    graph = onnx.load(str(out)).graph
    producers = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    fed_by_dq = [getattr(producers.get(c.input[1]), "op_type", None) == "DequantizeLinear" for c in convs]
    assert fed_by_dq == [True] * 4 + [False] * 2  # int8 weights for the head and body only
    y = photo_luma(320, 180, 1)
    with torch.no_grad():
        sim = qmodel(as_input(y))[0, 0].numpy()
        qmodel.quantize = False
        fp32 = qmodel(as_input(y))[0, 0].numpy()
    real = to_display(onnx_upscaler(out, threads=1)(y))
    assert psnr(real, to_display(sim), 0) > 50
    assert not np.array_equal(real, to_display(fp32))
    torch.save({"qmodel": qmodel.state_dict(), "config": qat.qmodel_config(qmodel)}, tmp_path / "q.pt")
    assert qat.load_qmodel(tmp_path / "q.pt").float_tail == 2
    with pytest.raises(ValueError, match="float_tail"):
        qat.QuantSR(fused(model), float_tail=6)


def coded_pairs(patch: int) -> SimpleNamespace:
    """Two images whose LR pixels carry unique codes and whose HR pixels carry 4x their LR pixel's code
    plus their place in its 2x2 block: any misalignment or mixed-up flip shows in the numbers."""
    lr, hr = [], []
    for h, w, base in ((20, 31, 0), (26, 18, 1000)):
        code = base + np.arange(h * w, dtype=np.float32).reshape(h, w)
        sub = np.array([[0, 1], [2, 3]], np.float32)
        lr.append(code)
        hr.append(4 * np.kron(code, np.ones((2, 2), np.float32)) + np.tile(sub, (h, w)))
    areas = np.array([a.size for a in lr], np.float64)
    return SimpleNamespace(patch=patch, lr=lr, hr=hr, weights=areas / areas.sum())


def test_device_patches_keep_lr_and_hr_aligned_under_every_flip_and_rotation() -> None:
    pairs = coded_pairs(patch=12)
    sampler = DevicePatches(pairs, "cpu", seed=3)
    lr_b, hr_b = sampler.sample(400)
    assert lr_b.shape == (400, 1, 6, 6) and hr_b.shape == (400, 1, 12, 12)
    corners = set()
    for lp, hp in zip(lr_b[:, 0].numpy(), hr_b[:, 0].numpy()):
        blocks = hp.reshape(6, 2, 6, 2).transpose(0, 2, 1, 3)  # [6, 6, 2, 2]: the HR block of each LR pixel
        assert np.array_equal(np.floor(blocks / 4), np.broadcast_to(lp[:, :, None, None], blocks.shape))
        # The crop is a contiguous window of one image: neighbours differ by 1 along one axis and by
        # the image width along the other, in some order and direction.
        steps = {abs(float(lp[0, 1] - lp[0, 0])), abs(float(lp[1, 0] - lp[0, 0]))}
        assert steps in ({1.0, 31.0}, {1.0, 18.0}), steps
        corners.add(tuple((blocks[0, 0] % 4).ravel().astype(int)))
    assert len(corners) == 8  # all 8 flips and rotations occur, each moving the 2x2 sub-pixels with it


def test_device_patches_on_real_images_match_the_host_sampler_and_resume() -> None:
    train = shared_or_skip("data", "train", "BSDS200")
    pairs = PatchPairs(train, patch=32, limit=3)
    sampler = DevicePatches(pairs, "cpu", seed=0)
    state = sampler.state()
    lr_b, hr_b = sampler.sample(64)
    # Bicubic LR against the 2x2 mean of its HR: small when aligned, several times larger one pixel off.
    box = torch.nn.functional.avg_pool2d(hr_b, 2)
    aligned = (box - lr_b).abs().mean().item()
    shifted = (box[..., 1:, :] - lr_b[..., :-1, :]).abs().mean().item()
    assert aligned < 0.02 and shifted > 2 * aligned, (aligned, shifted)
    host_lr, host_hr = pairs.sample(64, np.random.default_rng(0))
    assert abs(lr_b.std().item() - host_lr.std().item()) < 0.05  # the same content, not zeros
    sampler.restore(state)
    again_lr, _ = sampler.sample(64)
    assert torch.equal(again_lr, lr_b)


def test_full_range_patches_are_the_same_pairs_stretched_to_0_255() -> None:
    """``--full-range``: a drawn patch pair is the limited-range pair mapped 16..235 -> 0..255, the LR
    back on the 8-bit grid, still a downscaling pair; runs without it draw exactly as before."""
    train = shared_or_skip("data", "train", "BSDS200")
    plain = PatchPairs(train, patch=32, limit=3)
    full = PatchPairs(train, patch=32, limit=3, full_range=1.0)
    lr_p, hr_p = plain.sample(64, np.random.default_rng(7))
    lr_f, hr_f = full.sample(64, np.random.default_rng(7))
    assert lr_p.min() >= 16 / 255 - 1e-6 and lr_p.max() <= 235 / 255 + 1e-6  # RGB images: limited range
    assert lr_f.min() < 16 / 255 - 1e-6 or lr_f.max() > 235 / 255 + 1e-6, (lr_f.min(), lr_f.max())  # left the range
    codes = lr_f * 255
    assert torch.equal(codes, codes.round())
    want_lr, want_hr = stretch_full_range(lr_p, hr_p)
    assert torch.allclose(lr_f, want_lr) and torch.allclose(hr_f, want_hr)
    assert (torch.nn.functional.avg_pool2d(hr_f, 2) - lr_f).abs().mean() < 0.025
    again, _ = PatchPairs(train, patch=32, limit=3, full_range=0.0).sample(64, np.random.default_rng(7))
    assert torch.equal(again, lr_p)
    sampler = DevicePatches(PatchPairs(train, patch=32, limit=3, full_range=0.5), "cpu", seed=1)
    lr_d, _ = sampler.sample(400)
    stretched = (lr_d.amin(dim=(1, 2, 3)) < 16 / 255) | (lr_d.amax(dim=(1, 2, 3)) > 235 / 255)
    assert 0.1 < stretched.float().mean() < 0.6  # about half are drawn; a stretched patch may stay inside
    with pytest.raises(ValueError, match="probability"):
        PatchPairs(train, patch=32, limit=1, full_range=1.5)


@pytest.mark.parametrize(
    "extra, message",
    [(["--full-range", "1.5"], "share of patches"), (["--full-range", "0.1", "--pairs", "cache"], "clean pairs")],
)
def test_train_rejects_a_full_range_share_it_cannot_use(extra: list[str], message: str) -> None:
    from srtc.training import train

    with pytest.raises(ConfigError, match=message):
        train.parse_config(["--out", "unused", "--steps", "1", *extra])


def test_full_res_training_lowers_the_loss_and_exports(tmp_path: Path) -> None:
    """A short full-resolution ECB run: the loss falls, and the checkpoint exports and matches onnxruntime."""
    from srtc.training import train
    from srtc.training.export import (
        TOLERANCE,
        export_onnx,
        load_checkpoint_model,
        max_diff,
    )

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
            "120",
            "--seed",
            "0",
            "--full-res",
            "--reparam",
            "--widths",
            "16,16,16",
            "--batch",
            "8",
            "--patch",
            "32",
            "--lr",
            "3e-3",
            "--limit-images",
            "4",
            "--threads",
            "2",
            "--sampler",
            "device",
            "--save-every",
            "50",
        ]
    )
    summary = train.train(args)
    losses = summary["losses"]
    assert len(losses) == 120
    assert np.mean(losses[-20:]) < 0.9 * np.mean(losses[:20]), (losses[:20], losses[-20:])
    model, ckpt = load_checkpoint_model(tmp_path / "run" / "last.pt")
    assert ckpt["config"] == {"widths": [16, 16, 16], "reparam": True, "full_res": True}
    assert isinstance(model, FullResSR) and not model.reparam
    assert "sampler" in ckpt  # the device sampler's generator state: a resumed run continues its data order
    longer = replace(args, schedule=replace(args.schedule, steps=130, resume=True))
    assert train.train(longer)["steps"] == 130
    export_onnx(model, tmp_path / "m.onnx")
    assert max_diff(model, tmp_path / "m.onnx") < TOLERANCE
