"""Silero run incrementally gives the whole-file scores; the endpointer turns scores into utterances."""

import numpy as np
from faster_whisper.vad import get_vad_model

from gpu_server.vad import WINDOW, EndpointConfig, Endpointer, SpeechEnd, SpeechStart


def test_incremental_silero_matches_whole_file_run(engines, spoken):
    audio = np.concatenate([np.zeros(8000), spoken.pcm16k[0], np.zeros(16000)]).astype(np.float32) / 32768
    audio = audio[: len(audio) // WINDOW * WINDOW]
    whole = get_vad_model()(audio).reshape(-1)
    stream = engines.vad.stream()
    rng = np.random.default_rng(1)
    probs, at = [], 0
    while at < len(audio):  # uneven chunk sizes, as a network delivers them
        step = int(rng.integers(1, 3000))
        probs.append(stream.push(audio[at : at + step]))
        at += step
    np.testing.assert_allclose(np.concatenate(probs), whole, atol=1e-5)
    assert whole.max() > 0.9 and whole[:10].max() < 0.5


def feed(endpointer, probs):
    return [(i, e) for i, p in enumerate(probs) if (e := endpointer.push(p)) is not None]


def test_speech_then_endpoint_silence_gives_start_and_end():
    ep = Endpointer(EndpointConfig(threshold=0.5, endpoint_ms=500))
    events = feed(ep, [0.1] * 5 + [0.9] * 20 + [0.05] * 20)
    assert events[0] == (6, SpeechStart(5 * WINDOW))
    index, end = events[1]
    assert end == SpeechEnd(25 * WINDOW)
    assert (index + 1 - 25) * WINDOW >= 500 * 16  # fired only after 500 ms of silence
    assert not ep.in_speech


def test_single_spike_and_short_pauses_do_not_split():
    ep = Endpointer(EndpointConfig(endpoint_ms=500))
    assert feed(ep, [0.1, 0.95, 0.1, 0.1]) == []  # one window is a click, not speech
    events = feed(ep, [0.9] * 10 + [0.05] * 5 + [0.9] * 10 + [0.4] * 3)
    assert [type(e) for _, e in events] == [SpeechStart]  # 160 ms pause < endpoint
    assert ep.last_speech_end == ep.samples  # 0.4 is between the thresholds: still speech


def test_trailing_silence_is_measured_from_the_last_speech_window():
    ep = Endpointer(EndpointConfig(endpoint_ms=1000))
    feed(ep, [0.9] * 5 + [0.0] * 10)
    assert ep.trailing_silence_ms == 10 * WINDOW / 16
