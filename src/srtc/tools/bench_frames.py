"""Real decoded frames for the CPU benchmarks, 640x360 yuv420p as a decoder hands them to the server.

Kept apart from :mod:`srtc.tools.bench` (which reads ONNX graphs with the ``onnx`` package of the ``train``
extra) so :mod:`srtc.tools.encoder_bench` runs on the runtime install alone.
"""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np

from srtc.server.config import CLIENT_DIR
from srtc.server.engine import plane_view
from srtc.shared import SHARED

VIDEO = SHARED / "data" / "video" / "bbb_opening_720p24_00-15s.webm"
SAMPLES = CLIENT_DIR / "samples"
WIDTH, HEIGHT = 640, 360
MIN_LUMA_STD = 20.0  # below this a frame is a fade or a flat fill, not content


def _to_frame(rgb: np.ndarray, index: int) -> av.VideoFrame:
    """uint8 RGB 640x360 to a yuv420p frame with a pts, as a decoder would hand it over."""
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
    frame.pts = index
    return frame


def _cover(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Cover-crop to the target aspect ratio, then INTER_AREA resize (no letterbox, no stretch)."""
    h, w = rgb.shape[:2]
    scale = max(width / w, height / h)
    cw, ch = round(width / scale), round(height / scale)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return cv2.resize(rgb[y0 : y0 + ch, x0 : x0 + cw], (width, height), interpolation=cv2.INTER_AREA)


def video_frames(path: Path, count: int) -> list[av.VideoFrame]:
    """``count`` decoded frames of ``path`` after its fade-in, downscaled (INTER_AREA) to 640x360 yuv420p.

    Frames whose luma is nearly flat (the clip opens on black) are skipped: they time nothing real.
    """
    frames: list[av.VideoFrame] = []
    with av.open(str(path)) as container:
        for decoded in container.decode(video=0):
            rgb = _cover(decoded.to_ndarray(format="rgb24"), WIDTH, HEIGHT)
            frame = _to_frame(rgb, len(frames))
            if plane_view(frame, 0).std() < MIN_LUMA_STD:
                continue
            frames.append(frame)
            if len(frames) >= count:
                break
    return frames


def _read_rgb(path: Path) -> np.ndarray:
    """A picture file as RGB (cv2.error when it cannot be read, as cvtColor raises on imread's None)."""
    bgr = cv2.imread(str(path))
    if bgr is None:
        raise cv2.error(f"cannot read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def sample_frames(count: int) -> list[av.VideoFrame]:
    """Fallback without ../shared: the page's sample photographs, cover-cropped, cycled."""
    photos = [_cover(_read_rgb(p), WIDTH, HEIGHT) for p in sorted(SAMPLES.glob("*.jpg"))]
    if not photos:
        raise FileNotFoundError(f"no benchmark content: neither {VIDEO} nor {SAMPLES}/*.jpg")
    return [_to_frame(photos[i % len(photos)], i) for i in range(count)]


def load_frames(count: int, video: Path = VIDEO) -> tuple[list[av.VideoFrame], str]:
    """Real frames (never synthetic: flat input flatters nothing but hides nothing either) and their source."""
    if video.is_file():
        frames = video_frames(video, count)
        if frames:
            return frames, str(video)
    return sample_frames(count), str(SAMPLES / "*.jpg")
