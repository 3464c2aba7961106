# ruff: noqa: F811  (the fixtures are imported from the browser and worker tests, then named as arguments)
"""The page in SFU mode: headless Chromium publishes into a Janus room, an SR worker takes the feed, and the
page shows the feed as Janus forwards it beside the worker's 1280x720 SR feed; a second page watches it.

Needs Debian's chromium, janus and Playwright (each skipped with the reason otherwise). Janus gathers no
candidates on loopback interfaces, so its media is on the machine's own address (see docs/SFU.md).
"""

from __future__ import annotations

import pytest

from .test_browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    _wait_playing,
    open_page,
    server_url,
    sync_playwright_api,
)
from .test_worker import ROOM, janus, media_host, start_worker  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

# Chrome hides its host addresses behind mDNS names unless the page has camera access; Janus ignores mDNS.
CHROMIUM_SFU_ARGS = ("--disable-features=WebRtcHideLocalIpsWithMdns",)


def test_the_page_publishes_into_a_janus_room_and_shows_the_workers_sr_feed(
    open_page,
    server_url,
    janus,
    media_host,
    tmp_path,
):
    worker = start_worker(janus.url, 1, tmp_path / "worker.log", media_host)
    try:
        page = open_page(CHROMIUM_SFU_ARGS)
        page.goto(f"{server_url}/?sfu={janus.url}&room={ROOM}")
        page.click("#start")
        try:
            raw = _wait_playing(page, "video-raw")
            page.wait_for_function("() => window.srtcSfu && window.srtcSfu.srFeed !== null", timeout=30_000)
            sr = _wait_playing(page, "video-sr")
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "sfu-failed.png"))
            log = (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
            pytest.fail(
                f"no picture in SFU mode: {page.evaluate('() => window.srtcSfu')}\n{page.messages[-20:]}\n{log}"
            )
        assert (raw["w"], raw["h"]) == (640, 360) and (sr["w"], sr["h"]) == (1280, 720)
        own = page.evaluate("() => window.srtcSfu.ownFeed")
        link = page.input_value("#share-link")
        assert f"feed={own}" in link and "sfu=" in link
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "sfu.png"))
        # A second page watches that publisher through Janus: the same two feeds, nothing published.
        viewer = open_page(CHROMIUM_SFU_ARGS)
        viewer.goto(link)
        viewer.click("#start")
        assert _wait_playing(viewer, "video-raw")["w"] == 640
        viewer.wait_for_function("() => window.srtcSfu && window.srtcSfu.srFeed !== null", timeout=30_000)
        assert _wait_playing(viewer, "video-sr")["w"] == 1280
        assert viewer.evaluate("() => window.srtcSfu.ownFeed") is None
        assert not [m for m in page.messages + viewer.messages if m.startswith("pageerror")]
    finally:
        worker.terminate()
        worker.wait(10)
