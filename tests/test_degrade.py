"""Codec-aware training pairs (srtc.training.degrade): real VP8/H.264 damage, the cache and the Dataset.

Most tests use the page's sample photographs (srtc/server/web/samples); the video test needs
``../shared/data/video`` and skips with the reason when it is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SAMPLES, shared_or_skip

torch = pytest.importorskip("torch", reason="torch not installed (pip install -e '.[train]')")

from srtc.training import degrade, imaging, losses  # noqa: E402
from srtc.training.loop import ConfigError  # noqa: E402

SPEEDS = {"libvpx": "6", "libx264": "veryfast"}


def photo(name: str = "astronaut.jpg"):
    path = SAMPLES / name
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    img = imaging.load_image(path)
    return img.crop(degrade.crop_box(img.size, (1280, 720), np.random.default_rng(0)))


@pytest.mark.parametrize("codec", degrade.CODECS)
def test_codec_damage_scales_with_bitrate(codec: str) -> None:
    hr = photo()
    clean = imaging.luma_u8(imaging.downscale(hr, 2))
    scores = {}
    for kbps in (200, 1500):
        ys, types = degrade.degrade([hr], codec, kbps, "bicubic", SPEEDS[codec])
        assert len(ys) == 1 and types == ["I"]
        assert ys[0].dtype == np.uint8 and ys[0].shape == (hr.height // 2, hr.width // 2)
        scores[kbps] = imaging.psnr(ys[0], clean, 0)
    assert scores[200] < 42.0, scores  # measurable codec damage at the low end
    assert scores[1500] > scores[200] + 1.0, scores  # and less of it at a higher bitrate


@pytest.mark.parametrize("codec", degrade.CODECS)
def test_panned_clip_decodes_every_frame_with_inter_frames(codec: str) -> None:
    hrs = degrade.pan_frames(photo("coffee.jpg"), 6, (4, -2), (1280, 720), np.random.default_rng(1))
    assert len({h.size for h in hrs}) == 1 and hrs[0].width % 4 == 0 and hrs[0].height % 4 == 0
    ys, types = degrade.degrade(hrs, codec, 400, "area", SPEEDS[codec])
    assert len(ys) == 6 and all(y.shape == (hrs[0].height // 2, hrs[0].width // 2) for y in ys)
    assert types[0] == "I" and set(types[1:]) == {"P"}, types


def test_clean_pairs_match_the_training_protocol() -> None:
    hr = photo()
    ys, types = degrade.degrade([hr], None, None, "bicubic", None)
    assert types == ["clean"]
    np.testing.assert_array_equal(ys[0], imaging.luma_u8(imaging.downscale(hr, 2)))


def test_cache_round_trip_and_seeded_repeatability(tmp_path) -> None:
    if not any(SAMPLES.glob("*.jpg")):
        pytest.skip(f"no photographs in {SAMPLES}")
    cfg = degrade.DegradeConfig(clean_share=0.25, clip_share=0.5)
    a = degrade.build_cache(tmp_path / "a", SAMPLES, None, 8, seed=3, cfg=cfg, progress=False)
    b = degrade.build_cache(tmp_path / "b", SAMPLES, None, 8, seed=3, cfg=cfg, progress=False)
    c = degrade.build_cache(tmp_path / "c", SAMPLES, None, 8, seed=4, cfg=cfg, progress=False)
    files = degrade.list_pairs(a)
    assert len(files) == 8
    images = degrade.find_sources(SAMPLES, imaging.IMAGE_SUFFIXES)
    for i, path in enumerate(files):
        pair = degrade.read_pair(path)
        assert pair.hr.shape == (2 * pair.lr.shape[0], 2 * pair.lr.shape[1])
        assert pair.lr.dtype == pair.hr.dtype == np.uint8
        assert {"codec", "kbps", "kernel", "mode", "source", "frame_types"} <= set(pair.meta)
        twin = degrade.read_pair(degrade.pair_path(b, i))
        np.testing.assert_array_equal(pair.lr, twin.lr)
        np.testing.assert_array_equal(pair.hr, twin.hr)
        assert pair.meta == twin.meta
        # The cached pair is exactly what the plan makes in memory: write then read changes nothing.
        plan = degrade.plan_pair(i, 3, cfg, images, [])
        made = degrade.make_pair(plan, [imaging.load_image(plan.source)], cfg)
        np.testing.assert_array_equal(made.lr, pair.lr)
        np.testing.assert_array_equal(made.hr, pair.hr)
        assert made.meta == pair.meta
        # A clip's pair keeps its previous frame (for the temporal loss); stills and clean pairs have none.
        assert pair.has_prev == (pair.meta["mode"] == "clip"), pair.meta["mode"]
        if pair.has_prev:
            assert pair.lr_prev.shape == pair.lr.shape and pair.hr_prev.shape == pair.hr.shape
            assert not np.array_equal(pair.hr_prev, pair.hr)  # panned: the scene moved between frames
            np.testing.assert_array_equal(made.lr_prev, pair.lr_prev)
    modes = {degrade.read_pair(p).meta["mode"] for p in files}
    assert len(modes) >= 2, modes
    others = [degrade.read_pair(p) for p in degrade.list_pairs(c)]
    assert any(o.meta != degrade.read_pair(p).meta for o, p in zip(others, files))
    with pytest.raises(ConfigError, match="other settings"):  # another seed must not be mixed into a cache
        degrade.build_cache(a, SAMPLES, None, 8, seed=5, cfg=cfg, progress=False)


def test_write_read_pair_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    pair = degrade.Pair(
        lr=rng.integers(0, 256, (10, 14), np.uint8),
        hr=rng.integers(0, 256, (20, 28), np.uint8),
        meta={"codec": "libvpx", "kbps": 321.5, "mode": "clip", "frame_types": ["I", "P"]},
    )
    path = degrade.pair_path(tmp_path, 7)
    degrade.write_pair(path, pair)
    back = degrade.read_pair(path)
    np.testing.assert_array_equal(back.lr, pair.lr)
    np.testing.assert_array_equal(back.hr, pair.hr)
    assert back.meta == pair.meta and not back.has_prev
    assert list(tmp_path.iterdir()) == [path]
    clip = degrade.Pair(pair.lr, pair.hr, pair.meta, lr_prev=255 - pair.lr, hr_prev=255 - pair.hr)
    degrade.write_pair(path, clip)
    back = degrade.read_pair(path)
    assert back.has_prev
    np.testing.assert_array_equal(back.lr_prev, clip.lr_prev)
    np.testing.assert_array_equal(back.hr_prev, clip.hr_prev)


def test_temporal_patches_cut_both_frames_alike(tmp_path) -> None:
    """``sample_temporal``: channel 0 the previous frame, 1 the kept one, aligned and augmented alike."""
    rng = np.random.default_rng(0)
    up = np.ones((2, 2), np.uint8)
    for i, (h, w) in enumerate([(40, 60), (64, 48), (33, 70)]):
        lr = rng.integers(0, 256, (h, w), np.uint8)
        prev = {} if i == 0 else {"lr_prev": 255 - lr, "hr_prev": np.kron(255 - lr, up)}
        degrade.write_pair(degrade.pair_path(tmp_path, i), degrade.Pair(lr, np.kron(lr, up), {}, **prev))
    data = degrade.CodecPatchPairs(tmp_path, patch=32)
    assert list(data.clip_ids) == [1, 2]  # the still (pair 0) is never drawn
    lr, hr = data.sample_temporal(48, np.random.default_rng(1))
    assert lr.shape == (48, 2, 16, 16) and hr.shape == (48, 2, 32, 32)
    assert lr.dtype == hr.dtype == torch.float32
    torch.testing.assert_close(lr, hr[:, :, ::2, ::2], rtol=0, atol=0)  # each frame aligned with its HR
    torch.testing.assert_close(lr[:, 0], 1.0 - lr[:, 1], rtol=0, atol=1e-6)  # the same place in both frames
    assert float(lr.std()) > 0.1  # real content, not a constant patch
    still_only = tmp_path / "stills"
    still_only.mkdir()
    degrade.write_pair(
        degrade.pair_path(still_only, 0),
        degrade.Pair(lr=np.full((20, 20), 9, np.uint8), hr=np.full((40, 40), 9, np.uint8)),
    )
    with pytest.raises(ValueError, match="no clip pairs"):
        degrade.CodecPatchPairs(still_only, patch=32).sample_temporal(2, rng)


def test_dataset_yields_aligned_patches(tmp_path) -> None:
    # HR made of constant 2x2 blocks: a patch is aligned exactly when LR == HR[::2, ::2],
    # whatever flip or rotation it got, and a 1 px LR offset would break it.
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 60), (64, 48), (33, 70)]):
        lr = rng.integers(0, 256, (h, w), np.uint8)
        degrade.write_pair(degrade.pair_path(tmp_path, i), degrade.Pair(lr, np.kron(lr, np.ones((2, 2), np.uint8)), {}))
    data = degrade.CodecPatchPairs(tmp_path, patch=32)
    assert len(data) == 3
    lr_b, hr_b = data.sample(64, np.random.default_rng(1))
    assert lr_b.shape == (64, 1, 16, 16) and hr_b.shape == (64, 1, 32, 32)
    assert lr_b.dtype == hr_b.dtype == torch.float32
    assert 0.0 <= float(lr_b.min()) and float(hr_b.max()) <= 1.0
    torch.testing.assert_close(lr_b, hr_b[:, :, ::2, ::2], rtol=0, atol=0)
    lp, hp = data[1]
    assert lp.shape == (1, 16, 16) and hp.shape == (1, 32, 32)
    torch.testing.assert_close(lp, hp[:, ::2, ::2], rtol=0, atol=0)
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=3)))
    assert batch[0].shape == (3, 1, 16, 16) and batch[1].shape == (3, 1, 32, 32)


@pytest.mark.shared
def test_video_clips_from_shared_videos(tmp_path) -> None:
    videos = shared_or_skip("data", "video")
    cfg = degrade.DegradeConfig(clean_share=0.0, clip_share=1.0, clip_frames=(4, 5))
    out = degrade.build_cache(tmp_path, None, videos, 3, seed=0, cfg=cfg, progress=False)
    pairs = [degrade.read_pair(p) for p in degrade.list_pairs(out)]
    assert len(pairs) == 3
    for pair in pairs:
        assert pair.meta["kind"] == "video" and pair.meta["mode"] == "clip"
        assert pair.hr.shape == (2 * pair.lr.shape[0], 2 * pair.lr.shape[1])
        types = pair.meta["frame_types"]
        assert len(types) == pair.meta["frames"] and types[0] == "I" and "P" in types[1:]
    data = degrade.CodecPatchPairs(out, patch=96)
    lr_b, hr_b = data.sample(4, np.random.default_rng(0))
    assert lr_b.shape == (4, 1, 48, 48) and hr_b.shape == (4, 1, 96, 96)
    # One clip of the folder can be named alone (the other stays unseen, for evaluation).
    one = sorted(p for p in videos.iterdir() if p.suffix in degrade.VIDEO_SUFFIXES)[0]
    assert degrade.find_sources(one, degrade.VIDEO_SUFFIXES) == [one]
    assert len(degrade.find_sources(videos, degrade.VIDEO_SUFFIXES)) > 1


def test_temporal_loss_scores_frame_to_frame_change(tmp_path) -> None:
    """``srtc.training.train.temporal_loss``: 0 for an upscaler that reproduces the change, the change
    itself for a still one."""
    from srtc.training import train

    rng = np.random.default_rng(2)
    up = np.ones((2, 2), np.uint8)
    for i in range(2):
        lr = rng.integers(0, 200, (40, 48), np.uint8)
        prev = lr + rng.integers(0, 50, lr.shape).astype(np.uint8)
        degrade.write_pair(
            degrade.pair_path(tmp_path, i),
            degrade.Pair(lr, np.kron(lr, up), {}, lr_prev=prev, hr_prev=np.kron(prev, up)),
        )
    data = degrade.CodecPatchPairs(tmp_path, patch=32)
    nearest = torch.nn.Upsample(scale_factor=2, mode="nearest")
    assert float(losses.temporal_loss(nearest, data, 8, np.random.default_rng(0), torch.device("cpu"))) < 1e-7

    class Frozen(torch.nn.Module):  # the same picture whatever the frame: no change at all
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], 1, 2 * x.shape[2], 2 * x.shape[3])

    lr, hr = data.sample_temporal(8, np.random.default_rng(0))
    expected = float((hr[:, 1] - hr[:, 0]).abs().mean())
    got = float(losses.temporal_loss(Frozen(), data, 8, np.random.default_rng(0), torch.device("cpu")))
    assert expected > 0.02 and got == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ConfigError, match="--pairs"):
        train.parse_config(["--out", str(tmp_path / "run"), "--steps", "1", "--temporal", "1"])


def test_codecs_flag_limits_the_coded_pairs_to_one_codec(tmp_path) -> None:
    """``--codecs h264`` makes every coded pair with libx264 (the uplink a browser may pick); the default
    draws both (with this seed, the same 6 pairs come out with both codecs), and the default settings keep
    their cache name."""
    if not any(SAMPLES.glob("*.jpg")):
        pytest.skip(f"no photographs in {SAMPLES}")
    out = tmp_path / "h264"
    degrade.main(
        [
            "--images",
            str(SAMPLES),
            "--videos",
            "",
            "--out",
            str(out),
            "--pairs",
            "6",
            "--seed",
            "2",
            "--clean-share",
            "0",
            "--codecs",
            "h264",
        ]
    )
    metas = [degrade.read_pair(p).meta for p in degrade.list_pairs(out)]
    assert len(metas) == 6 and {m["codec"] for m in metas} == {"libx264"}
    args = degrade.make_parser().parse_args(["--pairs", "1"])
    assert tuple(degrade.ENCODERS[c] for c in args.codecs) == degrade.DegradeConfig().codecs
    with pytest.raises(SystemExit):
        degrade.make_parser().parse_args(["--pairs", "1", "--codecs", "av1"])
