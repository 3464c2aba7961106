"""Give freed memory back to the system when a session ends.

A session allocates many short-lived buffers of frame size (decoded planes, upscaled frames, encoder
input) from several threads. glibc keeps what they free in its per-thread arenas instead of returning it,
so the server's resident memory climbs with every session and stays up between them: about 65 MiB per
cycle of four 4-second sessions, measured (python -m server.probe --clients 4, six cycles). Fewer arenas
(:func:`limit_arenas`, at start), frame-sized buffers mapped on their own (:func:`map_frame_buffers`, at
start) and ``malloc_trim`` after each session (:func:`release_freed_memory`) return it. Elsewhere than
glibc they do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any

M_ARENA_MAX = -8  # glibc's mallopt parameters
M_MMAP_THRESHOLD = -3
FRAME_BUFFER_BYTES = 512 << 10  # a 640x360 float plane and a 1280x720 luma plane are 0.9 MiB each, a 720p frame 1.3


@cache
def _glibc_call(name: str) -> Any:
    """A function of the C library by name, or None where it has none (musl, macOS, Windows)."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the system; True if the C library could (glibc)."""
    trim = _glibc_call("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


def limit_arenas(count: int = 2) -> bool:
    """Let glibc keep at most ``count`` malloc arenas (one per thread by default, up to 8 per core): fewer
    arenas hold less freed memory between sessions. True if the C library took the setting."""
    mallopt = _glibc_call("mallopt")
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, count))


def map_frame_buffers(threshold: int = FRAME_BUFFER_BYTES) -> bool:
    """Serve every allocation of ``threshold`` bytes or more with its own mapping, unmapped when freed.

    glibc maps large blocks at first, but each time one is freed it raises its threshold to that block's
    size, so from the first frames on the frame-sized buffers come from the arenas, where freed ones stay
    resident and fragment the heap over a long call (RSS rising in steps of tens of MiB). A fixed threshold
    turns that off. True if the C library took the setting."""
    mallopt = _glibc_call("mallopt")
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, threshold))


def tune_allocator() -> None:
    """At start: the fewer arenas and the frame-sized mappings, whichever the C library takes."""
    limit_arenas()
    map_frame_buffers()
