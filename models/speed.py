"""Time one ONNX model the way the server runs it: onnxruntime CPU, 2 intra-op threads.

``python -m models.speed NAME_OR_PATH [--height 360 --width 640 --threads 2 --runs 50 --repeats 1]``
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

from models.manifest import resolve

log = logging.getLogger(__name__)


def make_session(path: str | Path, threads: int = 2) -> ort.InferenceSession:
    """CPU session with the server's settings (fixed thread count, full graph optimisation)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as server.engine
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def time_model(path: str | Path, height: int = 360, width: int = 640, threads: int = 2,
               runs: int = 50, warmup: int = 5) -> list[float]:
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="+", help="manifest name or .onnx path")
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50, help="timed runs per measurement")
    ap.add_argument("--repeats", type=int, default=1, help="measurements per model")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for model in args.model:
        medians = []
        for _ in range(args.repeats):
            times = time_model(resolve(model), args.height, args.width, args.threads, args.runs)
            q = statistics.quantiles(times, n=10)
            medians.append(statistics.median(times))
            log.info("%s: %.2f ms median (p10 %.2f, p90 %.2f) at %dx%d, %d threads, %d runs",
                     model, medians[-1], q[0], q[-1], args.width, args.height, args.threads, args.runs)
        if args.repeats > 1:
            log.info("%s: lowest median of %d measurements: %.2f ms", model, args.repeats, min(medians))


if __name__ == "__main__":
    main()
