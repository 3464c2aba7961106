"""How long the demo page takes from pressing Start to both videos playing, in headless Chromium.

Usage: .venv/bin/python scripts/time_to_video.py [--runs 3]
Starts `python -m server` on a free loopback port, opens the page with the sample source, clicks
Start, and waits until SR off and SR on both have a size and an advancing currentTime.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
BOTH_PLAYING = """() => ['#video-raw', '#video-sr'].every(s => {
  const v = document.querySelector(s); return v.videoWidth > 0 && v.currentTime > 0; })"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        times = []
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=[
                    "--no-sandbox",
                    "--use-fake-ui-for-media-stream",
                    "--disable-gpu",
                    "--disable-background-networking",
                ],
            )
            for _ in range(args.runs):
                page = browser.new_page()
                page.goto(url)
                started = time.monotonic()
                page.click("#start")
                page.wait_for_function(BOTH_PLAYING, timeout=30_000)
                times.append(time.monotonic() - started)
                page.click("#stop")
                page.close()
            browser.close()
        print(
            f"Start -> both videos playing: median {statistics.median(times):.2f} s over {len(times)} runs "
            f"({', '.join(f'{t:.2f}' for t in times)})"
        )
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
