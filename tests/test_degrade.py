"""Codec-aware training pairs (models.degrade): real VP8/H.264 damage, the cache and the Dataset.

Most tests use the page's sample photographs (client_web/samples); the video test needs
``../shared/data/video`` and skips with the reason when it is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from models import degrade, imaging
from tests.conftest import SAMPLES, shared_or_skip

torch = pytest.importorskip("torch", reason="torch not installed (pip install -e '.[train]')")

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
    modes = {degrade.read_pair(p).meta["mode"] for p in files}
    assert len(modes) >= 2, modes
    others = [degrade.read_pair(p) for p in degrade.list_pairs(c)]
    assert any(o.meta != degrade.read_pair(p).meta for o, p in zip(others, files))
    with pytest.raises(SystemExit):  # another seed must not be mixed into an existing cache
        degrade.build_cache(a, SAMPLES, None, 8, seed=5, cfg=cfg, progress=False)


def test_write_read_pair_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    pair = degrade.Pair(lr=rng.integers(0, 256, (10, 14), np.uint8), hr=rng.integers(0, 256, (20, 28), np.uint8),
                        meta={"codec": "libvpx", "kbps": 321.5, "mode": "clip", "frame_types": ["I", "P"]})
    path = degrade.pair_path(tmp_path, 7)
    degrade.write_pair(path, pair)
    back = degrade.read_pair(path)
    np.testing.assert_array_equal(back.lr, pair.lr)
    np.testing.assert_array_equal(back.hr, pair.hr)
    assert back.meta == pair.meta
    assert list(tmp_path.iterdir()) == [path]


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
