"""Where a running server's CPU goes, by stage of the frame's path, measured with a sampling profiler.

    python -m srtc.tools.cpu_budget --url http://127.0.0.1:8080 --seconds 60 [--markdown]

Run it while clients are connected (``python -m server.probe --uplink replay --nice 10`` in another
shell). It samples every thread of the server with ``perf`` (Linux; user space, 499 Hz), names the
Python threads with ``py-spy dump`` (``pip install py-spy``), and sorts the samples into stages:

* **decode**: aiortc's decoder thread (``video-decoder``);
* **SR**: the session's SR worker thread (``sr-*``: onnxruntime's call, the chroma and colour work),
  onnxruntime's own pool threads and OpenCV's;
* **return encode**: the threads aiortc encodes in (``asyncio_*``) and libvpx's worker threads;
* **SRTP**: the event loop's time in libsrtp and OpenSSL (encrypting what is sent, decrypting what
  arrives);
* **event loop, Python**: the rest of the event loop: RTP/RTCP handling, the jitter buffer, packetisation,
  signalling, the interpreter itself;
* **kernel**: what ``/proc`` counts as system time (sockets, scheduling); perf does not see it.

The figures are cores over the sampled time, and milliseconds per input frame from the server's own
frame count (``/stats``). A stage the profiler cannot place is shown as such, never guessed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

STAGES = ("decode", "SR", "return encode", "SRTP", "event loop, Python", "other threads", "kernel")
SAMPLE_HZ = 499
_CRYPTO = re.compile(r"srtp|libcrypto|libssl|_binding")
_THREAD_LINE = re.compile(r"^Thread (?:0x[0-9A-Fa-f]+|(\d+)) \((?:idle|active|gil)[^)]*\): \"(.*)\"")


class BudgetError(RuntimeError):
    """The profile cannot be taken: a tool is missing, or the server cannot be reached."""


def python_threads(pid: int) -> dict[int, str]:
    """Native thread id -> Python thread name, from ``py-spy dump``."""
    if shutil.which("py-spy") is None:
        raise BudgetError("py-spy is not installed: pip install py-spy")
    out = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise BudgetError(f"py-spy dump failed: {out.stderr.strip()[:300]}")
    return thread_names(out.stdout)


def thread_names(dump: str) -> dict[int, str]:
    """Native thread id -> name, from the text of ``py-spy dump``."""
    names = {}
    for line in dump.splitlines():
        match = _THREAD_LINE.match(line.strip())
        if match and match.group(1):
            names[int(match.group(1))] = match.group(2)
    return names


def perf_samples(pid: int, seconds: float) -> Counter[tuple[int, str]]:
    """Samples per (thread id, shared object) over ``seconds``."""
    if shutil.which("perf") is None:
        raise BudgetError("perf is not installed (Debian: apt-get install linux-perf)")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "perf.data"
        record = ["perf", "record", "-q", "-F", str(SAMPLE_HZ), "-p", str(pid), "-o", str(data), "--", "sleep"]
        run = subprocess.run([*record, str(seconds)], capture_output=True, text=True, timeout=seconds + 60)
        if run.returncode != 0 or not data.exists():
            raise BudgetError(f"perf record failed: {run.stderr.strip()[:300]}")
        script = subprocess.run(
            ["perf", "script", "-i", str(data), "-F", "tid,ip,dso"], capture_output=True, text=True, timeout=300
        )
    counts: Counter[tuple[int, str]] = Counter()
    for line in script.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            counts[(int(parts[0]), Path(parts[-1].strip("()")).name)] += 1
    if not counts:
        raise BudgetError(f"perf recorded no samples of pid {pid}: {script.stderr.strip()[:300]}")
    return counts


def stage_of(thread: str | None, dso: str) -> str:
    """The stage a sample belongs to, from its thread's Python name (None: not a Python thread) and object."""
    if thread is None:  # threads the libraries started themselves
        if "onnxruntime" in dso or dso.startswith("cv2"):
            return "SR"
        if "vpx" in dso:
            return "return encode"  # the uplink's decoder runs single-threaded (one token partition)
        return "other threads"
    if thread == "video-decoder" or "decoder_worker" in thread:
        return "decode"
    if thread.startswith("sr-"):
        return "SR"
    if thread.startswith("asyncio"):
        return "return encode"
    if thread == "MainThread":
        return "SRTP" if _CRYPTO.search(dso) else "event loop, Python"
    return "other threads"


def process_cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the whole process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def server_stats(url: str) -> dict:
    with urllib.request.urlopen(url.rstrip("/") + "/stats", timeout=10) as resp:
        return json.loads(resp.read())


def server_pid(stats: dict) -> int:
    pid = (stats.get("process") or {}).get("pid")
    if not isinstance(pid, int):
        raise BudgetError("/stats names no server pid: run this on the server's machine, as its operator")
    return pid


def frames_in(stats: dict) -> int:
    return int((stats.get("totals") or {}).get("frames_in") or 0)


def measure(url: str, seconds: float) -> dict:
    """Profile the server behind ``url`` for ``seconds``; the budget by stage."""
    before = server_stats(url)
    pid = server_pid(before)
    names = python_threads(pid)
    user0, system0 = process_cpu_s(pid)
    wall0 = time.monotonic()
    counts = perf_samples(pid, seconds)
    wall = time.monotonic() - wall0
    user1, system1 = process_cpu_s(pid)
    after = server_stats(url)
    frames = frames_in(after) - frames_in(before)
    by_stage: Counter[str] = Counter()
    unplaced: Counter[tuple[str, str]] = Counter()
    for (tid, dso), n in counts.items():
        if dso.startswith("[kernel"):
            continue  # system time is read from /proc whole ("kernel"), not sampled in part
        stage = stage_of(names.get(tid), dso)
        by_stage[stage] += n
        if stage == "other threads":
            unplaced[(names.get(tid, "(not a Python thread)"), dso)] += n
    total = sum(by_stage.values())
    user_cores = (user1 - user0) / wall
    cores = {stage: user_cores * n / total for stage, n in by_stage.items()}
    cores["kernel"] = (system1 - system0) / wall
    fps = frames / wall if wall > 0 else 0.0
    sessions = int((after.get("totals") or {}).get("sessions") or 0)
    return {
        "seconds": round(wall, 1),
        "sessions": sessions,
        "input_fps": round(fps, 1),
        "cores": round(user_cores + cores["kernel"], 3),
        "stages": {
            stage: {
                "cores": round(cores.get(stage, 0.0), 3),
                "ms_per_frame": round(cores.get(stage, 0.0) * 1000.0 / fps, 2) if fps else None,
            }
            for stage in STAGES
        },
        "samples": total,
        "other_threads": [  # what "other threads" holds, largest first, so nothing is hidden
            {"thread": thread, "object": dso, "cores": round(user_cores * n / total, 3)}
            for (thread, dso), n in unplaced.most_common(8)
        ],
    }


def markdown(result: dict) -> str:
    lines = [
        f"{result['sessions']} session(s), {result['input_fps']} input frames/s in all, {result['seconds']} s:"
        f" {result['cores']:.2f} cores",
        "",
        "| stage | cores | ms of CPU per input frame | share |",
        "| --- | ---: | ---: | ---: |",
    ]
    for stage, row in result["stages"].items():
        share = row["cores"] / result["cores"] if result["cores"] else 0.0
        ms = "-" if row["ms_per_frame"] is None else f"{row['ms_per_frame']:.2f}"
        lines.append(f"| {stage} | {row['cores']:.3f} | {ms} | {share:.0%} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srtc.tools.cpu_budget", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the server (on this machine)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to sample (default 30)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table instead of JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not 1 <= args.seconds <= 3600:
        parser.error("--seconds must be within 1..3600")
    try:
        result = measure(args.url, args.seconds)
    except (BudgetError, OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    print(markdown(result) if args.markdown else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
