"""The glibc calls that give a busy minute's memory back to the system."""

import platform
from pathlib import Path

import numpy as np
import pytest

from gpu_server.memory import limit_arenas, release_free_memory


def rss_mb() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim and mallopt are glibc's")
def test_freed_heap_pages_go_back_to_the_system():
    assert limit_arenas(64)  # generous: this test process keeps its own behaviour
    blocks = [np.ones(1000, np.float64) for _ in range(20000)]  # ~160 MB in 8 kB heap blocks
    kept = blocks[::10]  # a few survivors pin the heap: free() alone cannot shrink it
    del blocks
    before = rss_mb()
    assert release_free_memory()
    assert before - rss_mb() > 50
    assert len(kept) == 2000
