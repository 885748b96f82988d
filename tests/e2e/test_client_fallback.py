"""The companion library's fallback chain against the real local stack: a dead pod gets the session a new
lease; a dead controller gets it the local CPU gpu_server, and says so."""

import signal
from urllib.parse import urlparse

import psutil
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from websockets.exceptions import WebSocketException

from gpu_server.client import speak
from reconciler.client import ControllerUnavailable, VoicePods

from .conftest import COMPANION

pytestmark = pytest.mark.timeout(600)


def process_listening_on(port: int) -> psutil.Process:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return psutil.Process(conn.pid)
    raise AssertionError(f"nothing listens on {port}")


async def test_dead_pod_then_dead_controller(local_stack):
    stack = await local_stack(HARPER_UNHEALTHY_TIMEOUT_S="2", HARPER_IDLE_TTL_S="60")
    await stack.wait_standby()
    registry = CollectorRegistry()
    pods = VoicePods(stack.url, COMPANION, heartbeat_s=0.5, fallback_after_s=60, registry=registry)
    try:
        async with pods.session("user-1") as voice:
            assert voice.path == "standby_resume" and not voice.fallback
            first_pod, first_tts = voice.lease.pod_id, voice.endpoints["tts"]
            spoken = await speak(first_tts, voice.token, "Hello there.")
            assert spoken.frames

            # the pod's gpu_server dies mid-session
            gpu_server = process_listening_on(urlparse(first_tts).port)
            assert "gpu_server" in " ".join(gpu_server.cmdline())
            gpu_server.send_signal(signal.SIGKILL)
            with pytest.raises((OSError, WebSocketException)):
                await speak(first_tts, voice.token, "Are you there?")
            await voice.recover()
            assert voice.lease.pod_id != first_pod and not voice.fallback
            assert (await speak(voice.endpoints["tts"], voice.token, "Back again.")).frames

            # the controller (and with it the emulator and its pods) goes away
            await stack.stop()
            with pytest.raises((OSError, WebSocketException)):
                await speak(voice.endpoints["tts"], voice.token, "Still there?")
            await voice.recover()
            assert voice.fallback and voice.path == "local_fallback"
            assert (await speak(voice.endpoints["tts"], voice.token, "Running locally now.")).frames
        metrics = generate_latest(registry).decode()
        assert 'harper_client_fallbacks_total{reason="ControllerUnavailable"} 1.0' in metrics
    finally:
        await pods.aclose()


async def test_no_fallback_means_a_clear_error(tmp_path):
    pods = VoicePods("http://127.0.0.1:9", COMPANION, local_fallback=False)
    try:
        with pytest.raises(ControllerUnavailable):
            async with pods.session("nobody"):
                pass
    finally:
        await pods.aclose()
