"""Shared fixtures: real photographic content (never all-zero frames) and the shipped default model."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


# ------------------------------------------------------------------------------ coturn, for the TURN tests

TURN_SECRET = "correct-horse-battery-staple"  # the secret the test coturn shares with the server


@dataclass
class Coturn:
    url: str
    log: Path

    def granted(self, label: str, request: str = "ALLOCATE") -> int:
        """Requests of credentials labelled ``label`` that coturn granted (its verbose log)."""
        lines = self.log.read_text(errors="replace").splitlines()
        return sum(1 for line in lines if f":{label}>" in line and f"{request} processed, success" in line)


def coturn_config(port: int, log: Path, directory: Path) -> str:
    """A loopback-only coturn for one test: shared-secret auth, relays on 127.0.0.1, peers on loopback allowed."""
    return "\n".join(
        [
            "listening-ip=127.0.0.1",
            "relay-ip=127.0.0.1",
            f"listening-port={port}",
            "use-auth-secret",
            f"static-auth-secret={TURN_SECRET}",
            "realm=srtc.test",
            "allow-loopback-peers",  # denied by default: the call's peers are all on 127.0.0.1
            "no-tls",
            "no-dtls",
            "no-cli",
            "no-tcp-relay",
            "verbose",
            f"log-file={log}",
            "simple-log",
            "no-stdout-log",
            f"pidfile={directory / 'turnserver.pid'}",
            f"userdb={directory / 'turndb'}",
            "",
        ]
    )


def free_port() -> int:
    """A loopback port free for both UDP and TCP (coturn listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no loopback port free for both UDP and TCP")


@pytest.fixture
def coturn(tmp_path) -> Iterator[Coturn]:
    """Debian's coturn on a free loopback port with its own config, stopped at the end (not the system service)."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.skip("turnserver is not installed: `apt-get install coturn` (scripts/test.sh does it as root)")
    port, log = free_port(), tmp_path / "turnserver.log"
    config = tmp_path / "turnserver.conf"
    config.write_text(coturn_config(port, log, tmp_path))
    process = subprocess.Popen(
        [binary, "-c", str(config)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        ready = f"UDP listener opened on: 127.0.0.1:{port}"
        deadline = time.monotonic() + 15.0
        while not (log.is_file() and ready in log.read_text(errors="replace")):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.is_file() else "(no log)"
                pytest.fail(f"coturn did not start (exit {process.poll()}):\n{tail}")
            time.sleep(0.05)
        yield Coturn(f"turn:127.0.0.1:{port}?transport=udp", log)
    finally:
        process.terminate()
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)
