"""Zero-wait sessions end to end: the real local stack with a slow pod (the emulator boots it in 20 s, then
gpu_server loads its models), a companion that keeps its local CPU gpu_server warm, and a user who starts
talking the moment the session opens.

Five sentences over about 30 s (Piper's voice, Whisper's ears): the first are transcribed on the bridge, the
later on the pod, each exactly once; the word error rate is within 5 points of a session that had the pod from
the start (the same audio, the same pod, after it is warm).
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry

from gpu_server.transcript import word_error_rate
from reconciler.bridge import Server
from reconciler.client import VoicePods
from reconciler.demo_bridge import SENTENCES, Clip, collect, play, synthesize

from .conftest import COMPANION

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]

SLOW_POD = {"HARPER_LOCAL_BOOT_S": "20", "HARPER_STANDBY_COUNT": "0", "HARPER_IDLE_TTL_S": "300"}
GAP_S = 3.5  # five ~2.5 s sentences and their gaps: about 30 s of audio


async def controller_up(stack) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            await stack.pods()
            return
        except (httpx.HTTPError, ValueError, KeyError):
            await asyncio.sleep(0.3)
    raise AssertionError(f"controller did not start; log:\n{stack.log.read_text()[-3000:]}")


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def check_each_once(finals, texts, spans) -> None:
    assert len(finals) == len(texts), [(f.server, f.text) for f in finals]
    assert all(f.end_of_turn for f in finals)  # short utterances: each final ends its turn, on either server
    for final, text, (start, end) in zip(finals, texts, spans, strict=True):
        assert word_error_rate([text], [final.text]) <= 0.25, (text, final.text, final.server)
        assert start - 0.4 <= final.start and final.end <= end + 0.3, (final, start, end)


def wer(texts: list[str], finals) -> float:
    return word_error_rate([" ".join(texts)], [" ".join(f.text for f in finals)])


async def reference_wer(pods: VoicePods, clips: list[Clip]) -> float:
    """The same audio through a session that has the (now warm) pod from its first moment."""
    async with pods.session("reference", bridge=None) as voice:
        assert voice.server is Server.POD and voice.path == "warm"
        async with voice.stt(sample_rate=clips[0].sample_rate) as stt:
            listener = asyncio.create_task(collect(stt))
            await play(stt, clips, gap_s=GAP_S, speed=2.0)
            await stt.finish()
            finals = [e for e in await listener if e.type == "final"]
    assert {f.server for f in finals} == {Server.POD}
    return wer([c.text for c in clips], finals)


async def local_streams(pods: VoicePods) -> dict:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"http://127.0.0.1:{pods.local.port}/health")).json()["streams"]


async def test_bridge_stt_listens_at_once_and_the_voice_waits_for_the_pod(local_stack, caplog):
    caplog.set_level(logging.INFO, logger="reconciler")
    stack = await local_stack(**SLOW_POD)
    await controller_up(stack)
    registry = CollectorRegistry()
    pods = VoicePods(stack.url, COMPANION, bridge="stt", heartbeat_s=2.0, registry=registry)
    await pods.start()  # the local server warms while we get the user's voice ready
    try:
        await pods.warm()
        clips = await synthesize(pods.local.route(Server.BRIDGE), SENTENCES)
        started = time.monotonic()
        async with pods.session("user-stt") as voice:
            assert voice.server is Server.BRIDGE and voice.lease.state == "pending" and voice.wait_s < 5
            # a greeting asked for at once: with bridge="stt" it waits for the pod's voice
            greeting = asyncio.create_task(voice.speak("Hi, how can I help?"))

            async def before(i: int) -> None:
                if i == 3:  # by now the pod should be ready; if the machine is slow, wait for it (and the move)
                    assert await asyncio.wait_for(voice.wait_for_pod(), 120)
                    await asyncio.wait_for(stt.moved.wait(), 30)

            async with voice.stt(sample_rate=clips[0].sample_rate) as stt:
                listener = asyncio.create_task(collect(stt))
                spans = await play(stt, clips, gap_s=GAP_S, before=before)
                await stt.finish()
                events = await listener
            reply = await greeting
            assert (await local_streams(pods)) == {"stt": 0, "tts": 0}  # the session closed what it opened
            ready_s, bridged_s, switched_at = voice.ready_s, voice.bridged_s, voice.switched_at
        finals = [e for e in events if e.type == "final"]
        check_each_once(finals, SENTENCES, spans)
        servers = [f.server for f in finals]
        assert servers[0] is Server.BRIDGE and servers[3:] == [Server.POD, Server.POD], servers
        assert servers == [Server.BRIDGE] * (switched_at - 1) + [Server.POD] * (6 - switched_at)
        assert finals[0].at - started < ready_s  # the first words were heard before the pod existed
        assert reply.server is Server.POD and reply.speech.done_at - started >= ready_s and not reply.cancelled
        assert ready_s <= bridged_s
        assert sample(registry, "harper_client_switches_total", stream="stt") == 1.0
        assert sample(registry, "harper_client_switches_total", stream="tts") is None  # never voiced on the bridge
        assert sample(registry, "harper_client_bridge_seconds_count") == 1.0
        assert sample(registry, "harper_client_bridge_seconds_sum") == pytest.approx(bridged_s)
        assert any("STT moved from the bridge to pod" in r.getMessage() and f"at utterance {switched_at}"
                   in r.getMessage() for r in caplog.records)
        assert wer(SENTENCES, finals) <= await reference_wer(pods, clips) + 0.05
    finally:
        await pods.aclose()
    assert not pods.local.running


async def test_bridge_both_speaks_and_listens_at_once_and_moves_between_replies(local_stack):
    stack = await local_stack(**SLOW_POD)
    await controller_up(stack)
    registry = CollectorRegistry()
    async with VoicePods(stack.url, COMPANION, bridge="both", heartbeat_s=2.0, registry=registry) as pods:
        await pods.warm()
        spoken = []
        async with pods.session("user-both") as voice:
            assert voice.server is Server.BRIDGE

            def voiced(text: str):
                async def make() -> Clip:  # the companion's own voice, fed back as what the user says
                    reply = await voice.speak(text)
                    spoken.append(reply)
                    return Clip(text, reply.speech.pcm_bytes(), reply.speech.sample_rate)
                return make

            async def before(i: int) -> None:
                if i == 3:
                    assert await asyncio.wait_for(voice.wait_for_pod(), 120)
                    await asyncio.wait_for(stt.moved.wait(), 30)

            async with voice.stt(sample_rate=24000) as stt:
                listener = asyncio.create_task(collect(stt))
                spans = await play(stt, [voiced(t) for t in SENTENCES], gap_s=GAP_S, before=before)
                await stt.finish()
                events = await listener
            tts_switched_at, switched_at = voice.tts_switched_at, voice.switched_at
        finals = [e for e in events if e.type == "final"]
        check_each_once(finals, SENTENCES, spans)
        voices = [s.server for s in spoken]
        # each reply voiced whole by one server; the voice moved once, between two replies
        assert voices == [Server.BRIDGE] * (tts_switched_at - 1) + [Server.POD] * (6 - tts_switched_at), voices
        assert voices[0] is Server.BRIDGE and voices[3:] == [Server.POD, Server.POD]
        assert all(not s.cancelled and len(s.speech.frames) * 20 == pytest.approx(s.speech.audio_ms, abs=20)
                   for s in spoken)
        assert finals[0].server is Server.BRIDGE and switched_at <= 4
        assert sample(registry, "harper_client_switches_total", stream="tts") == 1.0
        assert sample(registry, "harper_client_switches_total", stream="stt") == 1.0
        clips = [Clip(s.text, s.speech.pcm_bytes(), s.speech.sample_rate) for s in spoken]
        assert wer(SENTENCES, finals) <= await reference_wer(pods, clips) + 0.05
    assert not pods.local.running


async def test_with_no_pod_a_bridged_session_stays_local_and_closes_what_it_opened(local_stack):
    stack = await local_stack(HARPER_STANDBY_COUNT="0", HARPER_MAX_PODS="0")  # leases stay pending
    await controller_up(stack)
    registry = CollectorRegistry()
    async with VoicePods(stack.url, COMPANION, bridge="stt", fallback_after_s=4.0, heartbeat_s=1.0,
                         registry=registry) as pods:
        await pods.warm()
        clips = await synthesize(pods.local.route(Server.BRIDGE), SENTENCES[1:3])
        async with pods.session("nobody-home") as voice:
            lease_id = voice.lease.id
            greeting = asyncio.create_task(voice.speak("One moment please."))  # waits for a pod that never comes
            async with voice.stt(sample_rate=clips[0].sample_rate) as stt:
                listener = asyncio.create_task(collect(stt))

                async def before(i: int) -> None:
                    if i == 1:
                        assert not await voice.wait_for_pod()  # the lease gave up after fallback_after_s

                spans = await play(stt, clips, gap_s=1.2, before=before)
                await stt.finish()
                finals = [e for e in await listener if e.type == "final"]
            reply = await greeting
            assert voice.fallback and voice.server is Server.FALLBACK
        check_each_once(finals, [c.text for c in clips], spans)
        assert [f.server for f in finals] == [Server.BRIDGE, Server.FALLBACK]
        assert reply.server is Server.FALLBACK and not reply.cancelled
        assert sample(registry, "harper_client_fallbacks_total", reason="TimeoutError") == 1.0
        assert sample(registry, "harper_client_bridge_seconds_count") == 0.0
        lease = (await stack.admin.get(f"/v1/leases/{lease_id}")).json()
        assert lease["state"] == "released"

        # Leaving a session while its voice still waits for the pod: the wait ends, nothing hangs.
        pods.fallback_after_s = 600
        async with pods.session("leaves-early") as voice:
            waiting = asyncio.create_task(voice.speak("Are you there?"))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            lease_id = voice.lease.id
        with pytest.raises(RuntimeError, match="released"):
            await asyncio.wait_for(waiting, 10)
        assert (await stack.admin.get(f"/v1/leases/{lease_id}")).json()["state"] == "released"
        assert (await local_streams(pods)) == {"stt": 0, "tts": 0}
    assert not pods.local.running
