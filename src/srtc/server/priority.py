"""Scheduling priority: on shared cores, the SR stage goes ahead of the return encoders.

On a 2-core server every frame is decoded, upscaled and encoded twice (the SR stream and the raw one),
and the generator's two onnxruntime threads wait at each convolution for the slower of the two; when an
encoder holds one core, the whole convolution waits. The encoders run one frame behind the SR stage
(``srtc/server/sr_track.py`` upscales the next frame while this one is encoded), so they have slack the SR
stage does not. Lowering the encoders' threads a few nice levels lets the generator's threads take a
core as soon as they are runnable, and the encoders fill the time between.

Linux gives every thread its own nice value and a thread inherits its creator's, so lowering the
thread that runs ``encode`` also lowers the worker threads libvpx starts from it. Only lowering is
done, which needs no privilege; elsewhere (no per-thread nice) it is a no-op.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

MAX_NICE = 19


def per_thread_nice() -> bool:
    """Whether ``setpriority`` on a thread id changes that thread alone (Linux)."""
    return sys.platform.startswith("linux") and hasattr(os, "setpriority")


def process_nice() -> int:
    """The nice value the process was started with: its main thread's (on Linux, its id is the pid)."""
    return os.getpriority(os.PRIO_PROCESS, os.getpid())


def thread_nice(thread_id: int | None = None) -> int:
    """The nice value of one thread (default: the calling one)."""
    return os.getpriority(os.PRIO_PROCESS, thread_id or threading.get_native_id())


def lower_this_thread(steps: int) -> int | None:
    """Put the calling thread ``steps`` nice levels below the process (capped at 19); never raises it.

    Idempotent: the target is relative to the process, not to the thread's present value, so a thread
    that runs many encoders is lowered once. Returns the thread's nice value, or None where threads
    have no nice value of their own (the server says so once at start-up)."""
    if steps <= 0 or not per_thread_nice():
        return None
    tid = threading.get_native_id()
    target = min(MAX_NICE, process_nice() + steps)
    current = thread_nice(tid)
    if current >= target:
        return current
    try:
        os.setpriority(os.PRIO_PROCESS, tid, target)
    except OSError as exc:  # a sandbox without setpriority: this thread runs as before
        log.warning("cannot lower an encoder thread's priority: %s", exc)
        return current
    return target
