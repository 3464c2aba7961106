"""Give freed memory back to the system when a session ends.

A session allocates many short-lived buffers of frame size (decoded planes, upscaled frames, encoder
input) from several threads. glibc keeps what they free in its per-thread arenas instead of returning it,
so the server's resident memory climbs with every session and stays up between them: about 65 MiB per
cycle of four 4-second sessions, measured (python -m server.probe --clients 4, six cycles). ``malloc_trim``
after each session returns the free pages. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from functools import cache

log = logging.getLogger(__name__)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the system; True if the C library could (glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_arenas(count: int = 2) -> bool:
    """Let glibc keep at most ``count`` malloc arenas (one per thread by default, up to 8 per core): fewer
    arenas hold less freed memory between sessions. True if the C library took the setting."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(M_ARENA_MAX, count))
    except (OSError, AttributeError):
        return False
