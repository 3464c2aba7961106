"""What the viewer gets, measured: SR on against forwarded SR off, as received, on real clips.

``python -m srtc.tools.viewer_bench [--clips CLIP...] [--seconds 60] [--kbps 600] [--loss 0.05 --burst 2]
[--viewer-kbps 8000 ...] [--busy 1] [--json OUT]``

For each clip and each ``--viewer-kbps``, a fresh ``python -m server`` (uplink capped at ``--kbps``, with
the loss settings given) is probed for ``--seconds`` by the headless client (``server.probe``), which also
runs the server's model on SR off as received (the generator's own gain on the same decoded frames) and
scores both streams in PSNR-Y, VMAF and VMAF-NEG against the 720p original. One row per run: the margin
of SR on over SR off at the viewer, the share of the generator's own gain it keeps, how transparent the
return encode is, and what it cost (fps, latency, the server's cores). ``--busy N`` runs N processes that
spin on the CPU during each probe: a machine short of CPU, where the governor steps down.

A measuring tool: the server never imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from srtc.shared import SHARED

from .probe import open_generator, run_probe

log = logging.getLogger("srtc.tools.viewer_bench")

VIDEO_DIR = SHARED / "data" / "video"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], timeout_s: float = 60.0) -> tuple[subprocess.Popen, str]:
    """``python -m server`` on a free loopback port; its process and base URL once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            assert proc.stderr is not None  # stderr=PIPE
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError(f"server did not answer within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def start_busy(count: int) -> list[subprocess.Popen]:
    """``count`` processes that spin on the CPU until stopped (at most the probe's length plus a margin)."""
    spin = "import time\nend = time.monotonic() + 900\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]


def row(clip: Path, viewer_kbps: float, network: dict, report) -> dict:
    """The figures of one run that the table shows."""
    sr, raw = report.streams["sr"], report.streams["raw"]
    gain = report.generator_gain or {}
    governor = report.governor() or {}
    sent = (report.server_session or {}).get("streams", {}).get("sr", {}).get("frames_out") or 0

    def minus(a, b):
        return None if a is None or b is None else round(a - b, 3)

    def kept(margin, own):
        return None if margin is None or not own or own <= 0 else round(margin / own, 2)

    paired = report.paired or {}
    psnr_margin = minus(paired.get("sr"), paired.get("raw"))  # on the frames both streams returned
    own_gain = minus(paired.get("generator"), paired.get("raw"))
    neg_margin = minus(sr.get("vmaf_neg"), raw.get("vmaf_neg"))
    neg_gain = minus(gain.get("model_vmaf_neg"), raw.get("vmaf_neg"))
    return {
        "clip": clip.name,
        "viewer_kbps": viewer_kbps,
        "network": network,
        "paired_frames": paired.get("frames"),
        "sr_psnr_y": paired.get("sr"),
        "off_psnr_y": paired.get("raw"),
        "psnr_margin": psnr_margin,
        "generator_gain_db": own_gain,
        "psnr_kept": kept(psnr_margin, own_gain),
        "sr_vmaf": sr.get("vmaf"),
        "off_vmaf": raw.get("vmaf"),
        "vmaf_margin": minus(sr.get("vmaf"), raw.get("vmaf")),
        "sr_vmaf_neg": sr.get("vmaf_neg"),
        "off_vmaf_neg": raw.get("vmaf_neg"),
        "vmaf_neg_margin": neg_margin,
        "generator_vmaf_neg_gain": neg_gain,
        "vmaf_neg_kept": kept(neg_margin, neg_gain),
        "return_encode_psnr_y": gain.get("return_encode_psnr_y"),
        "sr_fps": sr.get("fps"),
        "sr_latency_p95_ms": (sr.get("latency_ms") or {}).get("p95"),
        "off_latency_p95_ms": (raw.get("latency_ms") or {}).get("p95"),
        "server_cores": (report.server_cpu or {}).get("cores_per_session"),
        "model_share": round(governor.get("generator_frames", 0) / sent, 3) if sent else None,
        "return_kbps": ((report.server_session or {}).get("return_bitrate", {}).get("sr") or {}).get("target_kbps"),
        "forwarded_kbps": ((report.server_session or {}).get("streams", {}).get("raw") or {}).get("kbps"),
    }


def markdown(rows: list[dict]) -> str:
    head = [
        "clip",
        "viewer kbps",
        "SR on / off PSNR-Y",
        "margin (kept of gain)",
        "VMAF-NEG on / off",
        "margin (kept of gain)",
        "return encode PSNR-Y",
        "SR fps",
        "p95 ms on / off",
        "cores",
        "model share",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v, d=2):
        return "-" if v is None else f"{v:.{d}f}"

    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["clip"],
                    f"{r['viewer_kbps']:g}",
                    f"{f(r['sr_psnr_y'])} / {f(r['off_psnr_y'])}",
                    f"{f(r['psnr_margin'])} ({f(r['psnr_kept'])} of {f(r['generator_gain_db'])})",
                    f"{f(r['sr_vmaf_neg'], 1)} / {f(r['off_vmaf_neg'], 1)}",
                    f"{f(r['vmaf_neg_margin'])} ({f(r['vmaf_neg_kept'])} of {f(r['generator_vmaf_neg_gain'])})",
                    f(r["return_encode_psnr_y"], 1),
                    f(r["sr_fps"], 1),
                    f"{f(r['sr_latency_p95_ms'], 0)} / {f(r.get('off_latency_p95_ms'), 0)}",
                    f(r["server_cores"]),
                    f(r["model_share"]),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[dict]:
    generator = open_generator(args.model)
    network = {"kbps": args.kbps, "loss": args.loss, "burst": args.burst}
    server_args = ["--kbps", f"{args.kbps:g}", "--loss", f"{args.loss:g}", "--burst", f"{args.burst:g}"]
    if args.model not in ("default", "none"):
        server_args += ["--model", args.model]
    rows = []
    for clip in [Path(c) for c in args.clips]:
        for viewer in args.viewer_kbps:
            log.info("%s at viewer %g kbps, uplink %s", clip.name, viewer, network)
            proc, url = start_server([*server_args, "--viewer-kbps", f"{viewer:g}"])
            busy = start_busy(args.busy)
            try:
                report = await run_probe(
                    url, args.seconds, source=str(clip), psnr_every=args.psnr_every, vmaf=True, generator=generator
                )
            finally:
                for spinner in busy:
                    spinner.kill()
                stop_server(proc)
            rows.append({**row(clip, viewer, network, report), "busy": args.busy})
            log.info("%s", json.dumps(rows[-1]))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(
        prog="python -m srtc.tools.viewer_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--clips", nargs="+", default=[str(p) for p in sorted(VIDEO_DIR.glob("*.*")) if p.suffix in (".mp4", ".webm")]
    )
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--kbps", type=float, default=600.0, help="the simulated uplink's cap (default %(default)s)")
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--burst", type=float, default=1.0)
    ap.add_argument("--viewer-kbps", type=float, nargs="+", default=[8000.0])
    ap.add_argument("--psnr-every", type=int, default=5)
    ap.add_argument("--busy", type=int, default=0, help="processes spinning on the CPU during each probe")
    ap.add_argument("--model", default="default", help="the server's model (a manifest name or path), or 'default'")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    if not args.clips:
        ap.error(f"no clips found in {VIDEO_DIR}: give --clips")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for noisy in ("aioice", "aiortc", "server.probe"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    rows = asyncio.run(run(args))
    print(markdown(rows), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
