"""The glibc calls that give a busy minute's memory back to the system."""

import asyncio
import platform
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpu_server import client
from gpu_server.memory import limit_arenas, release_free_memory

from .conftest import token


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


def trims(metrics_text: str) -> float:
    return next(
        s.value for f in text_string_to_metric_families(metrics_text) for s in f.samples
        if s.name == "harper_memory_trims_total"
    )


async def test_free_memory_goes_back_every_interval_while_streams_stay_open(start_server):
    """One session can keep its streams open for half an hour, so the server never sees its last stream close
    (where it trims): it trims every memory_trim_interval_s while streams are open, and not while idle."""
    with start_server(memory_trim_interval_s=0.2) as pod:
        async with httpx.AsyncClient(base_url=pod.http) as http:
            async with client.SttConnection(pod.ws("/ws/stt"), token()) as stt:
                await stt.send_start()
                for _ in range(200):
                    if trims((await http.get("/metrics")).text) >= 2:
                        break
                    await asyncio.sleep(0.05)
                await stt.send_stop()
                await stt.receive_all()
            assert trims((await http.get("/metrics")).text) >= 2
            for _ in range(100):  # closing is asynchronous
                if (await http.get("/health")).json()["streams"] == {"stt": 0, "tts": 0}:
                    break
                await asyncio.sleep(0.05)
            idle = trims((await http.get("/metrics")).text)
            await asyncio.sleep(1.0)  # five intervals
            assert trims((await http.get("/metrics")).text) == idle
