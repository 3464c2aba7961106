"""Time one ONNX model the way the server runs it: onnxruntime CPU, 2 intra-op threads.

``python -m srtc.training.speed NAME_OR_PATH... [--height 360 --width 640 --threads 2 --runs 50 --repeats 1]
[--interleave]``
prints the median milliseconds per frame for a [1,1,height,width] input. On a shared machine
other processes inflate single measurements; ``--repeats N`` measures N times and also prints
the lowest of the N medians, the figure least disturbed by them.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from srtc.runtime import open_session
from srtc.zoo import resolve

log = logging.getLogger(__name__)


def make_session(path: str | Path, threads: int = 2) -> ort.InferenceSession:
    """CPU session with the server's settings (fixed thread count, full graph optimisation)."""
    return open_session(path, threads)


def time_model(
    path: str | Path, height: int = 360, width: int = 640, threads: int = 2, runs: int = 50, warmup: int = 5
) -> list[float]:
    """Per-run wall times in ms for a random luma frame of the given size."""
    sess = make_session(path, threads)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, 1, height, width), dtype=np.float32)
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def time_interleaved(
    paths: list[str | Path], height: int = 360, width: int = 640, threads: int = 2, rounds: int = 30, warmup: int = 3
) -> list[list[float]]:
    """Per-round wall times in ms, one run of each model per round, in turn.

    On a shared machine the load drifts within seconds; timing the models one after another lets that
    drift favour whichever ran in a quiet spell. Taking turns run by run gives every model the same
    spells, and the ratio of two models' times within each round cancels most of the drift."""
    sessions = [make_session(p, threads) for p in paths]
    x = np.random.default_rng(0).random((1, 1, height, width), dtype=np.float32)
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    for _ in range(warmup):
        for sess, feed in zip(sessions, feeds):
            sess.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for i, (sess, feed) in enumerate(zip(sessions, feeds)):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times[i].append((time.perf_counter() - t0) * 1e3)
    return times


def ratio_to(times: list[float], reference: list[float]) -> float:
    """Median over rounds of this model's time over the reference's in the same round."""
    return statistics.median(a / b for a, b in zip(times, reference))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="+", help="manifest name or .onnx path")
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50, help="timed runs per measurement")
    ap.add_argument("--repeats", type=int, default=1, help="measurements per model")
    ap.add_argument(
        "--interleave",
        action="store_true",
        help="time the models in turn, one run each per round (--runs rounds), and give each one's "
        "median ratio to the last model's time in the same round",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.interleave:
        times = time_interleaved([resolve(m) for m in args.model], args.height, args.width, args.threads, args.runs)
        for model, t in zip(args.model, times):
            log.info(
                "%s: %.2f ms median, %.3fx %s's time (median of %d interleaved rounds, %d threads)",
                model,
                statistics.median(t),
                ratio_to(t, times[-1]),
                args.model[-1],
                args.runs,
                args.threads,
            )
        return
    for model in args.model:
        medians = []
        for _ in range(args.repeats):
            run_times = time_model(resolve(model), args.height, args.width, args.threads, args.runs)
            q = statistics.quantiles(run_times, n=10)
            medians.append(statistics.median(run_times))
            log.info(
                "%s: %.2f ms median (p10 %.2f, p90 %.2f) at %dx%d, %d threads, %d runs",
                model,
                medians[-1],
                q[0],
                q[-1],
                args.width,
                args.height,
                args.threads,
                args.runs,
            )
        if args.repeats > 1:
            log.info("%s: lowest median of %d measurements: %.2f ms", model, args.repeats, min(medians))


if __name__ == "__main__":
    main()
