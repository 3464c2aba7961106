"""Freed memory goes back to the system: on glibc the server can trim its heap and cap its arenas."""

from __future__ import annotations

import platform

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


@pytest.mark.skipif(GLIBC, reason="on glibc the calls take effect")
def test_elsewhere_the_calls_do_nothing_and_say_so() -> None:
    assert release_freed_memory() is False
