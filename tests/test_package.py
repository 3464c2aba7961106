"""What ``pip install .`` installs: the runtime, the page and the shipped models, small, and no checkpoints;
and the server starts from any folder with it."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

MAX_WHEEL_BYTES = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot build the wheel here (pip needs setuptools from its index): {done.stderr[-500:]}")
    (path,) = out.glob("srtc-*.whl")
    return path


def test_the_wheel_is_small_and_carries_what_the_server_runs(wheel: Path) -> None:
    assert wheel.stat().st_size < MAX_WHEEL_BYTES
    names = set(zipfile.ZipFile(wheel).namelist())
    manifest = json.loads(zipfile.ZipFile(wheel).read("srtc/zoo/manifest.json"))
    for entry in manifest["models"].values():
        assert f"srtc/zoo/{entry['file']}" in names
    for page in ("index.html", "app.js", "compare.js", "watch.js", "sfu.js", "style.css"):
        assert f"srtc/server/web/{page}" in names
    assert any(n.startswith("srtc/server/web/samples/") and n.endswith(".jpg") for n in names)
    assert {"server/__main__.py", "server/probe.py"} <= names  # the commands users know
    assert not [n for n in names if n.endswith((".pt", ".png")) or n.startswith(("models/", "tests/"))]


def test_the_installed_server_finds_its_page_and_models_from_any_folder(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "from srtc.server.config import CLIENT_DIR; from srtc.zoo import resolve; "
        "print(CLIENT_DIR / 'index.html', resolve(None), resolve('fidelity'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    paths = [Path(p) for p in done.stdout.split()]
    assert all(p.is_file() and site in p.parents for p in paths), paths
