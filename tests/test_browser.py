"""End to end in a real browser: headless Chromium opens the demo page, streams the sample source to
the real server over WebRTC and gets both streams back (SR-off 640x360, SR-on 1280x720).

Needs Debian's /usr/bin/chromium and Playwright for Python (skipped with the reason otherwise).
Everything talks to 127.0.0.1 only. A screenshot lands in test-artifacts/browser.png; with
SRTC_UPDATE_SCREENSHOT=1 it is also copied to docs/screenshot.png when the test passes.
SRTC_TEST_MODEL, when set, is passed to the server as --model.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
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


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    """The real server as a subprocess on a free port; yields its base URL, stops it at the end."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [sys.executable, "-m", "server", "--host", HOST, "--port", str(port)]
    if os.environ.get("SRTC_TEST_MODEL"):
        cmd += ["--model", os.environ["SRTC_TEST_MODEL"]]
    log_file = open(log_path, "w+b")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
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


@pytest.fixture
def open_page(sync_playwright_api, server_url):
    """A factory: a fresh headless Chromium (extra command-line flags allowed) and one page in it."""
    with sync_playwright_api() as pw:
        browsers = []

        def _open(extra_args: tuple[str, ...] = ()):
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                         args=CHROMIUM_ARGS + list(extra_args))
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
        page.wait_for_function("() => window.srtcState && window.srtcState.connected === true",
                               timeout=MEDIA_TIMEOUT_MS)
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
        if all(rates.get(k, {}).get("requested_kbps") for k in ("sr", "raw")) or time.monotonic() > deadline:
            return rates
        time.sleep(0.5)


def test_sample_source_streams_both_ways_and_sr_toggles(page, server_url):
    ARTIFACTS.mkdir(exist_ok=True)
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
    page.wait_for_function("() => /sr \\d.*encode \\d.*= \\d/.test(document.getElementById('st-budget').textContent)",
                           timeout=MEDIA_TIMEOUT_MS)
    # Chrome sends one REMB for the transport, naming both returned streams: the server splits it, the
    # 720p SR stream taking the larger part (server/return_rate.py), and the page shows both bitrates.
    page.wait_for_function("() => /\\d+ \\/ \\d+/.test(document.getElementById('st-return').textContent)",
                           timeout=MEDIA_TIMEOUT_MS)
    rates = _wait_for_remb(server_url, session_id)
    assert rates["sr"]["requested_kbps"] > 2 * rates["raw"]["requested_kbps"], rates

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
    page.wait_for_function("() => document.getElementById('st-sr').textContent.startsWith('off')",
                           timeout=MEDIA_TIMEOUT_MS)
    sr_after = _wait_playing(page, "video-sr")
    assert (sr_after["w"], sr_after["h"]) == (sr["w"], sr["h"]), sr_after

    # Back on, so the screenshot shows the network's output next to the input.
    with page.expect_response(lambda r: r.url.endswith(f"/sessions/{session_id}/sr")) as response_info:
        page.locator("label[for='sr-toggle']").click()
    assert response_info.value.ok
    page.wait_for_function("() => document.getElementById('st-sr').textContent.startsWith('on')",
                           timeout=MEDIA_TIMEOUT_MS)
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
    page.route("**/offer", lambda route: route.fulfill(
        status=400, content_type="application/json", body=json.dumps({"error": "synthetic test error"})))
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
    request = urllib.request.Request(server_url + "/network", data=json.dumps({"loss": 0, "burst": 1, "delay_ms": 0}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200
