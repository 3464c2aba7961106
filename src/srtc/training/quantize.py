"""int8 static quantisation (QDQ) of an x2 luma generator, calibrated on real decoded frames.

``python -m srtc.training.quantize --model NAME_OR_PATH --out src/srtc/zoo/NAME_int8.onnx [--calib-frames N]
[--per-channel] [--method minmax|entropy|percentile] [--activations uint8|int8] [--symmetric]
[--exclude-first-last] [--check --images DIRS...] [--register]``

``--sweep --images DIRS...`` quantises every variant of ``VARIANTS``, measures each against the fp32
model (PSNR-Y on each folder with ``srtc.training.evaluate``; median ms at 1 and 2 threads with
``srtc.training.speed``, interleaved in one run so machine load hits both alike), logs the table, and writes
to ``--out`` the variant that qualifies with the smallest loss (``--register`` then lists it).

Why a gate: a small SR net has little redundancy; int8 rounding of its activations, and above all of
the LR input that the nearest-neighbour residual passes straight to the output, can cost more than
the net gains over bicubic. A variant is kept only if it loses at most ``MAX_LOSS_DB`` on every
folder AND runs faster than fp32 at 2 threads (the server's setting); otherwise it is not written
to the manifest, whatever was asked.

Calibration data is what the server sees: luma of 1280x720 clip frames decoded with PyAV, 2x2 area
downscaled to 640x360 (the sender's scaler), skipping near-flat fade frames, plus a few training
images cropped to 360x640 for content the clips lack.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

from srtc.shared import SHARED
from srtc.zoo import MANIFEST_PATH, load_manifest, resolve

from . import imaging
from .errors import ConfigError
from .graph import outer_scope_producers

log = logging.getLogger(__name__)

VIDEO_DIR = SHARED / "data" / "video"
TRAIN_DIR = SHARED / "data" / "train"
HEIGHT, WIDTH = 360, 640
MIN_LUMA_STD = 20.0  # flatter frames are fades, useless for ranges
MAX_LOSS_DB = 0.1
METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
ACTIVATIONS = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
EXCLUDABLE = ("first", "last", "residual")


@dataclass(frozen=True)
class Variant:
    """One quantisation recipe; ``name`` is how tables call it."""

    name: str
    per_channel: bool = False
    method: str = "minmax"
    activations: str = "uint8"
    symmetric: bool = False
    exclude: tuple[str, ...] = ()
    percentile: float = 99.99

    def args(self) -> list[str]:
        """The command-line flags that rebuild this variant."""
        out = ["--method", self.method, "--activations", self.activations]
        if self.per_channel:
            out.append("--per-channel")
        if self.symmetric:
            out.append("--symmetric")
        if self.method == "percentile":
            out += ["--percentile", f"{self.percentile:g}"]
        if self.exclude:
            out += ["--exclude", *self.exclude]
        return out


VARIANTS = (
    Variant("u8 per-tensor minmax"),
    Variant("u8 per-channel minmax", per_channel=True),
    Variant("s8 sym per-channel minmax", per_channel=True, activations="int8", symmetric=True),
    Variant("u8 per-channel entropy", per_channel=True, method="entropy"),
    Variant("u8 per-channel pct99.99", per_channel=True, method="percentile", percentile=99.99),
    Variant(
        "u8 per-channel pct99.999, residual fp32",
        per_channel=True,
        method="percentile",
        percentile=99.999,
        exclude=("residual",),
    ),
    Variant("u8 per-channel minmax, first+last+residual fp32", per_channel=True, exclude=EXCLUDABLE),
    Variant(
        "u8 per-channel pct99.999, first+last+residual fp32",
        per_channel=True,
        method="percentile",
        percentile=99.999,
        exclude=EXCLUDABLE,
    ),
    Variant(
        "s8 sym per-channel pct99.999, first+last+residual fp32",
        per_channel=True,
        method="percentile",
        percentile=99.999,
        activations="int8",
        symmetric=True,
        exclude=EXCLUDABLE,
    ),
)


# ---------------------------------------------------------------- calibration data


def video_lumas(count: int, folder: Path = VIDEO_DIR, stride: int = 7) -> list[np.ndarray]:
    """Up to ``count`` 640x360 luma planes from the clips, every ``stride``-th content frame, clips in turn."""
    from .degrade import iter_video_frames

    clips = sorted(p for p in folder.glob("*") if p.suffix in (".webm", ".mp4"))
    if not clips:
        raise FileNotFoundError(f"no .webm/.mp4 clips in {folder}")
    per_clip = -(-count // len(clips))
    out: list[np.ndarray] = []
    for clip in clips:
        taken, seen = 0, 0
        for _, frame in iter_video_frames(clip):
            if taken >= per_clip or len(out) >= count:
                break
            if frame.to_ndarray(format="yuv420p")[: frame.height].std() < MIN_LUMA_STD:
                continue  # fade from black
            seen += 1
            if (seen - 1) % stride:
                continue
            img = frame.to_image()
            if img.size != (2 * WIDTH, 2 * HEIGHT):
                img = img.resize((2 * WIDTH, 2 * HEIGHT), Image.Resampling.BICUBIC)
            out.append(imaging.luma_u8(img.reduce(2)))
            taken += 1
    return out


def image_lumas(count: int, folder: Path = TRAIN_DIR) -> list[np.ndarray]:
    """``count`` training images (spread over the sorted list), centre-cropped or padded to 360x640 luma."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".bmp"))
    out = []
    for path in paths[:: max(1, len(paths) // max(count, 1))][:count]:
        y = imaging.luma_u8(imaging.load_image(path))
        y = np.pad(y, ((0, max(0, HEIGHT - y.shape[0])), (0, max(0, WIDTH - y.shape[1]))), mode="reflect")
        y0, x0 = (y.shape[0] - HEIGHT) // 2, (y.shape[1] - WIDTH) // 2
        out.append(np.ascontiguousarray(y[y0 : y0 + HEIGHT, x0 : x0 + WIDTH]))
    return out


def calibration_lumas(
    frames: int, images: int, video_dir: Path = VIDEO_DIR, train_dir: Path = TRAIN_DIR
) -> list[np.ndarray]:
    """Video frames first (the product's content), then training stills."""
    lumas = video_lumas(frames, Path(video_dir)) + (image_lumas(images, Path(train_dir)) if images else [])
    log.info("calibration: %d luma planes of %dx%d", len(lumas), WIDTH, HEIGHT)
    return lumas


class LumaReader(CalibrationDataReader):
    """Feeds uint8 luma planes as the contract's input (luma/255); rewindable for several variants."""

    def __init__(self, lumas: list[np.ndarray], input_name: str = "lr") -> None:
        self.lumas, self.input_name, self.index = lumas, input_name, 0

    def get_next(self) -> dict | None:
        if self.index >= len(self.lumas):
            return None
        y = self.lumas[self.index]
        self.index += 1
        return {self.input_name: (y.astype(np.float32) / 255.0)[None, None]}

    def rewind(self) -> None:
        self.index = 0


# ---------------------------------------------------------------- quantisation


def excluded_nodes(model: onnx.ModelProto, parts: tuple[str, ...]) -> list[str]:
    """Names of the nodes to keep in float: first conv, last conv, and/or the residual tail.

    The residual tail is everything after the last conv (its Add, the pixel shuffle, scaling and
    crop) plus the nodes that feed that Add from the input side (the nearest-neighbour gather), so
    the LR input reaches the output without int8 rounding. Found from the graph, not from names,
    so it holds for any QuarterResSR export.
    """
    nodes = list(model.graph.node)
    convs = [n for n in nodes if n.op_type == "Conv"]
    if not convs:
        raise ValueError("model has no Conv node")
    names: set[str] = set()
    if "first" in parts:
        names.add(convs[0].name)
    if "last" in parts:
        names.add(convs[-1].name)
    if "residual" in parts:
        tail = nodes[nodes.index(convs[-1]) + 1 :]
        names.update(n.name for n in tail if n.op_type != "Constant")
        producers = {o: n for n in nodes for o in n.output}
        for add in (n for n in tail if n.op_type == "Add"):
            for inp in add.input:  # the branch that is not the conv: walk up to a Conv-free source
                node = producers.get(inp)
                while node is not None and node.op_type not in ("Conv", "LeakyRelu", "Constant"):
                    names.add(node.name)
                    data_inputs = [producers.get(i) for i in node.input[:1]]
                    node = data_inputs[0] if data_inputs else None
    return sorted(names)


def quantize(model_path: Path, out: Path, lumas: list[np.ndarray], variant: Variant) -> Path:
    """Write the QDQ int8 model of ``variant`` to ``out`` (pre-processed with ``quant_pre_process``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(model_path), str(pre), skip_symbolic_shape=False)
        model = onnx.load(str(pre))
        extra: dict[str, bool | float] = {
            "ActivationSymmetric": variant.symmetric,
            "WeightSymmetric": True,
            "CalibTensorRangeSymmetric": variant.symmetric,
        }
        if variant.method == "percentile":
            extra["CalibPercentile"] = variant.percentile
        quantize_static(
            str(pre),
            str(out),
            LumaReader(lumas, model.graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            per_channel=variant.per_channel,
            activation_type=ACTIVATIONS[variant.activations],
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded_nodes(model, variant.exclude) + outer_scope_producers(model),
            calibrate_method=METHODS[variant.method],
            reduce_range=True,  # 7-bit weights: see SAFE_WEIGHT_LEVEL
            extra_options=extra,
            calibration_cache_path=None,
        )
    onnx.checker.check_model(onnx.load(str(out)))
    return out


# onnxruntime's x86 kernels for uint8 activations and int8 weights add pairs of products in int16 with
# saturation on CPUs without VNNI (VPMADDUBSW): |w| <= 64 keeps 2 * 255 * |w| within int16 on every CPU.
SAFE_WEIGHT_LEVEL = 64


def conv_weights(model: onnx.ModelProto) -> list[tuple[str, onnx.TensorProto, onnx.TensorProto | None]]:
    """(conv name, quantised weight initializer, its zero point) of each int8 conv, in graph order."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    out = []
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        dq = producers.get(conv.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            zero = inits.get(dq.input[2]) if len(dq.input) > 2 else None
            out.append((conv.name, inits[dq.input[0]], zero))
    return out


def saturating_convs(model: onnx.ModelProto) -> list[str]:
    """The convs whose int8 weights go beyond ``SAFE_WEIGHT_LEVEL``: wrong on x86 CPUs without VNNI.

    uint8 weights (zero point 128) are safe: onnxruntime sums uint8 x uint8 in int32 on every CPU.
    """
    from onnx import numpy_helper

    return [
        name
        for name, weight, _ in conv_weights(model)
        if weight.data_type == onnx.TensorProto.INT8
        and int(np.abs(numpy_helper.to_array(weight).astype(np.int16)).max()) > SAFE_WEIGHT_LEVEL
    ]


def widen_first_conv(path: Path) -> None:
    """Store the first conv's symmetric int8 weights as uint8 with zero point 128: the same values,
    run by kernels that sum in int32, so its 8-bit levels cannot overflow on a CPU without VNNI."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    _, weight, zero = conv_weights(model)[0]
    if weight.data_type != onnx.TensorProto.INT8 or zero is None:
        raise ValueError(f"{path}: the first conv has no symmetric int8 weights to widen")
    zeros = numpy_helper.to_array(zero).astype(np.int16)
    if zeros.any():
        raise ValueError(f"{path}: the first conv's int8 weights are not symmetric (zero point {zeros.max()})")
    widened = numpy_helper.to_array(weight).astype(np.int16) + 128
    weight.CopyFrom(numpy_helper.from_array(widened.astype(np.uint8), weight.name))
    zero.CopyFrom(numpy_helper.from_array((zeros + 128).astype(np.uint8), zero.name))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def qdq_counts(path: Path) -> dict[str, int]:
    """How many QuantizeLinear / DequantizeLinear nodes a model has (0 for a float model)."""
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    return {op: ops.count(op) for op in ("QuantizeLinear", "DequantizeLinear")}


# ---------------------------------------------------------------- measurement


@dataclass
class Result:
    """PSNR-Y per folder and median ms per thread count of one model."""

    name: str
    psnr: dict[str, float] = field(default_factory=dict)
    ms: dict[int, float] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)


def measure_psnr(path: Path, folders: list[str]) -> dict[str, float]:
    """Mean PSNR-Y on each folder under ``srtc.training.evaluate``'s protocol."""
    from .evaluate import evaluate, load_samples, onnx_upscaler

    up = onnx_upscaler(path, threads=2)
    return {Path(f).name: evaluate(load_samples(f), up)["model"] for f in folders}


def measure_speed(
    paths: dict[str, Path], threads: tuple[int, ...] = (1, 2), runs: int = 30, repeats: int = 3
) -> dict[str, dict[int, float]]:
    """Median ms per 640x360 frame, models interleaved, lowest of ``repeats`` medians (least disturbed)."""
    from .speed import time_model

    best: dict[str, dict[int, float]] = {name: {} for name in paths}
    for _ in range(repeats):
        for t in threads:
            for name, path in paths.items():
                med = statistics.median(time_model(path, HEIGHT, WIDTH, t, runs))
                best[name][t] = min(best[name].get(t, float("inf")), med)
    return best


def qualifies(r: Result, ref: Result, max_loss: float = MAX_LOSS_DB) -> tuple[bool, str]:
    """The gate: no folder loses more than ``max_loss`` dB, and faster than fp32 at 2 threads."""
    losses = {k: ref.psnr[k] - r.psnr[k] for k in ref.psnr}
    worst = max(losses.values())
    if worst > max_loss:
        return False, f"loses {worst:.3f} dB (> {max_loss})"
    threads = max(ref.ms)
    if r.ms[threads] >= ref.ms[threads]:
        return False, f"not faster: {r.ms[threads]:.2f} ms vs fp32 {ref.ms[threads]:.2f} ms at {threads} threads"
    return True, "qualifies"


def table(results: list[Result], ref: Result) -> str:
    """Markdown table: dB vs fp32 per folder and ms per thread count."""
    folders, threads = list(ref.psnr), sorted(ref.ms)
    head = ["variant"] + [f"{f} dB (vs fp32)" for f in folders] + [f"ms {t} thr" for t in threads] + ["verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in [ref, *results]:
        cells = [r.name]
        for f in folders:
            d = r.psnr[f] - ref.psnr[f]
            cells.append(f"{r.psnr[f]:.3f}" + ("" if r is ref else f" ({d:+.3f})"))
        cells += [f"{r.ms[t]:.2f}" for t in threads]
        cells.append("reference" if r is ref else qualifies(r, ref)[1])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- manifest


def register(
    name: str, out: Path, base: str, variant: Variant, command: str, manifest_path: Path = MANIFEST_PATH
) -> None:
    """List the int8 model in the manifest next to its fp32 source; the default is left as it is."""
    from .export import update_manifest

    manifest = load_manifest(manifest_path)
    src = manifest["models"].get(base, {})
    try:
        file = out.resolve().relative_to(manifest_path.parent)
    except ValueError as err:
        raise ConfigError(f"--out must lie inside {manifest_path.parent} to be registered") from err
    params = src.get("params") or sum(
        int(np.prod(t.dims)) for t in onnx.load(str(out)).graph.initializer if t.data_type == onnx.TensorProto.INT8
    )
    entry = {
        "file": file.as_posix(),
        "kind": src.get("kind", "fidelity"),
        "precision": "int8",
        "reference": base,
        "params": params,
        "scale": src.get("scale", 2),
        "description": f"int8 static QDQ of {base} ({variant.name}; calibrated on decoded 640x360 video "
        f"luma + training stills). " + src.get("description", ""),
        "command": command,
    }
    update_manifest(name, entry, make_default=False, path=manifest_path)
    log.info("manifest %s: %s (int8)", manifest_path, name)


# ---------------------------------------------------------------- command line


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="manifest name or fp32 .onnx path (default: manifest default)")
    ap.add_argument("--out", default=None, help="int8 .onnx (default src/srtc/zoo/NAME_int8.onnx)")
    ap.add_argument("--calib-frames", type=int, default=32, help="decoded video frames (default %(default)s)")
    ap.add_argument("--calib-images", type=int, default=8, help="training stills (default %(default)s)")
    ap.add_argument("--videos", default=str(VIDEO_DIR), help="folder of .webm/.mp4 clips (default %(default)s)")
    ap.add_argument("--train", default=str(TRAIN_DIR), help="folder of training stills (default %(default)s)")
    ap.add_argument("--per-channel", action="store_true", help="one weight scale per output channel")
    ap.add_argument("--method", choices=sorted(METHODS), default="minmax", help="activation range calibration")
    ap.add_argument("--percentile", type=float, default=99.99, help="kept share of values for --method percentile")
    ap.add_argument("--activations", choices=sorted(ACTIVATIONS), default="uint8")
    ap.add_argument("--symmetric", action="store_true", help="symmetric activation ranges (zero point 0)")
    ap.add_argument("--exclude", nargs="*", choices=EXCLUDABLE, default=[], help="parts kept in float")
    ap.add_argument("--exclude-first-last", action="store_true", help="= --exclude first last residual")
    ap.add_argument("--check", action="store_true", help="measure against fp32 and apply the gate")
    ap.add_argument("--sweep", action="store_true", help="try every variant; keep the best that qualifies")
    ap.add_argument("--images", nargs="*", default=[], help="benchmark folders for --check/--sweep")
    ap.add_argument("--register", action="store_true", help="list the result in the manifest if it qualifies")
    ap.add_argument("--runs", type=int, default=30, help="timed runs per speed measurement")
    ap.add_argument("--repeats", type=int, default=3, help="speed measurements per model (lowest median kept)")
    ap.add_argument("--json", default=None, help="write the results here as JSON")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)
    model_path = resolve(args.model)
    manifest_models = load_manifest().get("models", {}) if MANIFEST_PATH.is_file() else {}
    base = (
        args.model
        if args.model in manifest_models
        else (load_manifest()["default"] if args.model is None else model_path.stem)
    )
    name = f"{base}_int8"
    out = Path(args.out) if args.out else MANIFEST_PATH.parent / f"{name}.onnx"
    if (args.check or args.sweep or args.register) and not args.images:
        raise SystemExit("--check, --sweep and --register need --images (the folders the gate measures)")

    variants: tuple[Variant, ...]
    if args.sweep:
        variants = VARIANTS
    else:
        exclude = tuple(EXCLUDABLE if args.exclude_first_last else args.exclude)
        variants = (
            Variant(
                "chosen", args.per_channel, args.method, args.activations, args.symmetric, exclude, args.percentile
            ),
        )
    lumas = calibration_lumas(args.calib_frames, args.calib_images, args.videos, args.train)

    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for i, v in enumerate(variants):
            path = out if len(variants) == 1 else Path(tmp) / f"v{i}.onnx"
            log.info("quantising: %s", v.name)
            paths[v.name] = quantize(model_path, path, lumas, v)
            log.info("  %s: %s", path, qdq_counts(path))
        if not (args.check or args.sweep or args.register):
            log.info("wrote %s (not measured; --check to measure)", out)
            return []
        ref = Result("fp32", measure_psnr(model_path, args.images))
        results = [Result(v.name, measure_psnr(paths[v.name], args.images), args=v.args()) for v in variants]
        for r in results:
            log.info("  %s: %s", r.name, {k: round(x, 3) for k, x in r.psnr.items()})
        speed = measure_speed({"fp32": model_path, **paths}, runs=args.runs, repeats=args.repeats)
        ref.ms = speed["fp32"]
        for r in results:
            r.ms = speed[r.name]
        log.info("%s vs fp32 %s:\n%s", model_path, base, table(results, ref))
        if args.json:
            Path(args.json).write_text(
                json.dumps({"fp32": asdict(ref), "variants": [asdict(r) for r in results]}, indent=2) + "\n",
                encoding="utf-8",
            )

        passing = [r for r in results if qualifies(r, ref)[0]]
        if not passing:
            log.warning(
                "no variant qualifies (<= %.2f dB loss on every folder and faster than fp32): "
                "nothing kept, nothing registered",
                MAX_LOSS_DB,
            )
            if out.exists() and len(variants) == 1:
                out.unlink()
            return [ref, *results]
        best = min(passing, key=lambda r: max(ref.psnr[k] - r.psnr[k] for k in ref.psnr))
        if len(variants) > 1:
            out.write_bytes(paths[best.name].read_bytes())
        log.info("kept %s -> %s", best.name, out)
        if args.register:
            variant = next(v for v in variants if v.name == best.name)
            cmd_args = [
                "--model",
                str(args.model or base),
                "--out",
                str(out),
                "--calib-frames",
                str(args.calib_frames),
                "--calib-images",
                str(args.calib_images),
                *variant.args(),
                "--check",
                "--images",
                *args.images,
                "--register",
            ]
            try:
                register(name, out, base, variant, "python -m srtc.training.quantize " + shlex.join(cmd_args))
            except ConfigError as exc:
                raise SystemExit(f"error: {exc}") from None
    return [ref, *results]


if __name__ == "__main__":
    main(sys.argv[1:])
