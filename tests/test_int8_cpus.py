"""int8 builds are right on every x86-64 CPU, and the server refuses one that is not right on its own.

onnxruntime picks its int8 kernels by instruction set. On CPUs without VNNI (AVX2 only, or AVX-512 without
VNNI) the uint8 x int8 kernels sum pairs of products in int16 with saturation, so an int8 build that is
fine on a VNNI CPU can be garbage there. These tests check each shipped int8 model three ways:

- statically, on any CPU: no int8 conv weight lies beyond the range whose pair sums fit in int16;
- on this CPU (its flags are in the test ids): above bicubic and close to its fp32 reference;
- on an AVX2 CPU without VNNI, emulated by ``qemu-x86_64 -cpu Haswell`` (Debian's qemu-user; the suite's
  set-up installs it): the same output as here, and a build exported the old way is refused at load.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from srtc.server.engine import OnnxUpscaler
from srtc.server.selfcheck import MAX_LOSS_DB, check, check_pairs
from srtc.zoo import MANIFEST_PATH, load_manifest

from .conftest import REPO

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install -e '.[train]')")
from onnx import numpy_helper  # noqa: E402

from srtc.training.quantize import SAFE_WEIGHT_LEVEL, conv_weights, saturating_convs  # noqa: E402

QEMU = shutil.which("qemu-x86_64")
EMULATED_CPU = "Haswell"  # AVX2 and FMA, no AVX-512, no VNNI


def cpu_flags() -> set[str]:
    """This CPU's feature flags, as the kernel lists them."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def isa_label(flags: set[str]) -> str:
    """``avx2``, ``avx512`` and/or ``vnni`` (or ``no-vnni``): what decides onnxruntime's int8 kernels."""
    parts = [p for p in ("avx2", "avx512") if p in flags or (p == "avx512" and "avx512bw" in flags)]
    parts.append("vnni" if {"avx512_vnni", "avx_vnni"} & flags else "no-vnni")
    return "+".join(parts)


ISA = isa_label(cpu_flags())
MODELS = load_manifest()["models"]
INT8 = sorted(name for name, entry in MODELS.items() if entry.get("precision") == "int8")


def model_path(name: str) -> Path:
    return MANIFEST_PATH.parent / MODELS[name]["file"]


@pytest.mark.parametrize("name", INT8)
def test_no_int8_weight_can_overflow_the_int16_sums_of_cpus_without_vnni(name):
    model = onnx.load(str(model_path(name)))
    assert conv_weights(model), f"{name} has no quantised conv"
    assert saturating_convs(model) == [], f"{name}: int8 weights beyond +-{SAFE_WEIGHT_LEVEL}"


@pytest.mark.parametrize("name", INT8)
def test_int8_model_has_a_float_reference_in_the_manifest(name):
    reference = MODELS[name].get("reference")
    assert reference in MODELS and MODELS[reference]["precision"] == "fp32", (name, reference)


@pytest.fixture(scope="module")
def pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    return check_pairs()


@pytest.mark.parametrize("name", INT8, ids=[f"{name}-on-{ISA}" for name in INT8])
def test_int8_model_beats_bicubic_and_tracks_its_fp32_model_on_this_cpu(name, pairs):
    reference = MODELS[name]["reference"]
    result = check(
        name,
        OnnxUpscaler(model_path(name), threads=1).upscale_luma,
        (reference, OnnxUpscaler(model_path(reference), threads=1).upscale_luma),
        pairs,
    )
    assert result.passed, f"on this CPU ({ISA}): {result.reason}"
    assert result.reference_db is not None and result.psnr_db > result.reference_db - MAX_LOSS_DB


def narrowed_first_conv(src: Path, out: Path) -> Path:
    """The model as the old export wrote it: the first conv's 8-bit weights stored as int8 (zero point 0),
    the same values, which the int16 kernels of CPUs without VNNI overflow on bright pixels."""
    model = onnx.load(str(src))
    _, weight, zero = conv_weights(model)[0]
    assert weight.data_type == onnx.TensorProto.UINT8 and zero is not None
    weight.CopyFrom(
        numpy_helper.from_array((numpy_helper.to_array(weight).astype(np.int16) - 128).astype(np.int8), weight.name)
    )
    zero.CopyFrom(
        numpy_helper.from_array((numpy_helper.to_array(zero).astype(np.int16) - 128).astype(np.int8), zero.name)
    )
    onnx.save(model, str(out))
    return out


def run_emulated(code: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -c code args`` on an emulated AVX2 CPU without VNNI."""
    if QEMU is None:
        pytest.skip("qemu-x86_64 is not installed (Debian's qemu-user): cannot emulate an AVX2 CPU without VNNI")
    return subprocess.run(
        [QEMU, "-cpu", EMULATED_CPU, sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


UPSCALE = """
import sys
import numpy as np
from srtc.server.engine import OnnxUpscaler
from srtc.server.selfcheck import check_pairs
pairs = check_pairs()
for i, path in enumerate(sys.argv[2:]):
    up = OnnxUpscaler(path, threads=1)
    np.save(f"{sys.argv[1]}/{i}.npy", np.stack([up.upscale_luma(lr) for lr, _ in pairs]))
"""


def test_every_int8_model_gives_the_same_picture_on_an_avx2_cpu_without_vnni(tmp_path, pairs):
    paths = [str(model_path(name)) for name in INT8]
    done = run_emulated(UPSCALE, str(tmp_path), *paths)
    assert done.returncode == 0, done.stderr[-2000:]
    for i, name in enumerate(INT8):
        here = np.stack([OnnxUpscaler(Path(paths[i]), threads=1).upscale_luma(lr) for lr, _ in pairs])
        there = np.load(tmp_path / f"{i}.npy")
        diff = np.abs(here.astype(np.int16) - there.astype(np.int16))
        # Float parts (the residual, a float tail) may round differently with AVX2's FMA: one level, rarely.
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (name, int(diff.max()), float((diff > 0).mean()))


OPEN = """
import json, sys
from pathlib import Path
from srtc.server.registry import open_fast_model, open_model

manifest = Path(sys.argv[1])
upscaler, info = open_model(sys.argv[2], 1, manifest)
fast, fast_info = open_fast_model(sys.argv[2], info, 1, manifest)
print(json.dumps({"served": info.name, "refused": [r["model"] for r in info.to_json()["refused"]],
                  "fast": fast is not None, "fast_check": fast_info.check.passed}))
"""


def test_an_int8_build_exported_the_old_way_is_refused_on_an_avx2_cpu_without_vnni(tmp_path):
    """The old export's head overflows there: the server serves the fp32 reference instead, and the governor
    gets no fast model (it goes straight to bicubic) rather than one worse than bicubic."""
    name = MODELS[load_manifest()["default"]]["fallback"]
    reference = MODELS[name]["reference"]
    narrowed_first_conv(model_path(name), tmp_path / "old_int8.onnx")
    shutil.copy(model_path(reference), tmp_path / "ref.onnx")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "default": reference,
                "models": {
                    reference: {"file": "ref.onnx", "precision": "fp32", "kind": "perceptual", "params": 1},
                    "old_int8": {
                        "file": "old_int8.onnx",
                        "precision": "int8",
                        "kind": "perceptual",
                        "params": 1,
                        "reference": reference,
                    },
                },
            }
        ),
        encoding="utf-8",
    )
    done = run_emulated(OPEN, str(manifest), "old_int8")
    assert done.returncode == 0, done.stderr[-2000:]
    verdict = json.loads(done.stdout.strip().splitlines()[-1])
    assert verdict == {"served": reference, "refused": ["old_int8"], "fast": False, "fast_check": False}, verdict
    assert "refusing model old_int8 on this CPU" in done.stderr, done.stderr[-2000:]
