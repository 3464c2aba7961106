"""Side-by-side CPU benchmark of the full upscaling path: bicubic, our models and published peers.

``python -m srtc.tools.bench [--json] [--peers DIR [--peers-only NAME...]] [--frames N] [--runs N]
[--row-seconds S] [--threads 1,2] [--default-only] [--plot PNG]``

Every candidate is timed the way the server runs it (``upscale(av.VideoFrame yuv420p 640x360)``
-> yuv420p 1280x720: Y through the network, U/V bicubic) on the same decoded frames of real
content, in one process, so the ratios between rows are meaningful even on a noisy shared machine.
Each row also gets its parameters, its multiply-accumulates at 640x360 (counted from the ONNX graph),
its Set5/Set14 Y-PSNR under ``srtc.training.evaluate``'s protocol, and how close its conv work gets to the
machine's measured float32 matrix-multiply rate.

Peers (``--peers``, e.g. ``../shared/peers``; see its SOURCES.md): every x2 file there, rebuilt by
``srtc.training.peers`` and exported to ONNX under our contract, so they run in the same runtime as our models:
- the RGB nets of the ETDS repo (ETDS, ECBSR, ECBSR-ET, ABPN, ABPN-ET, FSRCNN-RGB, ESPCN-RGB), run on Y
  replicated (first conv folded to one channel) with the Y of their output;
- the OpenCV FSRCNN / FSRCNN-small / ESPCN ``.pb`` (Y-only), rebuilt from their GraphDef constants,
  with our limited-range Y mapped to their full-range convention and back inside the graph.
Bicubic++ (x3 only) is listed as skipped. ``--peers-only`` takes short names or patterns (``ETDS-*``).

Slow rows are timed on fewer frames: each (row, threads) stops after ``--row-seconds`` once it has
``--min-frames`` timed frames, so the whole table stays a few minutes on two cores.

For each peer (at each thread count) the fastest project model that is faster *and* at least as good
on both Set5 and Set14 is named, or "none" with why (``comparison`` in the JSON).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import av
import cv2
import numpy as np

from srtc.runtime import open_session
from srtc.server.engine import BicubicUpscaler, OnnxUpscaler, plane_view
from srtc.shared import SHARED
from srtc.training.peers import export_peers
from srtc.zoo import MANIFEST_PATH, load_manifest, resolve

from .bench_frames import HEIGHT, WIDTH, load_frames

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

BENCHMARKS = SHARED / "data" / "benchmarks"
WARMUP = 5
ROW_SECONDS = 15.0  # per (row, threads): stop timing after this once MIN_FRAMES frames are timed
MIN_FRAMES = 20


# ---------------------------------------------------------------- counting


def _tensor_shapes(model: onnx.ModelProto, names: set[str], channels: int, height: int, width: int) -> dict:
    """Actual shapes of ``names`` for one input, read by running the graph once (unoptimised, so names stay).

    Shape inference alone is not enough: exported graphs pad to a multiple with computed sizes.
    """
    import onnx  # the train extra: imported where a graph is read, so the module loads without it

    model = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in model.graph.output}
    wanted = sorted(names - present)
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in wanted)
    sess = open_session(model.SerializeToString(), threads=1, optimize=False)
    x = np.full((1, channels, height, width), 0.5, np.float32)
    outputs = [o.name for o in sess.get_outputs()]
    values = sess.run(outputs, {sess.get_inputs()[0].name: x})
    return {n: list(v.shape) for n, v in zip(outputs, values)}


def count_macs(model: onnx.ModelProto, height: int = HEIGHT, width: int = WIDTH) -> int:
    """Multiply-accumulates of the Conv/ConvTranspose/Gemm/MatMul nodes for one [1,C,height,width] input.

    Counted from the graph rather than from an architecture description, so any ONNX file gets a figure.
    """
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    names: set[str] = set()
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            names.update(n for n in node.input[:2] if n not in weights)
            names.add(node.output[0])
    if not names:
        return 0
    dims = model.graph.input[0].type.tensor_type.shape.dim
    channels = dims[1].dim_value if len(dims) > 1 and dims[1].dim_value else 1
    shapes = {**weights, **_tensor_shapes(model, names, channels, height, width)}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":  # each output value: Cin/group * kh * kw
            total += int(np.prod(shapes[node.output[0]])) * int(np.prod(shapes[node.input[1]][1:]))
        elif node.op_type == "ConvTranspose":  # each input value scatters Cout/group * kh * kw
            total += int(np.prod(shapes[node.input[0]])) * int(np.prod(shapes[node.input[1]][1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            total += int(np.prod(shapes[node.output[0]])) * shapes[node.input[0]][-1]
    return total


def count_params(model: onnx.ModelProto) -> int:
    """Learned parameters: the floating-point initializers (shape constants excluded)."""
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in floats)


def matmul_gflops(n: int = 1024, repeats: int = 7) -> float:
    """Median GFLOP/s of numpy (BLAS) float32 n x n matmuls in this process, with its BLAS threads."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        rates.append(2.0 * n**3 / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def ceiling_gflops(threads: int, n: int = 2048, repeats: int = 7) -> float:
    """The float32 ceiling at ``threads`` cores: BLAS reads its thread count at start-up, so a child measures it."""
    import subprocess

    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
        env[var] = str(threads)
    code = f"from srtc.tools.bench import matmul_gflops; print(matmul_gflops({n}, {repeats}))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    return float(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- candidates


@dataclass
class Candidate:
    """One row to time: something with ``upscale(frame)`` and what is known about it."""

    name: str
    kind: str  # baseline | project | peer
    make: Callable[[int], object]  # threads -> upscaler
    params: int | None = None
    macs: int | None = None
    psnr: Callable[[], dict] | None = None  # computes {"Set5": dB, "Set14": dB}
    psnr_note: str | None = None
    note: str = ""
    precision: str = "fp32"  # what the graph computes in: fp32, or int8 (QDQ)


@dataclass
class Row:
    """One measured row of the table (and of the JSON ``rows``)."""

    name: str
    kind: str
    threads: int
    params: int | None
    macs: int | None
    p50_ms: float
    p95_ms: float
    fps: float
    gmac_per_s: float | None
    ceiling_pct: float | None
    psnr: dict | None
    psnr_note: str | None
    note: str = ""
    timed_frames: int | None = None
    precision: str = "fp32"


_SAMPLES_CACHE: dict[str, list] = {}


def psnr_sets(upscale_luma: Callable[[np.ndarray], np.ndarray]) -> dict:
    """Mean Y-PSNR on Set5 and Set14 with ``srtc.training.evaluate``'s protocol; empty without ../shared."""
    from srtc.training import evaluate

    result = {}
    for name in ("Set5", "Set14"):
        folder = BENCHMARKS / name
        if not folder.is_dir():
            continue
        if name not in _SAMPLES_CACHE:
            _SAMPLES_CACHE[name] = evaluate.load_samples(folder)
        result[name] = round(evaluate.evaluate(_SAMPLES_CACHE[name], upscale_luma)["model"], 3)
    return result


def onnx_candidate(
    name: str,
    path: Path,
    kind: str,
    params: int | None = None,
    note: str = "",
    psnr_note: str | None = None,
    with_psnr: bool = True,
    precision: str = "fp32",
) -> Candidate:
    """A row for any contract-following ONNX file, run by the server's own ``OnnxUpscaler``."""
    import onnx

    from srtc.training.evaluate import onnx_upscaler

    graph = onnx.load(str(path))
    return Candidate(
        name=name,
        kind=kind,
        make=lambda threads: OnnxUpscaler(path, threads=threads, name=name),
        params=params if params is not None else count_params(graph),
        macs=count_macs(graph),
        psnr=(lambda: psnr_sets(onnx_upscaler(path, 2))) if with_psnr else None,
        psnr_note=psnr_note,
        note=note,
        precision=precision,
    )


def bicubic_candidate() -> Candidate:
    """OpenCV bicubic on all three planes: the SR-off path, the floor every model must beat."""

    def luma(y: np.ndarray) -> np.ndarray:
        return cv2.resize(y, (y.shape[1] * 2, y.shape[0] * 2), interpolation=cv2.INTER_CUBIC) / 255.0

    return Candidate(
        "bicubic (OpenCV)",
        "baseline",
        lambda threads: BicubicUpscaler(),
        params=0,
        psnr=lambda: psnr_sets(luma),
        note="cv2 INTER_CUBIC, all planes",
        precision="u8",
    )


def project_candidates(manifest_path: Path = MANIFEST_PATH, only_default: bool = False) -> list[Candidate]:
    """Every model of the manifest, at the precision it lists (the file is what ships)."""
    manifest = load_manifest(manifest_path)
    names = [manifest["default"]] if only_default else list(manifest["models"])
    rows = []
    for name in names:
        entry = manifest["models"][name]
        rows.append(
            onnx_candidate(
                name,
                resolve(name, manifest_path),
                "project",
                entry.get("params"),
                note=f"{entry.get('precision', '?')}, manifest",
                precision=entry.get("precision", "fp32"),
            )
        )
    return rows


# ---------------------------------------------------------------- peers


def peer_candidates(
    peers: Path, workdir: Path, only: tuple[str, ...] | None = None
) -> tuple[list[Candidate], list[dict]]:
    """Rebuild, check, export (``srtc.training.peers``) and wrap every x2 peer (``only``: short names or patterns)."""
    exported, skipped = export_peers(peers, workdir, only)
    found = [
        onnx_candidate(
            p.name,
            p.onnx_path,
            "peer",
            p.params,
            note=f"{p.note}; {p.params} published params",
            with_psnr=p.ok,
            psnr_note=None if p.ok else f"ONNX differs from its reference by {p.error:.1e}",
        )
        for p in exported
    ]
    return found, skipped


# ---------------------------------------------------------------- timing


def time_upscaler(
    upscaler,
    frames: list[av.VideoFrame],
    runs: int,
    warmup: int = WARMUP,
    row_seconds: float | None = None,
    min_frames: int = MIN_FRAMES,
) -> list[float]:
    """Per-frame wall times (ms) of the full path, ``runs`` passes over ``frames`` after a warm-up.

    With ``row_seconds``, a slow upscaler stops once it has spent that long *and* timed ``min_frames``
    frames (the warm-up is cut to a fifth of it, at least 2 frames): the median of 20 frames of a 1 s
    model says as much as 180, and the whole table stays minutes, not an hour.
    """
    start = time.perf_counter()
    for i, frame in enumerate(frames[:warmup]):
        upscaler.upscale(frame)
        if row_seconds is not None and i >= 1 and time.perf_counter() - start > row_seconds / 5:
            break
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(runs):
        for frame in frames:
            t0 = time.perf_counter()
            out = upscaler.upscale(frame)
            times.append((time.perf_counter() - t0) * 1e3)
            if row_seconds is not None and len(times) >= min_frames and time.perf_counter() - start > row_seconds:
                break
        else:
            continue
        break
    if (out.width, out.height, out.format.name) != (2 * WIDTH, 2 * HEIGHT, "yuv420p"):
        raise RuntimeError(f"upscaler gave {out.width}x{out.height} {out.format.name}")
    return times


def measure(
    candidate: Candidate,
    frames: list[av.VideoFrame],
    runs: int,
    threads: int,
    ceiling_gmacs: float,
    psnr: dict | None,
    psnr_note: str | None,
    row_seconds: float | None = None,
    min_frames: int = MIN_FRAMES,
) -> Row:
    """Time one candidate at one thread count (OpenCV's pool set to the same count, as for chroma)."""
    cv2.setNumThreads(threads)
    times = time_upscaler(candidate.make(threads), frames, runs, row_seconds=row_seconds, min_frames=min_frames)
    p50 = statistics.median(times)
    p95 = float(np.percentile(times, 95))
    rate = candidate.macs / (p50 * 1e6) if candidate.macs else None  # GMAC/s
    return Row(
        candidate.name,
        candidate.kind,
        threads,
        candidate.params,
        candidate.macs,
        round(p50, 2),
        round(p95, 2),
        round(1000.0 / p50, 1),
        round(rate, 2) if rate else None,
        round(100.0 * rate / ceiling_gmacs, 1) if rate else None,
        psnr,
        psnr_note,
        candidate.note,
        len(times),
        candidate.precision,
    )


def evaluate_psnr(candidate: Candidate) -> tuple[dict | None, str | None]:
    """Quality once per candidate (threads do not change outputs); reasons instead of numbers."""
    if candidate.psnr is None:
        return None, candidate.psnr_note or "not evaluated"
    if not BENCHMARKS.is_dir():
        return None, f"{BENCHMARKS} not found"
    return candidate.psnr(), candidate.psnr_note


# ---------------------------------------------------------------- a faster project model per peer

QUALITY_SETS = ("Set5", "Set14")


def faster_equal_or_better(rows: list[Row]) -> list[dict]:
    """For each peer row: the fastest project model at the same thread count that is faster (p50) and at
    least as good on Set5 *and* Set14, or ``None`` with the reason. PSNRs are compared as measured (3 decimals).
    """
    result = []
    for peer in (r for r in rows if r.kind == "peer"):
        entry = {
            "peer": peer.name,
            "threads": peer.threads,
            "peer_p50_ms": peer.p50_ms,
            "peer_psnr": peer.psnr,
            "model": None,
            "model_p50_ms": None,
            "model_psnr": None,
            "speedup": None,
            "reason": "",
        }
        result.append(entry)
        ppsnr = peer.psnr or {}
        if not all(s in ppsnr for s in QUALITY_SETS):
            entry["reason"] = f"peer PSNR not measured ({peer.psnr_note or 'no benchmark sets'})"
            continue
        ours = [r for r in rows if r.kind == "project" and r.threads == peer.threads]
        good = [r for r in ours if r.psnr and all(r.psnr.get(s, float("-inf")) >= ppsnr[s] for s in QUALITY_SETS)]
        fast = sorted((r for r in good if r.p50_ms < peer.p50_ms), key=lambda r: r.p50_ms)
        if fast:
            win = fast[0]
            entry.update(
                model=win.name,
                model_p50_ms=win.p50_ms,
                model_psnr=win.psnr,
                speedup=round(peer.p50_ms / win.p50_ms, 2),
                reason="faster, Set5 and Set14 >= peer",
            )
        elif good:
            best = min(good, key=lambda r: r.p50_ms)
            entry["reason"] = f"{best.name} is as good but slower ({best.p50_ms:.1f} ms vs {peer.p50_ms:.1f} ms)"
        elif ours:
            top = {s: max((r.psnr or {}).get(s, float("-inf")) for r in ours) for s in QUALITY_SETS}
            entry["reason"] = (
                "no project model reaches the peer's quality (best Set5 "
                f"{top['Set5']:.2f} vs {ppsnr['Set5']:.2f}, Set14 {top['Set14']:.2f} vs "
                f"{ppsnr['Set14']:.2f})"
            )
        else:
            entry["reason"] = f"no project model timed at {peer.threads} thread(s)"
    return result


def comparison_table(comparison: list[dict]) -> str:
    """One line per (peer, threads): the project model that beats it, or none and why."""
    if not comparison:
        return ""
    width = max(len(c["peer"]) for c in comparison)
    lines = ["faster at equal or better Set5 and Set14, per peer and thread count:"]
    for c in comparison:
        if c["model"]:
            what = (
                f"{c['model']} ({c['model_p50_ms']:.1f} ms vs {c['peer_p50_ms']:.1f} ms, "
                f"x{c['speedup']:.2f}; Set5 {c['model_psnr']['Set5']:.2f} vs {c['peer_psnr']['Set5']:.2f}, "
                f"Set14 {c['model_psnr']['Set14']:.2f} vs {c['peer_psnr']['Set14']:.2f})"
            )
        else:
            what = f"none: {c['reason']}"
        lines.append(f"  {c['peer']:<{width}} {c['threads']} thr -> {what}")
    covered = {c["peer"] for c in comparison} - {c["peer"] for c in comparison if not c["model"]}
    lines.append(f"  {len(covered)} of {len({c['peer'] for c in comparison})} peers beaten at every thread count")
    return "\n".join(lines)


# ---------------------------------------------------------------- output


SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")  # what onnxruntime's kernels choose by


def cpu_flags() -> list[str]:
    """The instruction sets among :data:`SIMD_FLAGS` this CPU reports (``lscpu`` flags), for every figure."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [f for f in SIMD_FLAGS if f in present]
    except OSError:
        pass
    return []


def cpu_model() -> str:
    """``lscpu``'s model name, read from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _fmt(value, spec: str, empty: str = "-") -> str:
    return empty if value is None else format(value, spec)


def table(rows: list[Row], ceiling: dict) -> str:
    """The readable table: one line per (model, threads)."""
    nw = max([30] + [len(r.name) for r in rows])
    head = (
        f"{'model':<{nw}} {'prec':>4} {'thr':>3} {'params':>7} {'GMAC':>6} {'p50 ms':>8} {'p95 ms':>8} {'fps':>7} "
        f"{'GMAC/s':>7} {'%ceil':>6} {'Set5':>6} {'Set14':>6} {'frames':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        p = r.psnr or {}
        lines.append(
            f"{r.name:<{nw}} {r.precision:>4} {r.threads:>3} {_fmt(r.params, 'd'):>7} "
            f"{_fmt(r.macs and r.macs / 1e9, '.2f'):>6} "
            f"{r.p50_ms:>8.2f} {r.p95_ms:>8.2f} {r.fps:>7.1f} {_fmt(r.gmac_per_s, '.1f'):>7} "
            f"{_fmt(r.ceiling_pct, '.1f'):>6} {_fmt(p.get('Set5'), '.2f'):>6} {_fmt(p.get('Set14'), '.2f'):>6} "
            f"{_fmt(r.timed_frames, 'd'):>6}"
        )
    for threads, gflops in ceiling["gflops"].items():
        lines.append(
            f"ceiling at {threads} thread(s): numpy float32 matmul {ceiling['n']}x{ceiling['n']}: "
            f"{gflops:.1f} GFLOP/s = {ceiling['gmacs'][threads]:.1f} GMAC/s (median of {ceiling['repeats']}); "
            f"%ceil = (GMAC / p50) / this; over 100 = faster than numpy's BLAS kernel"
        )
    notes = [f"  {r.name}: {r.psnr_note}" for r in rows if r.psnr_note and r.threads == rows[0].threads]
    if notes:
        lines += ["PSNR not given:"] + notes
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The run as it goes into docs/BENCHMARKS.md: the machine, the table, and who beats whom."""
    machine = result.get("machine", {})
    isa = " ".join(machine.get("isa", [])) or "no AVX2"
    lines = [
        f"`{result.get('command', 'python -m srtc.tools.bench')}`, {result.get('date', '')}: "
        f"{machine.get('cpu', '?')}, {machine.get('cpus', '?')} CPUs, {isa}; onnxruntime "
        f"{machine.get('onnxruntime', '?')}. Full path: 640x360 yuv420p in, 1280x720 out.",
        "",
        "| model | prec | threads | params | GMAC | p50 ms | p95 ms | fps | % of matmul ceiling | Set5 | Set14 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in (Row(**row) for row in result["rows"]):
        p = r.psnr or {}
        lines.append(
            f"| {r.name} | {r.precision} | {r.threads} | {_fmt(r.params, ',d')} "
            f"| {_fmt(r.macs and r.macs / 1e9, '.2f')} | {r.p50_ms:.2f} | {r.p95_ms:.2f} | {r.fps:.1f} "
            f"| {_fmt(r.ceiling_pct, '.0f')} | {_fmt(p.get('Set5'), '.2f')} | {_fmt(p.get('Set14'), '.2f')} |"
        )
    lines += ["", *[f"Skipped: {s['name']} ({s['reason']})." for s in result.get("skipped", [])]]
    if result.get("comparison"):
        lines += ["", "```", comparison_table(result["comparison"]), "```"]
    return "\n".join(lines)


def parse_threads(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``."""
    values = [int(t) for t in text.split(",") if t.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"threads must be positive integers, got {text!r}")
    return values


def run(args: argparse.Namespace) -> dict:
    """The whole benchmark; returns the JSON object (also the source of the table)."""
    frames, source = load_frames(args.frames)
    luma_std = float(np.mean([plane_view(f, 0).std() for f in frames]))
    log.info("%d frames of %s (%dx%d yuv420p, mean luma std %.1f)", len(frames), source, WIDTH, HEIGHT, luma_std)
    ceiling: dict = {"n": 2048, "repeats": 7, "gflops": {}, "gmacs": {}}
    for threads in args.threads:
        gflops = ceiling_gflops(threads, ceiling["n"], ceiling["repeats"])
        ceiling["gflops"][str(threads)] = round(gflops, 1)
        ceiling["gmacs"][str(threads)] = round(gflops / 2, 1)
        log.info("ceiling at %d thread(s): %.1f GFLOP/s float32 matmul", threads, gflops)

    candidates = [bicubic_candidate()] + project_candidates(only_default=args.default_only)
    skipped: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="srtc-bench-") as tmp:
        if args.peers:
            peers = Path(args.peers)
            found, skip = peer_candidates(peers, Path(tmp), tuple(args.peers_only) if args.peers_only else None)
            candidates += found
            skipped += skip
            for s in skipped:
                log.warning("skipped %s: %s", s["name"], s["reason"])
        rows = []
        cv2_threads = cv2.getNumThreads()
        for cand in candidates:
            psnr, psnr_note = evaluate_psnr(cand)
            for threads in args.threads:
                row = measure(
                    cand,
                    frames,
                    args.runs,
                    threads,
                    ceiling["gmacs"][str(threads)],
                    psnr,
                    psnr_note,
                    args.row_seconds or None,
                    args.min_frames,
                )
                rows.append(row)
                log.info(
                    "%-31s %d thr: p50 %.2f ms, p95 %.2f ms (%d frames), %.1f fps, PSNR %s",
                    row.name,
                    threads,
                    row.p50_ms,
                    row.p95_ms,
                    row.timed_frames,
                    row.fps,
                    psnr or psnr_note,
                )
        cv2.setNumThreads(cv2_threads)  # callers (tests, the server) keep their own OpenCV pool size
    return {
        "command": "python -m srtc.tools.bench " + " ".join(args.argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "cpu": cpu_model(),
            "isa": cpu_flags(),
            "cpus": os.cpu_count(),
            "onnxruntime": _ort_version(),
            "opencv": cv2.__version__,
        },
        "frames": {
            "source": source,
            "count": len(frames),
            "width": WIDTH,
            "height": HEIGHT,
            "format": "yuv420p",
            "luma_std": round(luma_std, 1),
        },
        "runs": args.runs,
        "warmup": WARMUP,
        "threads": args.threads,
        "row_seconds": args.row_seconds or None,
        "min_frames": args.min_frames,
        "ceiling": ceiling,
        "psnr_protocol": "srtc.training.evaluate: PIL bicubic LR, Y BT.601 limited range, shave 2, mean per set",
        "rows": [asdict(r) for r in rows],
        "skipped": skipped,
        "comparison": faster_equal_or_better(rows),
    }


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout, last")
    ap.add_argument("--markdown", action="store_true", help="print the table as docs/BENCHMARKS.md has it")
    ap.add_argument("--peers", default=None, help="folder of published peer models (e.g. ../shared/peers)")
    ap.add_argument("--frames", type=int, default=60, help="frames per pass (default %(default)s)")
    ap.add_argument("--runs", type=int, default=3, help="timed passes over the frames (default %(default)s)")
    ap.add_argument(
        "--threads",
        type=parse_threads,
        default=[1, 2],
        help="comma-separated thread counts, each row timed at each (default 1,2)",
    )
    ap.add_argument("--default-only", action="store_true", help="only the manifest's default model")
    ap.add_argument(
        "--peers-only",
        nargs="+",
        default=None,
        metavar="NAME",
        help="with --peers: only these peers (short names or patterns, e.g. ETDS-* FSRCNN-pb)",
    )
    ap.add_argument(
        "--row-seconds",
        type=float,
        default=ROW_SECONDS,
        help="per row and thread count, stop timing after this many seconds once --min-frames "
        "are timed (0: no cap; default %(default)s)",
    )
    ap.add_argument(
        "--min-frames",
        type=int,
        default=MIN_FRAMES,
        help="timed frames every row gets before --row-seconds applies (default %(default)s)",
    )
    ap.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="also draw time against Set5/Set14 PSNR (srtc.tools.frontier) at the largest thread count",
    )
    args = ap.parse_args(argv)
    if importlib.util.find_spec("onnx") is None:
        ap.error("each row's MACs and parameters are counted from its ONNX graph: pip install -e '.[train]'")
    args.argv = argv
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    result = run(args)
    rows = [Row(**r) for r in result["rows"]]
    if args.markdown:
        print(markdown(result))
    else:
        print(table(rows, result["ceiling"]))
        for s in result["skipped"]:
            print(f"skipped {s['name']}: {s['reason']}")
        if result["comparison"]:
            print(comparison_table(result["comparison"]))
    if args.plot:
        from .frontier import plot

        plot(result, Path(args.plot), threads=max(args.threads))
    if args.json:
        print(json.dumps(result))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
