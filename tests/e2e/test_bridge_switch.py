"""The move from the bridge to the pod, at the moments that matter, between two real gpu_servers.

No controller here: the *bridge* and the *pod* are two local CPU gpu_server processes (each with its own
secret), and the test decides when the pod's route appears, as a session does when its lease turns ready.
The user's voice is Piper's, synthesized beforehand; Whisper transcribes it. Every utterance must come out
exactly once, with its times on the stream's own clock inside the span where it was sent.
"""

from __future__ import annotations

import asyncio

import pytest

from gpu_server.transcript import word_error_rate
from reconciler.bridge import BridgedStt, Route, Server
from reconciler.bridge_tts import BridgedTts
from reconciler.demo_bridge import SENTENCES, collect, play, synthesize
from reconciler.local_server import LocalGpuServer

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture
async def servers():
    bridge, pod = LocalGpuServer(), LocalGpuServer()
    try:
        await asyncio.gather(bridge.ensure(), pod.ensure())
        yield bridge.route(Server.BRIDGE), pod.route(Server.POD)
    finally:
        await asyncio.gather(bridge.stop(), pod.stop())


def check_once(finals, clips, spans) -> None:
    """One final per clip, in order, each with its clip's words, each inside its clip's span (+ the tail
    the endpoint may take)."""
    assert [f.utterance for f in finals] == list(range(1, len(clips) + 1)), [(f.server, f.text) for f in finals]
    for final, clip, (start, end) in zip(finals, clips, spans, strict=True):
        assert word_error_rate([clip.text], [final.text]) <= 0.25, (clip.text, final.text, final.server)
        assert start - 0.4 <= final.start and final.end <= end + 0.3, (final, start, end)


async def test_the_pod_turning_ready_mid_utterance_moves_the_stream_after_that_utterance(servers):
    bridge, pod = servers
    clips = await synthesize(bridge, SENTENCES[:3])
    pod_route: asyncio.Future[Route | None] = asyncio.get_running_loop().create_future()
    switched: list[int] = []
    async with BridgedStt(bridge, pod=pod_route, sample_rate=clips[0].sample_rate, on_switch=switched.append) as stt:
        heard = []
        listener = asyncio.create_task(collect(stt, heard.append))
        seen_onset = []

        async def during(clip: int, fraction: float) -> None:
            # Halfway through the second sentence, once the bridge has said it hears speech: the pod is ready.
            if clip == 1 and fraction >= 0.5 and not pod_route.done():
                onset = [e for e in heard if e.type == "speech_started" and e.utterance == 2]
                if onset or fraction >= 0.9:
                    seen_onset.append(bool(onset))
                    pod_route.set_result(pod)

        spans = await play(stt, clips, gap_s=1.5, during=during)
        await stt.finish()
        events = await listener
    finals = [e for e in events if e.type == "final"]
    assert seen_onset == [True]  # the pod was ready while utterance 2 was in progress on the bridge
    assert [f.server for f in finals] == [Server.BRIDGE, Server.BRIDGE, Server.POD]
    assert switched == [3] and stt.switched_at == 3
    check_once(finals, clips, spans)
    # nothing the bridge heard after the move reached the caller
    assert all(e.server is Server.POD for e in events if e.utterance == 3)


async def test_a_pod_ready_between_utterances_takes_the_next_one_whole(servers):
    bridge, pod = servers
    clips = await synthesize(bridge, SENTENCES[:3])
    pod_route: asyncio.Future[Route | None] = asyncio.get_running_loop().create_future()
    async with BridgedStt(bridge, pod=pod_route, sample_rate=clips[0].sample_rate) as stt:
        listener = asyncio.create_task(collect(stt))

        async def before(clip: int) -> None:
            # The moment the second sentence begins, before the bridge's VAD can have noticed it: the move
            # happens "between utterances" and the replay from just after the first final carries its onset.
            if clip == 1:
                pod_route.set_result(pod)

        spans = await play(stt, clips, gap_s=1.5, before=before)
        await stt.finish()
        events = await listener
    finals = [e for e in events if e.type == "final"]
    assert finals[0].server is Server.BRIDGE and finals[-1].server is Server.POD
    assert stt.switched_at in (2, 3)
    check_once(finals, clips, spans)


async def test_with_no_boundary_in_sight_the_move_happens_anyway_and_loses_nothing(servers, monkeypatch):
    # The safety net for a bridge whose VAD heard "speech" that never ends in a final: after the deadline the
    # stream moves mid-utterance; the pod gets everything from just after the last final, so the utterance
    # the bridge had begun is transcribed once, by the pod.
    monkeypatch.setattr("reconciler.bridge.MOVE_DEADLINE_S", 0.3)
    bridge, pod = servers
    clips = await synthesize(bridge, [SENTENCES[1], SENTENCES[4], SENTENCES[2]])
    pod_route: asyncio.Future[Route | None] = asyncio.get_running_loop().create_future()
    async with BridgedStt(bridge, pod=pod_route, sample_rate=clips[0].sample_rate) as stt:
        heard = []
        listener = asyncio.create_task(collect(stt, heard.append))

        async def during(clip: int, fraction: float) -> None:
            if clip == 1 and fraction >= 0.3 and not pod_route.done():
                if any(e.type == "speech_started" and e.utterance == 2 for e in heard) or fraction >= 0.6:
                    pod_route.set_result(pod)

        spans = await play(stt, clips, gap_s=1.5, during=during)
        await stt.finish()
        events = await listener
    finals = [e for e in events if e.type == "final"]
    assert [f.server for f in finals] == [Server.BRIDGE, Server.POD, Server.POD] and stt.switched_at == 2
    check_once(finals, clips, spans)


async def test_no_pod_keeps_the_stream_where_it_is(servers):
    bridge, _ = servers
    clips = await synthesize(bridge, SENTENCES[:2])
    pod_route: asyncio.Future[Route | None] = asyncio.get_running_loop().create_future()
    async with BridgedStt(bridge, pod=pod_route, sample_rate=clips[0].sample_rate) as stt:
        listener = asyncio.create_task(collect(stt))

        async def before(clip: int) -> None:
            if clip == 1:
                pod_route.set_result(None)  # the lease failed: what the bridge serves now is the fallback

        spans = await play(stt, clips, gap_s=1.2, before=before)
        await stt.finish()
        events = await listener
    finals = [e for e in events if e.type == "final"]
    assert [f.server for f in finals] == [Server.BRIDGE, Server.FALLBACK] and stt.switched_at is None
    check_once(finals, clips, spans)


async def test_speech_moves_between_replies_never_inside_one(servers):
    bridge, pod = servers
    pod_route: asyncio.Future[Route | None] = asyncio.get_running_loop().create_future()
    moves = []

    async def choose() -> Route:
        return pod_route.result() if pod_route.done() else bridge

    tts = BridgedTts(choose, on_route=lambda *move: moves.append(move))
    try:
        frames = []

        def on_frame(frame) -> None:
            frames.append(frame)
            if len(frames) == 5 and not pod_route.done():
                pod_route.set_result(pod)  # the pod turns ready while the first reply is being voiced

        first = await tts.speak(SENTENCES[4], on_frame=on_frame)
        second = await tts.speak(SENTENCES[1])
    finally:
        await tts.aclose()
    assert first.server is Server.BRIDGE and second.server is Server.POD
    assert not first.cancelled and [f.seq for f in first.speech.frames] == list(range(len(first.speech.frames)))
    assert len(first.speech.frames) * 20 == pytest.approx(first.speech.audio_ms, abs=20)  # whole, not cut
    assert len(frames) == len(first.speech.frames)
    assert moves == [(Server.BRIDGE, None, 1), (Server.POD, Server.BRIDGE, 2)]
