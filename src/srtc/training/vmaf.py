"""VMAF and VMAF-NEG of luma frames against their originals, through Netflix's libvmaf.

PSNR misses what sharpening does to a picture; VMAF is how the industry judges video, and VMAF-NEG is its
variant that gives no credit for enhancement (sharpening, contrast) alone, so an upscaler cannot score by
over-sharpening. libvmaf comes inside the static ffmpeg of the ``imageio-ffmpeg`` wheel (models built in):
``pip install -e '.[vmaf]'``. Used by the probe (``python -m server.probe``) and ``srtc.training.evaluate``.

Frames are luma only (what SR changes); chroma is sent as flat grey so it weighs nothing. Pairs are
written to a temporary folder as they come, so a long run holds no frames in memory.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

log = logging.getLogger(__name__)

MODELS = "'version=vmaf_v0.6.1\\:name=vmaf|version=vmaf_v0.6.1neg\\:name=vmaf_neg'"
INSTALL_HINT = "pip install -e '.[vmaf]' (the imageio-ffmpeg wheel's static ffmpeg has libvmaf)"


class VmafUnavailable(RuntimeError):
    """No ffmpeg with libvmaf here; the message says how to get one."""


def ffmpeg_with_libvmaf() -> str:
    """The path of an ffmpeg that has the libvmaf filter: imageio-ffmpeg's, else one on PATH."""
    candidates = []
    try:
        import imageio_ffmpeg

        candidates.append(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        pass
    if shutil.which("ffmpeg"):
        candidates.append(shutil.which("ffmpeg"))
    for exe in candidates:
        try:
            filters = subprocess.run(
                [exe, "-hide_banner", "-filters"], capture_output=True, text=True, timeout=30, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if " libvmaf " in filters:
            return exe
    raise VmafUnavailable(f"no ffmpeg with libvmaf found: {INSTALL_HINT}")


class VmafPairs:
    """Reference and distorted luma frames of one size, collected for one VMAF run."""

    def __init__(self, width: int, height: int, limit: int = 300) -> None:
        self.width, self.height, self.limit = width, height, limit
        self.frames = 0
        self._dir = Path(tempfile.mkdtemp(prefix="vmaf-"))
        self._ref = open(self._dir / "ref.yuv", "wb")
        self._dist = open(self._dir / "dist.yuv", "wb")
        self._grey = np.full(width * height // 2, 128, np.uint8).tobytes()  # U and V of yuv420p

    def add(self, reference: np.ndarray, distorted: np.ndarray) -> bool:
        """Keep one pair (uint8 luma, both ``height`` x ``width``); False once ``limit`` pairs are kept."""
        if self.frames >= self.limit or self._ref.closed:
            return False
        if reference.shape != (self.height, self.width) or distorted.shape != reference.shape:
            raise ValueError(f"expected {self.height}x{self.width} luma, got {reference.shape} and {distorted.shape}")
        for out, y in ((self._ref, reference), (self._dist, distorted)):
            out.write(np.ascontiguousarray(y, dtype=np.uint8).tobytes())
            out.write(self._grey)
        self.frames += 1
        return True

    def score(self, threads: int = 2) -> dict[str, float | int]:
        """Mean VMAF and VMAF-NEG over the pairs kept; raises :class:`VmafUnavailable` without libvmaf."""
        self._ref.close()
        self._dist.close()
        if self.frames == 0:
            raise ValueError("no frames to score")
        exe = ffmpeg_with_libvmaf()
        log_path = self._dir / "vmaf.json"
        raw = ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{self.width}x{self.height}", "-r", "30"]
        command = [
            exe,
            "-hide_banner",
            "-loglevel",
            "error",
            *raw,
            "-i",
            str(self._dir / "dist.yuv"),
            *raw,
            "-i",
            str(self._dir / "ref.yuv"),
            "-lavfi",
            f"[0:v][1:v]libvmaf=model={MODELS}:log_fmt=json:log_path={log_path}:n_threads={threads}",
            "-f",
            "null",
            "-",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"libvmaf failed: {done.stderr.strip()[-500:]}")
        pooled = json.loads(log_path.read_text(encoding="utf-8"))["pooled_metrics"]
        result = {
            "vmaf": round(pooled["vmaf"]["mean"], 3),
            "vmaf_neg": round(pooled["vmaf_neg"]["mean"], 3),
            "frames": self.frames,
        }
        self.close()
        return result

    def close(self) -> None:
        for f in (self._ref, self._dist):
            f.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class FrameBank:
    """Numbered luma frames of several series (an original and its versions), kept on disk until scored.

    VMAF's motion feature compares each frame with the one before it in the sequence scored, so versions
    are only comparable on the same frames: :meth:`score` takes the numbers every series has.
    """

    def __init__(self, width: int, height: int, limit: int = 300) -> None:
        self.width, self.height, self.limit = width, height, limit
        self._dir = Path(tempfile.mkdtemp(prefix="vmaf-bank-"))
        self._files: dict[str, BinaryIO] = {}
        self._index: dict[str, dict[int, int]] = {}  # series -> frame number -> its slot in the file

    def add(self, series: str, number: int, y: np.ndarray) -> bool:
        """Keep frame ``number`` of ``series`` (uint8 luma, ``height`` x ``width``); False when full or kept."""
        index = self._index.setdefault(series, {})
        if number in index or len(index) >= self.limit:
            return False
        if y.shape != (self.height, self.width):
            raise ValueError(f"expected {self.height}x{self.width} luma, got {y.shape}")
        if series not in self._files:
            self._files[series] = open(self._dir / f"{len(self._files)}.y", "w+b")
        out = self._files[series]
        out.write(np.ascontiguousarray(y, dtype=np.uint8).tobytes())
        index[number] = len(index)
        return True

    def has(self, series: str, number: int) -> bool:
        return number in self._index.get(series, {})

    def common(self, series: list[str]) -> list[int]:
        """The frame numbers every one of ``series`` has, in order."""
        sets = [set(self._index.get(name, {})) for name in series]
        return sorted(set.intersection(*sets)) if sets else []

    def frame(self, series: str, number: int) -> np.ndarray:
        out = self._files[series]
        out.flush()
        size = self.width * self.height
        out.seek(self._index[series][number] * size)
        data = out.read(size)
        out.seek(0, 2)
        return np.frombuffer(data, np.uint8).reshape(self.height, self.width)

    def score(self, reference: str, versions: list[str], threads: int = 2) -> dict[str, dict[str, float | int] | None]:
        """VMAF and VMAF-NEG of each of ``versions`` against ``reference`` on the frames all of them have."""
        numbers = self.common([reference, *versions])
        out = {}
        for name in versions:
            pairs = VmafPairs(self.width, self.height, limit=len(numbers))
            try:
                for n in numbers:
                    pairs.add(self.frame(reference, n), self.frame(name, n))
                out[name] = pairs.score(threads) if numbers else None
            finally:
                pairs.close()
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def vmaf(references: list[np.ndarray], distorted: list[np.ndarray], threads: int = 2) -> dict[str, float | int]:
    """Mean VMAF and VMAF-NEG of ``distorted`` against ``references`` (lists of uint8 luma of one size)."""
    if not references or len(references) != len(distorted):
        raise ValueError(f"need equal, non-empty lists, got {len(references)} and {len(distorted)}")
    height, width = references[0].shape
    pairs = VmafPairs(width, height, limit=len(references))
    try:
        for ref, dist in zip(references, distorted):
            pairs.add(ref, dist)
        return pairs.score(threads)
    finally:
        pairs.close()
