"""End to end in a real browser: headless Chromium opens the demo page, streams the sample source to
the real server over WebRTC and gets both streams back (SR-off 640x360, SR-on 1280x720); a second page
watches that stream as a viewer (/?watch=ID) until the sender leaves.

Needs Debian's /usr/bin/chromium and Playwright for Python (skipped with the reason otherwise).
Everything talks to 127.0.0.1 only. Screenshots land outside the work tree, in $SRTC_TEST_ARTIFACTS
(default: srtc-test-artifacts in the system's temporary folder); with SRTC_UPDATE_SCREENSHOT=1 they are
also copied to docs/ when the test passes.
SRTC_TEST_MODEL, when set, is passed to the server as --model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import TURN_SECRET

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("SRTC_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "srtc-test-artifacts")
SCREENSHOT = ARTIFACTS / "browser.png"
DOCS_SCREENSHOT = ROOT / "docs" / "screenshot.png"
CHROMIUM = Path("/usr/bin/chromium")
HOST = "127.0.0.1"

# The machine is small and shared: be generous with every wait.
SERVER_START_TIMEOUT_S = 60.0
MEDIA_TIMEOUT_MS = 20_000
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-fake-ui-for-media-stream",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


@pytest.fixture(scope="module")
def sync_playwright_api():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (install Debian's chromium package)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright for Python is not installed (pip install playwright)")
    return sync_playwright


@contextlib.contextmanager
def running_server(log_path: Path, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None):
    """The real server as a subprocess on a free port; yields its base URL, stops it at the end."""
    port = _free_port()
    cmd = [sys.executable, "-m", "server", "--host", HOST, "--port", str(port), *extra_args]
    if os.environ.get("SRTC_TEST_MODEL"):
        cmd += ["--model", os.environ["SRTC_TEST_MODEL"]]
    log_file = open(log_path, "w+b")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    base = f"http://{HOST}:{port}"

    def log_tail() -> str:
        log_file.flush()
        return log_path.read_bytes().decode("utf-8", "replace")[-4000:]

    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode} before answering:\n{log_tail()}")
            try:
                with urllib.request.urlopen(base + "/", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer GET / within {SERVER_START_TIMEOUT_S:.0f} s:\n{log_tail()}")
            time.sleep(0.25)
        yield base
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log_file.close()


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("server") / "server.log") as base:
        yield base


@pytest.fixture
def open_page(sync_playwright_api, server_url):
    """A factory: a fresh headless Chromium (extra command-line flags allowed) and one page in it."""
    with sync_playwright_api() as pw:
        browsers = []

        def _open(extra_args: tuple[str, ...] = ()):
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS + list(extra_args)
            )
            browsers.append(browser)
            context = browser.new_context(viewport={"width": 1440, "height": 900})
            page = context.new_page()
            page.set_default_timeout(MEDIA_TIMEOUT_MS)
            messages: list[str] = []
            page.on("console", lambda m: messages.append(f"console.{m.type}: {m.text}"))
            page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
            page.messages = messages
            return page

        try:
            yield _open
        finally:
            for browser in browsers:
                browser.close()


@pytest.fixture
def page(open_page):
    return open_page()


VIDEO_STATE_JS = """
(id) => {
  const v = document.getElementById(id);
  return {w: v.videoWidth, h: v.videoHeight, t: v.currentTime, ready: v.readyState, paused: v.paused};
}
"""


def _wait_playing(page, video_id: str) -> dict:
    """Wait until the video has a size and its currentTime has moved on by at least half a second."""
    page.evaluate("(id) => { delete document.getElementById(id)._t0; }", video_id)
    page.wait_for_function(
        """(id) => {
             const v = document.getElementById(id);
             if (!v || v.videoWidth === 0 || v.readyState < 2) return false;
             v._t0 = v._t0 ?? v.currentTime;
             return v.currentTime - v._t0 > 0.5;
           }""",
        arg=video_id,
        timeout=MEDIA_TIMEOUT_MS,
        polling=200,
    )
    return page.evaluate(VIDEO_STATE_JS, video_id)


def _start_and_wait_playing(page, failure: str, screenshot: bool = False) -> tuple[dict, dict]:
    """Press Start and wait until the page is connected and both returned videos play; (raw, sr) sizes."""
    page.click("#start")
    try:
        page.wait_for_function(
            "() => window.srtcState && window.srtcState.connected === true", timeout=MEDIA_TIMEOUT_MS
        )
        return _wait_playing(page, "video-raw"), _wait_playing(page, "video-sr")
    except Exception:
        if screenshot:
            page.screenshot(path=str(SCREENSHOT))
        pytest.fail(f"{failure}:\n" + _context(page))


def _context(page) -> str:
    state = page.evaluate("() => ({srtc: window.srtcState, status: document.getElementById('status').textContent})")
    return f"page state: {state}\n" + "\n".join(page.messages[-30:])


def _wait_for_remb(server_url: str, session_id: str, timeout_s: float = 15.0) -> dict:
    """The session's return bitrates once the browser's REMB has reached both streams."""
    deadline = time.monotonic() + timeout_s
    while True:
        mine = [s for s in _get_json(f"{server_url}/stats").get("sessions", []) if s.get("id") == session_id]
        rates = mine[0].get("return_bitrate", {}) if mine else {}
        if rates.get("sr", {}).get("requested_kbps") or time.monotonic() > deadline:
            return rates
        time.sleep(0.5)


def test_sample_source_streams_both_ways_and_sr_toggles(page, server_url):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    page.goto(server_url + "/")
    assert page.locator("#source").input_value() == "sample", "the sample source must be the default"
    for selector in ("#start", "#stop", "#sr-toggle", "#video-raw", "#video-sr", "#status"):
        assert page.locator(selector).count() == 1, f"{selector} missing"
    assert page.locator("#sr-toggle").is_checked()

    raw, sr = _start_and_wait_playing(page, "media did not flow", screenshot=True)

    state = page.evaluate("() => window.srtcState")
    assert state["error"] in (None, ""), _context(page)
    session_id = state["sessionId"]
    assert session_id, _context(page)

    # SR-off is the frames as received (the 640x360 sample); SR-on is exactly twice that.
    assert (raw["w"], raw["h"]) == (640, 360), raw
    assert (sr["w"], sr["h"]) == (2 * raw["w"], 2 * raw["h"]), (sr, raw)
    # ...and the page shows both at the same display size, so the comparison is of pictures, not of sizes.
    shown = page.evaluate(
        "() => ['video-raw', 'video-sr'].map(id => { const r = document.getElementById(id)"
        ".getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; })"
    )
    assert shown[0] == shown[1] and shown[0][0] > 100, shown

    # The server knows this session and says SR is on.
    stats = _get_json(f"{server_url}/stats")
    mine = [s for s in stats.get("sessions", []) if s.get("id") == session_id]
    assert mine, f"session {session_id} not in /stats: {stats}"
    assert mine[0].get("sr_enabled") is True, mine[0]

    # The page shows live labels: resolution and a frame rate, and the server's stats.
    page.wait_for_function(
        """() => document.getElementById('res-sr').textContent.includes('1280')
                 && document.getElementById('res-raw').textContent.includes('640')
                 && /\\d/.test(document.getElementById('fps-sr').textContent)
                 && /\\d/.test(document.getElementById('st-frames').textContent)""",
        timeout=MEDIA_TIMEOUT_MS,
    )
    # ...and the server's latency budget, stage by stage, once frames have gone through every stage.
    page.wait_for_function(
        "() => /sr \\d.*encode \\d.*= \\d/.test(document.getElementById('st-budget').textContent)",
        timeout=MEDIA_TIMEOUT_MS,
    )
    # SR off is the page's own encode, forwarded; SR on is encoded at the viewer link's rate, which Chrome's
    # REMB (naming both streams) does not pull down on loopback (srtc/server/return_rate.py). The page shows both.
    page.wait_for_function(
        "() => /\\d+ \\/ \\d+/.test(document.getElementById('st-return').textContent)", timeout=MEDIA_TIMEOUT_MS
    )
    rates = _wait_for_remb(server_url, session_id)
    assert rates["sr"]["requested_kbps"] and not rates["sr"]["congested"], rates
    assert rates["sr"]["target_kbps"] >= 0.8 * rates["sr"]["max_kbps"], rates
    forwarded = [s for s in _get_json(f"{server_url}/stats")["sessions"] if s["id"] == session_id][0]["streams"]["raw"]
    assert forwarded["mode"] == "forwarded" and forwarded["frames_out"] > 0, forwarded
    assert "forwarded" in page.text_content("#on-screen") and "model" in page.text_content("#on-screen")

    # Switch SR off through the page: the page's POST /sessions/{id}/sr must succeed...
    with page.expect_response(lambda r: r.url.endswith(f"/sessions/{session_id}/sr")) as response_info:
        page.locator("label[for='sr-toggle']").click()
    response = response_info.value
    assert response.ok, f"/sr answered {response.status}: {response.text()}"
    assert response.json().get("sr_enabled") is False, response.json()
    assert not page.locator("#sr-toggle").is_checked()
    # ...and the server's stats say so, while SR-on keeps its size (bicubic at 1280x720).
    stats = _get_json(f"{server_url}/stats")
    mine = [s for s in stats.get("sessions", []) if s.get("id") == session_id]
    assert mine and mine[0].get("sr_enabled") is False, stats
    page.wait_for_function(
        "() => document.getElementById('st-sr').textContent.startsWith('off')", timeout=MEDIA_TIMEOUT_MS
    )
    sr_after = _wait_playing(page, "video-sr")
    assert (sr_after["w"], sr_after["h"]) == (sr["w"], sr["h"]), sr_after

    # Back on, so the screenshot shows the network's output next to the input.
    with page.expect_response(lambda r: r.url.endswith(f"/sessions/{session_id}/sr")) as response_info:
        page.locator("label[for='sr-toggle']").click()
    assert response_info.value.ok
    page.wait_for_function(
        "() => document.getElementById('st-sr').textContent.startsWith('on')", timeout=MEDIA_TIMEOUT_MS
    )
    page.wait_for_timeout(1500)  # let the labels and stats tick once more
    page.screenshot(path=str(SCREENSHOT))

    # Stop closes the session on the server too.
    with page.expect_response(lambda r: r.request.method == "DELETE" and session_id in r.url) as response_info:
        page.click("#stop")
    assert response_info.value.ok, response_info.value.status
    page.wait_for_function("() => window.srtcState.connected === false && !window.srtcState.sessionId")
    stats = _get_json(f"{server_url}/stats")
    assert all(s.get("id") != session_id for s in stats.get("sessions", [])), stats
    assert not [m for m in page.messages if m.startswith("pageerror")], page.messages

    print(f"browser test: connected and checked in {time.monotonic() - started:.1f} s")
    if os.environ.get("SRTC_UPDATE_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(SCREENSHOT, DOCS_SCREENSHOT)


def test_offer_errors_are_shown_on_the_page(page, server_url):
    """A 4xx from /offer shows its JSON error text in the status line and in srtcState.error."""
    page.route(
        "**/offer",
        lambda route: route.fulfill(
            status=400, content_type="application/json", body=json.dumps({"error": "synthetic test error"})
        ),
    )
    page.goto(server_url + "/")
    page.click("#start")
    page.wait_for_function("() => window.srtcState.error", timeout=MEDIA_TIMEOUT_MS)
    assert page.evaluate("() => window.srtcState.error") == "synthetic test error"
    assert "synthetic test error" in page.locator("#status").text_content()
    assert page.evaluate("() => window.srtcState.connected") is False
    assert page.locator("#start").is_enabled()


def test_camera_source_with_a_fake_camera(open_page, server_url):
    """The Camera option: getUserMedia at 640x360 (Chromium's fake camera) goes the same way round."""
    page = open_page(("--use-fake-device-for-media-stream",))
    page.goto(server_url + "/")
    page.select_option("#source", "camera")
    raw, sr = _start_and_wait_playing(page, "media did not flow from the fake camera")
    assert (raw["w"], raw["h"]) == (640, 360), raw
    assert (sr["w"], sr["h"]) == (1280, 720), sr
    with page.expect_response(lambda r: r.request.method == "DELETE") as response_info:
        page.click("#stop")
    assert response_info.value.ok
    assert not [m for m in page.messages if m.startswith("pageerror")], page.messages


def test_network_card_applies_settings_and_shows_range_errors(page, server_url):
    """The page's network form: an out-of-range loss is refused with the field named; a valid one applies."""
    page.goto(server_url + "/")
    page.fill("#net-loss", "150")
    page.click("#net-apply")
    page.wait_for_function("() => document.querySelector('#net-status').dataset.state === 'error'")
    assert "loss" in page.text_content("#net-status")
    assert _get_json(server_url + "/network")["settings"]["loss"] == 0
    page.fill("#net-loss", "5")
    page.fill("#net-burst", "2")
    page.fill("#net-delay", "40")
    page.click("#net-apply")
    page.wait_for_function("() => document.querySelector('#net-status').dataset.state === 'ok'")
    settings = _get_json(server_url + "/network")["settings"]
    assert settings["loss"] == 0.05 and settings["burst"] == 2 and settings["delay_ms"] == 40
    # Put the shared server back as the other tests expect it.
    request = urllib.request.Request(
        server_url + "/network",
        data=json.dumps({"loss": 0, "burst": 1, "delay_ms": 0}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200


CANVAS_HALVES_JS = """
(split) => {
  const c = document.getElementById('wipe-canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const at = Math.round(split * c.width);
  const halves = [[0, at - 8], [at + 8, c.width]].map(([x0, x1]) => {
    let n = 0, sum = 0, sq = 0;
    for (let y = 0; y < c.height; y += 6) for (let x = x0; x < x1; x += 6) {
      const i = 4 * (y * c.width + x), v = (d[i] + d[i + 1] + d[i + 2]) / 3;
      n += 1; sum += v; sq += v * v;
    }
    const mean = sum / n;
    return {mean, std: Math.sqrt(Math.max(0, sq / n - mean * mean))};
  });
  return halves;
}
"""

DETAILED_SPOT_JS = """
() => {
  const v = document.getElementById('video-sr'), c = document.createElement('canvas');
  c.width = 320; c.height = 180;
  const ctx = c.getContext('2d');
  ctx.drawImage(v, 0, 0, 320, 180);
  const d = ctx.getImageData(0, 0, 320, 180).data;
  let best = [0.5, 0.5], bestStd = -1;
  for (let gy = 1; gy < 6; gy += 1) for (let gx = 1; gx < 10; gx += 1) {
    const x0 = gx * 32 - 12, y0 = gy * 30 - 12;
    let n = 0, sum = 0, sq = 0;
    for (let y = y0; y < y0 + 24; y += 1) for (let x = x0; x < x0 + 24; x += 1) {
      const g = d[4 * (y * 320 + x) + 1]; n += 1; sum += g; sq += g * g;
    }
    const std = Math.sqrt(Math.max(0, sq / n - (sum / n) ** 2));
    if (std > bestStd) { bestStd = std; best = [(x0 + 12) / 320, (y0 + 12) / 180]; }
  }
  return best;
}
"""

LOUPES_JS = """
() => {
  const get = (id) => { const c = document.getElementById(id);
                        return c.getContext('2d').getImageData(0, 0, c.width, c.height).data; };
  const a = get('loupe-raw'), b = get('loupe-sr');
  let opaque = 0, n = 0, diff = 0, sum = 0, sq = 0;
  for (let i = 0; i < a.length; i += 16) {
    n += 1; opaque += (a[i + 3] === 255 && b[i + 3] === 255) ? 1 : 0; diff += Math.abs(a[i + 1] - b[i + 1]);
    sum += b[i + 1]; sq += b[i + 1] * b[i + 1];
  }
  return {opaque: opaque / n, agree: diff / n, std: Math.sqrt(Math.max(0, sq / n - (sum / n) ** 2))};
}
"""


def test_wipe_and_loupe_show_both_streams_on_the_same_frame(page, server_url):
    """Wipe: one picture, SR off left of a draggable divider, SR on right; loupe: the same spot of both at 2:1,
    under the pointer. Each SR-on frame is paired with the SR-off frame it was made from (closest thumbnail)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.goto(server_url + "/")
    _start_and_wait_playing(page, "media did not flow")

    page.click("[data-view=wipe]")
    assert page.locator("#wipe-view").is_visible() and not page.locator("section.compare").is_visible()
    page.wait_for_function("() => window.srtcCompare.drawn > 15", timeout=MEDIA_TIMEOUT_MS)
    compare = page.evaluate("() => window.srtcCompare")
    assert compare["lastSad"] is not None and compare["lastSad"] < 8, compare  # a match, not just any frame
    left, right = page.evaluate(CANVAS_HALVES_JS, 0.5)
    assert left["std"] > 10 and right["std"] > 10, (left, right)  # real pictures on both sides of the divider
    box = page.locator("#wipe-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    assert abs(page.evaluate("() => window.srtcCompare.split") - 0.3) < 0.02
    drawn = page.evaluate("() => window.srtcCompare.drawn")
    page.wait_for_function(f"() => window.srtcCompare.drawn > {drawn + 5}", timeout=MEDIA_TIMEOUT_MS)
    assert page.get_attribute("#wipe-divider", "aria-valuenow") == "30"
    left, right = page.evaluate(CANVAS_HALVES_JS, 0.3)
    assert left["std"] > 10 and right["std"] > 10, (left, right)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "wipe.png"))

    page.click("[data-view=loupe]")
    assert page.locator("#loupe-view").is_visible() and page.locator("section.compare").is_visible()
    video = page.locator("#video-sr").bounding_box()
    fx, fy = page.evaluate(DETAILED_SPOT_JS)  # the most detailed spot of the current picture: a loupe worth seeing
    page.mouse.move(video["x"] + video["width"] * fx, video["y"] + video["height"] * fy)
    drawn = page.evaluate("() => window.srtcCompare.drawn")
    page.wait_for_function(f"() => window.srtcCompare.drawn > {drawn + 10}", timeout=MEDIA_TIMEOUT_MS)
    center = page.evaluate("() => window.srtcCompare.center")
    assert abs(center["x"] - fx * 1280) < 20 and abs(center["y"] - fy * 720) < 20, center
    drawn_loupes = page.evaluate(LOUPES_JS)
    assert drawn_loupes["opaque"] > 0.99 and drawn_loupes["agree"] < 40, drawn_loupes  # both drawn, the same spot
    assert drawn_loupes["std"] > 8, drawn_loupes  # detail, where the pointer is
    assert page.locator("#loupe-spot").is_visible()
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "loupe.png"), full_page=True)
    assert not [m for m in page.messages if m.startswith("pageerror")], page.messages
    if os.environ.get("SRTC_UPDATE_SCREENSHOT") == "1":
        for name in ("wipe.png", "loupe.png"):
            shutil.copyfile(ARTIFACTS / name, ROOT / "docs" / f"screenshot-{name}")


PICTURE_JS = """
(id) => {
  const v = document.getElementById(id), c = document.createElement('canvas');
  c.width = 160; c.height = 90;
  const ctx = c.getContext('2d');
  ctx.drawImage(v, 0, 0, 160, 90);
  const d = ctx.getImageData(0, 0, 160, 90).data;
  let n = 0, sum = 0, sq = 0;
  for (let i = 0; i < d.length; i += 4) {
    const g = (d[i] + d[i + 1] + d[i + 2]) / 3; n += 1; sum += g; sq += g * g;
  }
  const mean = sum / n;
  return {w: v.videoWidth, h: v.videoHeight, frames: v.getVideoPlaybackQuality().totalVideoFrames,
          mean, std: Math.sqrt(Math.max(0, sq / n - mean * mean))};
}
"""

ENDED_TEXT = "The stream has ended: its sender left."


def _watch_context(viewer) -> str:
    state = viewer.evaluate("() => ({watch: window.srtcWatch, status: document.getElementById('status').textContent})")
    return f"watch page state: {state}\n" + "\n".join(viewer.messages[-30:])


def _watch_and_wait_playing(viewer, server_url: str, stream: str) -> tuple[dict, dict]:
    """Open the watch page of ``stream``; wait until it is connected and both videos play; (sr, raw) sizes."""
    viewer.goto(f"{server_url}/?watch={stream}")
    try:
        viewer.wait_for_function("() => window.srtcWatch && window.srtcWatch.connected", timeout=MEDIA_TIMEOUT_MS)
        return _wait_playing(viewer, "video-sr"), _wait_playing(viewer, "video-raw")
    except Exception:
        pytest.fail(f"the viewer's media did not flow:\n{_watch_context(viewer)}")


def test_a_viewer_watches_the_senders_stream_until_the_sender_leaves(open_page, server_url):
    """Page 1 sends; page 2 opens /?watch=<its stream> and plays SR on at 1280x720 and SR off at 640x360, real
    pictures, frames advancing; another viewer's Leave closes it on the server; when page 1 stops, page 2 says
    the stream has ended and stops its videos."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    sender = open_page()
    sender.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server_url)
    sender.goto(server_url + "/")
    _start_and_wait_playing(sender, "the sender's media did not flow")

    # The sender's page names its stream and offers the viewer link.
    sender.wait_for_function("() => document.getElementById('share').dataset.stream", timeout=MEDIA_TIMEOUT_MS)
    stream = sender.get_attribute("#share", "data-stream")
    link = f"{server_url}/?watch={stream}"
    assert sender.input_value("#share-link") == link
    sender.click("#share-copy")
    sender.wait_for_function("() => document.getElementById('share-status').textContent", timeout=5_000)
    status = sender.text_content("#share-status")
    if status == "copied":
        assert sender.evaluate("() => navigator.clipboard.readText()") == link
    else:  # no clipboard here: the link is left selected to copy by hand
        assert sender.evaluate("() => window.getSelection().toString() || document.activeElement.value") == link
    # The operator's page (loopback) lists the stream with a link to watch it.
    sender.wait_for_selector(f"#live-list a[href='{link}']", timeout=10_000)

    viewer = open_page()
    sr, raw = _watch_and_wait_playing(viewer, server_url, stream)
    for selector in ("#start", "#source", "#sr-toggle", "#video-local"):
        assert not viewer.locator(selector).is_visible(), f"{selector} shows in watch mode"
    assert viewer.locator("#leave").is_enabled()
    assert viewer.text_content("#status") == f"Watching stream {stream}"
    assert (sr["w"], sr["h"]) == (1280, 720), sr
    assert (raw["w"], raw["h"]) == (640, 360), raw

    # Real pictures (the sample photographs, not black), and new frames keep coming on both.
    first = {v: viewer.evaluate(PICTURE_JS, v) for v in ("video-sr", "video-raw")}
    viewer.wait_for_timeout(1000)
    second = {v: viewer.evaluate(PICTURE_JS, v) for v in ("video-sr", "video-raw")}
    for v in ("video-sr", "video-raw"):
        assert first[v]["std"] > 10 and second[v]["std"] > 10, (v, first[v], second[v])
        assert second[v]["frames"] >= first[v]["frames"] + 10, (v, first[v], second[v])

    # The server's figures for this viewer and its stream reach the page.
    info = _get_json(f"{server_url}/streams/{stream}")
    assert info["viewers"] == 1 and info["sr_enabled"] is True, info
    viewer.wait_for_function(
        """(size) => /[1-9]\\d* \\/ [1-9]/.test(document.getElementById('wt-frames').textContent)
                 && document.getElementById('wt-input').textContent === size
                 && document.getElementById('wt-viewers').textContent === '1'""",
        arg=f"{info['width']}×{info['height']}",
        timeout=MEDIA_TIMEOUT_MS,
    )
    viewer.wait_for_timeout(500)
    viewer.screenshot(path=str(ARTIFACTS / "watch.png"))

    # A second viewer's Leave closes it on the server; the first watches on.
    other = open_page()
    _watch_and_wait_playing(other, server_url, stream)
    other_id = other.evaluate("() => window.srtcWatch.viewerId")
    assert _get_json(f"{server_url}/streams/{stream}")["viewers"] == 2
    with other.expect_response(lambda r: r.request.method == "DELETE" and other_id in r.url) as response_info:
        other.click("#leave")
    assert response_info.value.ok, response_info.value.status
    other.wait_for_function("() => window.srtcWatch.phase === 'stopped'", timeout=5_000)
    assert _get_json(f"{server_url}/streams/{stream}")["viewers"] == 1
    assert viewer.evaluate("() => window.srtcWatch.connected") is True

    # The sender leaves: the watch page says so within a few seconds and stops its videos.
    sender.click("#stop")
    left = time.monotonic()
    try:
        viewer.wait_for_function("() => window.srtcWatch.ended", timeout=10_000)
    except Exception:
        pytest.fail(f"the watch page did not see the end:\n{_watch_context(viewer)}")
    seen_after = time.monotonic() - left
    assert viewer.text_content("#status") == ENDED_TEXT
    assert viewer.evaluate("() => ['video-sr', 'video-raw'].every((id) => !document.getElementById(id).srcObject)")
    assert viewer.locator("#leave").is_disabled()
    with pytest.raises(urllib.error.HTTPError) as gone:
        _get_json(f"{server_url}/streams/{stream}")
    assert gone.value.code == 404
    viewer.screenshot(path=str(ARTIFACTS / "watch-ended.png"))
    for page in (sender, viewer, other):
        assert not [m for m in page.messages if m.startswith("pageerror")], page.messages
    print(f"watch test: ended seen {seen_after:.1f} s after the sender left; {time.monotonic() - started:.1f} s in all")


def test_watching_an_unknown_stream_shows_the_servers_error(page, server_url):
    """A watch link to no stream: the page shows the server's 404 text and offers no video."""
    page.goto(server_url + "/?watch=no-such-stream")
    page.wait_for_function("() => window.srtcWatch && window.srtcWatch.error", timeout=MEDIA_TIMEOUT_MS)
    assert page.evaluate("() => window.srtcWatch.errorStatus") == 404
    status = page.text_content("#status")
    assert status.startswith("Error: ") and "no such stream" in status, status
    assert page.evaluate("() => window.srtcWatch.connected") is False


SELECTED_CANDIDATE_TYPES_JS = """
async () => {
  const stats = await window.srtc.peer().getStats();
  const byId = new Map();
  stats.forEach((r) => byId.set(r.id, r));
  const transport = [...byId.values()].find((r) => r.type === 'transport' && r.selectedCandidatePairId);
  const pair = transport && byId.get(transport.selectedCandidatePairId);
  if (!pair) return null;
  return {local: byId.get(pair.localCandidateId).candidateType, remote: byId.get(pair.remoteCandidateId).candidateType};
}
"""


def test_a_relay_only_page_gets_both_streams_through_coturn(open_page, coturn, tmp_path):
    """The page with ?relay=1 gathers only TURN candidates (iceTransportPolicy "relay"), with credentials from
    GET /ice-servers; both streams still come back, through Debian's coturn on loopback."""
    env = {**os.environ, "SRTC_TURN_SECRET": TURN_SECRET}
    with running_server(tmp_path / "server.log", ("--turn-url", coturn.url), env) as base:
        page = open_page()
        page.goto(base + "/?relay=1")
        raw, sr = _start_and_wait_playing(page, "a relay-only page got no video through coturn")
        assert (sr["w"], sr["h"]) == (1280, 720) and (raw["w"], raw["h"]) == (640, 360)
        pair = page.evaluate(SELECTED_CANDIDATE_TYPES_JS)
        assert pair is not None and pair["local"] == "relay", pair
        assert coturn.granted("srtc-client") >= 1, coturn.log.read_text()[-3000:]
        page.click("#stop")
