"""Who gets in: lease tokens (4401), the stream limit (busy), and nothing before the models are loaded."""

import asyncio
import threading

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gpu_server import client, protocol

from .conftest import SECRET, make_settings, serve, silence, token


async def closed_with(url: str, headers: dict | None = None) -> tuple[int | None, list]:
    """Connect, send a start and a stop, and report the close code and what came back."""
    received = []
    async with connect(url, additional_headers=headers or {}) as ws:
        try:
            await ws.send(protocol.encode(protocol.SttStart()))
            await ws.send(protocol.encode(protocol.SttStop()))
        except ConnectionClosed:
            pass  # refused already; what it said before closing is still in the buffer
        try:
            async for message in ws:
                received.append(message)
        except ConnectionClosed:
            pass
        return ws.close_code, received


@pytest.mark.parametrize("path", ["/ws/stt", "/ws/tts"])
async def test_missing_forged_and_expired_tokens_are_closed_with_4401(server, path):
    cases = {
        "missing": server.ws(path),
        "forged": server.ws(path, token(secret="not-the-pod-secret")),
        "expired": server.ws(path, token(ttl_s=-60)),
        "garbage": server.ws(path, "v1.nonsense"),
    }
    for case, url in cases.items():
        code, received = await closed_with(url)
        assert (case, code, received) == (case, protocol.CLOSE_UNAUTHORIZED, [])


async def test_token_in_query_or_bearer_header_is_accepted(server):
    assert (await closed_with(server.ws("/ws/stt", token())))[0] == 1000
    code, received = await closed_with(server.ws("/ws/stt"), {"Authorization": f"Bearer {token()}"})
    assert code == 1000 and [protocol.parse_stt_server(m) for m in received] == [protocol.Ready(), protocol.Done()]


async def test_token_must_name_this_pod_when_the_pod_id_is_known(start_server):
    with start_server(pod_id="pod-a") as pod_a:
        assert (await closed_with(pod_a.ws("/ws/stt", token(pod="pod-b"))))[0] == protocol.CLOSE_UNAUTHORIZED
        assert (await closed_with(pod_a.ws("/ws/stt", token(pod="pod-a"))))[0] == 1000


async def test_a_newer_lease_on_the_slot_closes_the_old_leases_sockets_and_refuses_its_token(start_server):
    """The controller released lease-a and gave its slot to lease-b: lease-a's open STT and TTS sockets close
    with 4401 when lease-b's token arrives, lease-a's token is refused from then on, and a lease on another
    slot keeps its stream."""
    old, new = token(lease="lease-a", slot=0, generation=1000), token(lease="lease-b", slot=0, generation=2000)
    other = token(lease="lease-c", slot=1, generation=1500)
    with start_server(max_stt_streams=4) as pod:
        async with (
            connect(pod.ws("/ws/stt", old)) as stt,
            connect(pod.ws("/ws/tts", old)) as tts,
            client.SttConnection(pod.ws("/ws/stt"), other) as neighbour,
        ):
            await stt.send(protocol.encode(protocol.SttStart()))
            assert protocol.parse_stt_server(await stt.recv()) == protocol.Ready()
            await neighbour.send_start()
            async with connect(pod.ws("/ws/stt", new)) as newer:
                await newer.send(protocol.encode(protocol.SttStart()))
                assert protocol.parse_stt_server(await newer.recv()) == protocol.Ready()
                for ws in (stt, tts):
                    with pytest.raises(ConnectionClosed):
                        await asyncio.wait_for(ws.recv(), 10)
                    assert (ws.close_code, ws.close_reason) == (
                        protocol.CLOSE_UNAUTHORIZED,
                        "a newer lease holds slot 0 of this pod",
                    )
            code, received = await closed_with(pod.ws("/ws/stt", old))
            assert (code, received) == (protocol.CLOSE_UNAUTHORIZED, [])
            assert (await closed_with(pod.ws("/ws/stt", new)))[0] == 1000  # the holder reconnects freely
            await neighbour.send_audio(silence(0.5).tobytes())
            await neighbour.send_stop()
            assert any(isinstance(r.message, protocol.Done) for r in await neighbour.receive_all())


async def test_stream_limit_answers_busy_and_the_admitted_stream_carries_on(start_server, spoken):
    with start_server(max_stt_streams=1) as small:
        async with client.SttConnection(small.ws("/ws/stt"), token()) as first:
            await first.send_start()
            code, received = await closed_with(small.ws("/ws/stt", token()))
            assert code == protocol.CLOSE_TRY_AGAIN_LATER
            assert protocol.parse_stt_server(received[0]) == protocol.Error(
                "busy", "this server already has 1 stt streams"
            )
            for i in range(0, len(spoken.pcm16k[0]), 3200):
                await first.send_audio(spoken.pcm16k[0][i : i + 3200].tobytes())
            await first.send_stop()
            finals = [r.message for r in await first.receive_all() if isinstance(r.message, protocol.Final)]
        assert finals and "weather" in finals[0].text.lower()


async def test_health_is_503_while_loading_then_200_and_sockets_wait(engines):
    release = threading.Event()

    def slow_load(_settings):
        release.wait(30)
        return engines

    with serve(make_settings(), slow_load) as running:
        async with httpx.AsyncClient(base_url=running.http) as http:
            loading = await http.get("/health")
            assert (loading.status_code, loading.json()) == (503, {"status": "loading"})
            code, received = await closed_with(running.ws("/ws/tts", token()))
            assert code == protocol.CLOSE_TRY_AGAIN_LATER and protocol.parse_tts_server(received[0]).code == "loading"
            release.set()
            for _ in range(100):
                ready = await http.get("/health")
                if ready.status_code == 200:
                    break
                await asyncio.sleep(0.05)
    body = ready.json()
    assert body["status"] == "ok"
    assert body["stt"]["engine"] == "faster-whisper" and body["stt"]["device"] == "cpu"
    assert body["tts"]["engine"] == "piper" and body["tts"]["output_sample_rate"] == 24000


async def test_failed_model_load_is_reported_on_health():
    def broken(_settings):
        raise RuntimeError("no such model: /models/nothing")

    with serve(make_settings(), broken) as running:
        async with httpx.AsyncClient(base_url=running.http) as http:
            for _ in range(100):
                response = await http.get("/health")
                if response.json()["status"] != "loading":
                    break
                await asyncio.sleep(0.02)
    expected = {"status": "error", "error": "no such model: /models/nothing"}
    assert (response.status_code, response.json()) == (503, expected)


async def test_metrics_count_streams_latencies_audio_and_model_loads(start_server, spoken):
    with start_server() as fresh:
        speech = await client.speak(fresh.ws("/ws/tts"), token(), "Hello there.")
        audio = __import__("numpy").concatenate([spoken.pcm16k[1], silence(0.8)])
        await client.transcribe(fresh.ws("/ws/stt"), token(), audio, 16000, realtime=False)
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"{fresh.http}/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("harper_stt_streams_active", ())] == 0
    assert samples[("harper_tts_streams_active", ())] == 0
    assert samples[("harper_tts_first_audio_seconds_count", ())] == 1
    assert samples[("harper_stt_final_latency_seconds_count", ())] >= 1
    assert ("harper_stt_partial_latency_seconds_count", ()) in samples
    assert samples[("harper_tts_audio_seconds_total", ())] == pytest.approx(speech.audio_ms / 1000)
    assert samples[("harper_stt_audio_seconds_total", ())] == pytest.approx(len(audio) / 16000, abs=0.05)
    for model in ("whisper", "piper", "silero_vad"):
        assert samples[("harper_model_load_seconds", (("model", model),))] > 0
    assert SECRET not in text
