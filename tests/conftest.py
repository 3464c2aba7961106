"""Shared fixtures: real photographic content (never all-zero frames) and the shipped default model."""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from srtc.server.config import CLIENT_DIR
from srtc.shared import SHARED

REPO = Path(__file__).resolve().parent.parent
SAMPLES = CLIENT_DIR / "samples"


def photo_paths() -> list[Path]:
    """Real photographs: the page's bundled samples always, the shared benchmarks when present."""
    paths = sorted(SAMPLES.glob("*.jpg"))
    if (SHARED / "data" / "benchmarks" / "Set14").is_dir():
        paths += sorted((SHARED / "data" / "benchmarks" / "Set14").glob("*.png"))
    return paths


def load_photo_rgb(width: int, height: int, index: int = 0) -> np.ndarray:
    """A real photograph, cover-cropped and resized (INTER_AREA) to ``width`` x ``height`` RGB."""
    paths = photo_paths()
    if not paths:
        pytest.skip("no photographs found: the page's samples/*.jpg are missing")
    bgr = cv2.imread(str(paths[index % len(paths)]), cv2.IMREAD_COLOR)
    h, w = bgr.shape[:2]
    scale = max(width / w, height / h)
    bgr = cv2.resize(bgr, (max(width, round(w * scale)), max(height, round(h * scale))), interpolation=cv2.INTER_AREA)
    y0, x0 = (bgr.shape[0] - height) // 2, (bgr.shape[1] - width) // 2
    return cv2.cvtColor(bgr[y0 : y0 + height, x0 : x0 + width], cv2.COLOR_BGR2RGB)


def photo_frame(width: int = 640, height: int = 360, index: int = 0, pts: int = 0) -> av.VideoFrame:
    """A yuv420p frame of real content, with a 90 kHz time base as aiortc's decoders give."""
    frame = av.VideoFrame.from_ndarray(load_photo_rgb(width, height, index), format="rgb24").reformat(format="yuv420p")
    frame.pts, frame.time_base = pts, Fraction(1, 90000)
    return frame


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The manifest's default, or ``SRTC_TEST_MODEL`` (a name or path) to test another model."""
    from srtc.zoo import resolve

    return resolve(os.environ.get("SRTC_TEST_MODEL"))


@pytest.fixture(scope="session")
def upscaler(default_model_path):
    from srtc.server.engine import OnnxUpscaler

    return OnnxUpscaler(default_model_path, threads=2)


def shared_or_skip(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared (or SRTC_SHARED) holds the data this test needs")
    return path


@contextlib.asynccontextmanager
async def serving(app):
    """Run an aiohttp app on a free 127.0.0.1 port for the length of the block; yields its base URL."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
