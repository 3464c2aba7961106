"""Freed memory goes back to the system: on glibc the server can trim its heap and cap its arenas."""

from __future__ import annotations

import platform
import subprocess
import sys

import numpy as np
import pytest

from srtc.server.memory import limit_arenas, release_freed_memory

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="malloc_trim and mallopt are glibc's")
def test_glibc_trims_the_heap_after_frame_sized_buffers_are_freed() -> None:
    buffers = [np.ones((720, 1280), np.uint8) for _ in range(50)]  # 46 MB of frame-sized blocks
    del buffers
    assert release_freed_memory() is True
    assert limit_arenas(2) is True


# Where glibc puts frame-sized blocks once one has been freed (which raises its mapping threshold past a
# frame's size): prints how many MiB of live blocks sit in mappings of their own (mallinfo2's hblkhd).
MAPPED_SCRIPT = """
import ctypes, sys
import numpy as np
from srtc.server.memory import map_frame_buffers
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "mapped":
    assert map_frame_buffers()
first = np.ones(900_000, np.float32)
del first
before = libc.mallinfo2().hblkhd
frames = [np.ones((720, 1280), np.uint8) for _ in range(20)]  # 720p luma planes, 0.9 MiB each
print(round((libc.mallinfo2().hblkhd - before) / 2**20, 1))
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_frame_sized_buffers_get_mappings_of_their_own() -> None:
    """glibc maps large blocks until one is freed, then serves them from its arenas, where freed ones stay
    resident; with the server's fixed threshold every frame-sized block is its own mapping, returned to the
    system when it is freed."""
    mapped = {}
    for mode in ("default", "mapped"):
        out = subprocess.run([sys.executable, "-c", MAPPED_SCRIPT, mode], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        mapped[mode] = float(out.stdout.strip())
    assert mapped["mapped"] >= 17, mapped  # the 20 planes
    assert mapped["default"] < 2, mapped


@pytest.mark.skipif(GLIBC, reason="on glibc the calls take effect")
def test_elsewhere_the_calls_do_nothing_and_say_so() -> None:
    assert release_freed_memory() is False
