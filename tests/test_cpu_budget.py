"""The CPU budget's attribution rules: which stage a profiler sample belongs to, by thread and library."""

from __future__ import annotations

from srtc.tools.cpu_budget import STAGES, markdown, stage_of, thread_names

DUMP = """Process 4242: python -m server
Python v3.11.7 (/usr/bin/python3.11)

Thread 4242 (idle): "MainThread"
    select (selectors.py:468)
Thread 4301 (active): "sr-5f2c9a1b0d3e_0"
    run (onnxruntime/capi/onnxruntime_inference_collection.py:273)
Thread 4302 (idle): "Thread-3 (decoder_worker)"
    get (queue.py:171)
Thread 4310 (active+gil): "asyncio_0"
    encode (srtc/server/encoder.py:98)
"""


def test_python_thread_names_are_read_from_a_py_spy_dump():
    assert thread_names(DUMP) == {
        4242: "MainThread",
        4301: "sr-5f2c9a1b0d3e_0",
        4302: "Thread-3 (decoder_worker)",
        4310: "asyncio_0",
    }


def test_samples_are_placed_by_thread_then_library():
    assert stage_of("video-decoder", "libvpx-edb6de90.so.12.0.0") == "decode"  # aiortc names it so
    assert stage_of("Thread-3 (decoder_worker)", "libvpx-edb6de90.so.12.0.0") == "decode"
    assert stage_of(None, "cv2.abi3.so") == "SR"  # OpenCV's pool: the chroma resize
    assert stage_of("sr-5f2c9a1b0d3e_0", "libopencv_imgproc.so") == "SR"
    assert stage_of(None, "libonnxruntime.so.1.32.0") == "SR"  # onnxruntime's own pool
    assert stage_of("asyncio_0", "libvpx-edb6de90.so.12.0.0") == "return encode"
    assert stage_of(None, "libvpx-edb6de90.so.12.0.0") == "return encode"  # libvpx's encoder threads
    assert stage_of("MainThread", "_binding.abi3.so") == "SRTP"
    assert stage_of("MainThread", "libcrypto-3.so") == "SRTP"
    assert stage_of("MainThread", "python3.11") == "event loop, Python"
    assert stage_of(None, "libc.so.6") == "other threads"


def test_the_table_lists_every_stage_with_its_share():
    stages = {stage: {"cores": 0.1, "ms_per_frame": 3.33} for stage in STAGES}
    table = markdown({"sessions": 1, "input_fps": 30.0, "seconds": 30.0, "cores": 0.7, "stages": stages})
    assert all(f"| {stage} | 0.100 | 3.33 | 14% |" in table for stage in STAGES)
