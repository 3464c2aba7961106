"""srtc.training.evaluate / srtc.training.quality: the protocol reproduces published figures, and each metric
separates a good upscaler from a broken one on real content (never synthetic flat frames)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from srtc.training import evaluate, imaging, quality
from srtc.zoo import resolve
from tests.conftest import shared_or_skip

# The held-out clip: the other one (bbb_opening) trains the video-aware models.
CLIP = ("data", "video", "bbb_bunny_720p25_5s.mp4")


@pytest.fixture(scope="module")
def set5() -> list[evaluate.Sample]:
    return evaluate.load_samples(shared_or_skip("data", "benchmarks", "Set5"))


@pytest.fixture(scope="module")
def model():
    return evaluate.onnx_upscaler(resolve(None), 2)


@pytest.fixture(scope="module")
def clip() -> evaluate.Clip:
    return evaluate.load_clip(shared_or_skip(*CLIP), frames=8, codec="vp8", kbps=400)


def test_bicubic_set5_reproduces_the_published_psnr_and_ssim(set5):
    r = evaluate.evaluate(set5, evaluate.bicubic_luma, full=True)
    # Literature x2 bicubic on Set5 (MATLAB imresize, Y, shave 2): 33.66 dB, SSIM 0.9299.
    assert abs(r["bicubic"] - 33.66) < 0.05
    assert abs(r["metrics"]["bicubic"]["ssim"] - 0.9299) < 0.002
    # PIL bicubic of the uint8 Y plane is nearly the bicubic RGB path (rounding of RGB differs).
    assert abs(r["model"] - r["bicubic"]) < 0.05


def test_ssim_is_one_for_identical_images_and_drops_with_noise(set5):
    hr = set5[0].hr_y
    rng = np.random.default_rng(0)
    assert quality.ssim(hr, hr, 2) == pytest.approx(1.0, abs=1e-9)
    scores = [quality.ssim(np.clip(hr + rng.normal(0, sigma, hr.shape), 0, 255), hr, 2) for sigma in (2, 8, 25)]
    assert 1.0 > scores[0] > scores[1] > scores[2]
    assert scores[2] < 0.8


def test_downsample_consistency_is_high_for_bicubic_and_low_for_a_shifted_upscaler(set5, model):
    def shifted(y: np.ndarray) -> np.ndarray:  # one HR pixel off: plausible-looking, inconsistent with its input
        return np.roll(evaluate.bicubic_luma(y), 1, axis=1)

    bic = evaluate.evaluate(set5, evaluate.bicubic_luma, full=True)["metrics"]["model"]["ds_psnr"]
    off = evaluate.evaluate(set5, shifted, full=True)["metrics"]["model"]["ds_psnr"]
    ours = evaluate.evaluate(set5, model, full=True)["metrics"]["model"]["ds_psnr"]
    assert bic > 38.0 and off < bic - 6.0
    assert ours > 40.0  # the GAN target; a fidelity model clears it easily


def test_gradient_statistics_see_bicubic_blur_and_added_noise(set5):
    hr = set5[1].hr_y
    same = quality.gradient_stats(hr, hr, 2)
    assert same == {"grad_ratio": pytest.approx(1.0), "grad_hist_l1": pytest.approx(0.0)}
    blur = quality.gradient_stats(set5[1].bicubic_y, hr, 2)
    noisy = quality.gradient_stats(hr + np.random.default_rng(0).normal(0, 10, hr.shape), hr, 2)
    assert blur["grad_ratio"] < 0.97 and noisy["grad_ratio"] > 1.1  # softer vs rougher than HR
    assert blur["grad_hist_l1"] > 0.01 and noisy["grad_hist_l1"] > 0.1


def test_flat_noise_sees_grain_in_flat_areas_but_not_at_edges_or_offsets(set5):
    hr = set5[0].hr_y  # baby: a smooth background (flat area) and a detailed face
    assert quality.flat_noise(hr, hr, 2) == 0.0
    rng = np.random.default_rng(0)
    grain = quality.flat_noise(hr + rng.normal(0, 3, hr.shape), hr, 2)
    assert 2.0 < grain < 3.2  # the high-pass of white noise keeps most of its 3 levels
    assert quality.flat_noise(hr + 5.0, hr, 2) < 1e-6  # a brightness offset is not grain
    # Noise where HR is busy (the complement of the flat mask) is not counted.
    busy = np.where(quality.local_std(hr) >= quality.FLAT_STD, rng.normal(0, 10, hr.shape), 0.0)
    assert quality.flat_noise(hr + busy, hr, 2) < 0.5 * grain
    assert quality.flat_noise(set5[0].bicubic_y, hr, 2) < 1.5  # bicubic is smooth where HR is
    assert math.isnan(quality.flat_noise(np.zeros((8, 8)) + rng.normal(0, 20, (8, 8)), rng.normal(0, 20, (8, 8)) * 10))


def test_temporal_consistency_ranks_a_stable_upscaler_above_a_flickering_one(clip):
    calls = iter(range(10_000))

    def flicker(y: np.ndarray) -> np.ndarray:  # fresh noise every frame, like an unstable generator
        noise = np.random.default_rng(next(calls)).normal(0, 3 / 255, (2 * y.shape[0], 2 * y.shape[1]))
        return evaluate.bicubic_luma(y) + noise

    def offset(y: np.ndarray) -> np.ndarray:  # the same error in every frame: wrong, but not unstable
        return evaluate.bicubic_luma(y) + 6 / 255

    ups = {"stable": evaluate.bicubic_luma, "flicker": flicker, "offset": offset}
    r = evaluate.evaluate_clip(clip, ups, progress_every=0)
    assert r["stable"]["tpsnr"] > r["flicker"]["tpsnr"] + 3.0
    # Temporal PSNR measures change, not error: a static offset costs PSNR but (almost) no tPSNR.
    assert r["offset"]["psnr"] < r["stable"]["psnr"] - 3.0
    assert abs(r["offset"]["tpsnr"] - r["stable"]["tpsnr"]) < 0.3
    assert math.isinf(quality.temporal_psnr(clip.hr_y[:3], clip.hr_y[:3]))
    with pytest.raises(ValueError):
        quality.temporal_psnr(clip.hr_y[:1], clip.hr_y[:1])


def test_codec_path_runs_and_gives_sane_figures(clip, model):
    assert len(clip.hr_y) == len(clip.decoded_y) == 8
    assert clip.hr_y[0].shape == (720, 1280) and clip.decoded_y[0].shape == (360, 640)
    assert clip.frame_types[0] == "I" and clip.hr_y[0].std() >= evaluate.MIN_LUMA_STD  # fade-in skipped
    summary = evaluate.clip_summary(clip)
    assert 30.0 < summary["decoded_lr_psnr"] < 60.0  # lossy, but a usable stream
    r = evaluate.evaluate_clip(clip, {"bicubic": evaluate.bicubic_luma, "model": model}, progress_every=0)
    for m in r.values():
        assert 30.0 < m["psnr"] < 50.0 and 0.9 < m["ssim"] < 1.0 and 30.0 < m["tpsnr"] < 60.0
    # What holds for any x2 model on coded input: close to bicubic, sharper, and consistent with its input.
    assert abs(r["model"]["psnr"] - r["bicubic"]["psnr"]) < 1.5
    assert r["model"]["grad_ratio"] > r["bicubic"]["grad_ratio"]
    assert r["model"]["ds_psnr"] > r["bicubic"]["ds_psnr"]


def test_the_coded_path_covers_a_grid_of_codecs_and_bitrates():
    """Several codecs and bitrates in one run: one entry each, in order; more bits, a cleaner decode."""
    result = evaluate.main(
        ["--video", str(shared_or_skip(*CLIP)), "--frames", "4", "--codec", "vp8", "h264", "--kbps", "300", "1000"]
    )
    grid = result["video_grid"]
    assert [(e["codec"], e["kbps"]) for e in grid] == [("vp8", 300), ("vp8", 1000), ("h264", 300), ("h264", 1000)]
    assert result["video"] == grid[0]
    for low, high in ((grid[0], grid[1]), (grid[2], grid[3])):
        assert low["decoded_lr_psnr"] < high["decoded_lr_psnr"], (low["codec"], low["decoded_lr_psnr"])
        assert set(low["results"]) == {"bicubic", "default"}


def test_the_video_aware_default_beats_the_clean_trained_model_on_coded_video(clip, model):
    """Why the default is the video-aware GAN: on frames like those the server receives (the held-out clip,
    400 kbps VP8) it is above bicubic, where the same generator trained on clean LR is level with it, and
    its frame-to-frame change is more faithful."""
    clean = evaluate.onnx_upscaler(resolve("fidelity_fast_x2"), 2)
    r = evaluate.evaluate_clip(
        clip, {"bicubic": evaluate.bicubic_luma, "default": model, "clean": clean}, progress_every=0
    )
    assert r["default"]["psnr"] > r["bicubic"]["psnr"] + 0.3  # +0.51 dB; the clean-trained one +0.03
    assert r["default"]["psnr"] > r["clean"]["psnr"] + 0.3  # +0.48
    assert r["default"]["tpsnr"] > r["clean"]["tpsnr"] + 0.3  # +0.51
    assert r["default"]["grad_ratio"] > r["bicubic"]["grad_ratio"]  # sharper than bicubic, not a blur


def test_json_has_every_part(capsys):
    set5 = shared_or_skip("data", "benchmarks", "Set5")
    video = shared_or_skip(*CLIP)
    evaluate.main(
        ["--images", str(set5), "--video", str(video), "--frames", "3", "--compare", "fidelity_fast_x2", "--json"]
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"model", "file", "scale", "shave", "compare", "clean", "video", "peers", "wall_s"} <= set(result)
    assert result["compare"] == {"fidelity_fast_x2": str(resolve("fidelity_fast_x2"))}
    table = result["clean"]["Set5"]["results"]
    assert set(table) == {"bicubic", "default", "fidelity_fast_x2"}
    assert set(table["default"]) == set(evaluate.METRICS)
    assert table["default"]["psnr"] > table["bicubic"]["psnr"] + 1.0  # clean LR: the model must win clearly
    assert table["fidelity_fast_x2"]["psnr"] > table["default"]["psnr"] + 0.3  # v2 is the clean-trained one
    assert result["video"]["frames"] == 3
    assert set(result["video"]["results"]) == {"bicubic", "default", "fidelity_fast_x2"}
    assert "tpsnr" in result["video"]["results"]["default"]
    with pytest.raises(SystemExit, match="each model once"):
        evaluate.main(["--images", str(set5), "--compare", "fidelity_fast_x2", "fidelity_fast_x2"])


def test_missing_peers_are_skipped_with_a_reason(tmp_path):
    from srtc.training.peers import DNN_PEERS, TORCH_PEERS, peer_upscalers

    found, skipped = peer_upscalers(tmp_path, tmp_path)
    assert found == []
    assert len(skipped) == len(DNN_PEERS) + len(TORCH_PEERS)
    assert all(s["reason"] for s in skipped)


def test_crop_sheet_grid_labels_and_colour(tmp_path, model):
    from PIL import Image

    from srtc.training import cropsheet, imaging

    path = shared_or_skip("data", "benchmarks", "Set14", "zebra.png")
    sheet, scores = cropsheet.make_sheet([path, path], {"m": model}, crop=48, zoom=2, boxes=None)
    tile_w, tile_h = 48 * 2, 48 * 2 + cropsheet.LABEL_H
    assert sheet.size == (3 * tile_w + 4 * cropsheet.PAD, 2 * tile_h + 3 * cropsheet.PAD)
    assert scores[0]["m"] > scores[0]["bicubic"]  # the hardest crop for bicubic is where the model helps
    # Swapping in a luma keeps the chroma: putting back bicubic's own Y is the identity.
    hr = imaging.crop_to_multiple(imaging.load_image(path), 2)
    bic = imaging.upscale(imaging.downscale(hr, 2), 2)
    same = cropsheet.with_luma(bic, imaging.luma(bic))
    assert np.abs(np.asarray(same, int) - np.asarray(bic, int)).max() <= 1
    out = tmp_path / "s.png"
    cropsheet.main(["--models", "fidelity_fast_x2", "--images", str(path), "--out", str(out), "--box", "0,0"])
    assert Image.open(out).size == (3 * 96 * 3 + 4 * cropsheet.PAD, 96 * 3 + cropsheet.LABEL_H + 2 * cropsheet.PAD)


def test_grain_crop_finds_where_a_model_adds_noise_to_smooth_areas(model):
    from srtc.training import cropsheet, imaging

    path = shared_or_skip("data", "benchmarks", "Set5", "baby.png")
    hr = imaging.luma(imaging.crop_to_multiple(imaging.load_image(path), 2))
    rng = np.random.default_rng(0)
    # A model that is the real one everywhere except for grain in one 40 px square (HR coords 300..340).
    patch = np.zeros(hr.shape)
    patch[300:340, 300:340] = rng.normal(0, 6, (40, 40))

    def grainy(lr_y: np.ndarray) -> np.ndarray:
        return model(lr_y) + patch / 255.0

    _, scores = cropsheet.make_sheet([path], {"m": model, "grainy": grainy}, crop=48, zoom=1, pick="grain")
    x0, y0, x1, y1 = scores[0]["box"]
    flat = np.isfinite(quality.flat_grain_map(hr, hr))[300:340, 300:340].mean()
    assert flat > 0.3, "the test square must lie in the baby's smooth background"
    assert x0 < 340 and x1 > 300 and y0 < 340 and y1 > 300  # the crop shows the grain
    _, detail = cropsheet.make_sheet([path], {"m": model, "grainy": grainy}, crop=48, zoom=1)
    assert detail[0]["box"] != scores[0]["box"]


def test_crop_sheet_rows_of_coded_video_frames(tmp_path, model):
    from PIL import Image

    from srtc.training import cropsheet

    clip = shared_or_skip(*CLIP)
    frames = cropsheet.video_frames(clip, [3, 6], kbps=400)
    assert len(frames) == 2 and frames[0][0].size == (1280, 720) and frames[0][1].size == (640, 360)
    assert frames[0][0].mode == frames[0][1].mode == "L" and "vp8 400k" in frames[0][2]
    hr, dec = np.asarray(frames[1][0], float), np.asarray(frames[1][1], float)
    assert hr.std() > 20 and dec.std() > 20  # real content, not a fade
    sheet, scores = cropsheet.make_sheet([], {"m": model}, crop=48, zoom=1, frames=frames)
    assert sheet.size[1] == 2 * (48 + cropsheet.LABEL_H) + 3 * cropsheet.PAD
    assert all(s["bicubic"] < 45 and s["m"] < 45 for s in scores)  # the decoded frame lost detail
    out = tmp_path / "v.png"
    cropsheet.main(
        [
            "--models",
            "fidelity_fast_x2",
            "--video",
            str(clip),
            "--frames",
            "2",
            "--crop",
            "32",
            "--zoom",
            "1",
            "--out",
            str(out),
        ]
    )
    assert Image.open(out).size[1] == 32 + cropsheet.LABEL_H + 2 * cropsheet.PAD
    with pytest.raises(SystemExit, match="nothing to show"):
        cropsheet.main(["--models", "fidelity_fast_x2", "--out", str(out)])


def test_panned_photographs_make_coded_clips_the_default_improves(model):
    """``--pan``: each image becomes a coded clip (a keyframe, then inter frames of a moving scene)."""
    set5 = shared_or_skip("data", "benchmarks", "Set5")
    clips = evaluate.load_panned_clips(set5, frames=4, codec="vp8", kbps=400, limit=3)
    assert len(clips) == 3
    for clip in clips:
        assert clip.frame_types[0] == "I" and set(clip.frame_types[1:]) == {"P"}
        assert clip.hr_y[0].shape == (2 * clip.decoded_y[0].shape[0], 2 * clip.decoded_y[0].shape[1])
        assert not np.array_equal(clip.hr_y[0], clip.hr_y[1])  # the camera moved
        assert 25.0 < imaging.psnr(clip.decoded_y[1], clip.lr_y[1], 0) < 50.0  # real codec damage
    r = evaluate.evaluate_clips(clips, {"bicubic": evaluate.bicubic_luma, "default": model})
    assert r["default"]["psnr"] > r["bicubic"]["psnr"] + 0.2, r
    assert math.isfinite(r["default"]["tpsnr"])
    with pytest.raises(ValueError, match="multiples"):
        evaluate.load_panned_clips(set5, pan=(3, 0))


def test_codec_noise_bound_sees_independent_errors_but_not_repeated_ones(clip):
    """srtc.training.codec_noise on real frames: a fresh error in every frame of a still scene can be halved by
    averaging two frames (+3 dB where they agree), the same error repeated cannot; the real codec sits
    close to the repeated case."""
    from srtc.training import codec_noise

    still = [clip.lr_y[0]] * 4
    rng = np.random.default_rng(0)
    noise = [rng.normal(0, 4, still[0].shape) for _ in still]
    fresh = [np.clip(s + n, 0, 255).astype(np.uint8) for s, n in zip(still, noise)]
    repeated = [np.clip(s + noise[0], 0, 255).astype(np.uint8) for s in still]
    hr = clip.hr_y[:4]
    independent = codec_noise.measure(evaluate.Clip("fresh", 0, hr, still, fresh, ["P"] * 4))
    same = codec_noise.measure(evaluate.Clip("same", 0, hr, still, repeated, ["P"] * 4))
    assert independent["static_share"] == 1.0
    assert abs(independent["error_correlation_static"]) < 0.05
    assert 2.5 < independent["bound_gain_static_db"] < 3.2
    assert same["error_correlation_static"] > 0.99 and abs(same["bound_gain_static_db"]) < 0.01
    real = codec_noise.measure(clip)
    assert 25 < real["psnr_decoded"] < 45 and 0 < real["static_share"] < 1
    assert real["error_correlation_aligned"] > 0.5 and real["bound_gain_aligned_db"] < 1.0
