"""Prometheus metrics of one gpu_server process (names from DESIGN.md), on the app's own registry.

Created by the app's lifespan and handed to the streams; nothing registers on prometheus_client's global
registry, so several apps (tests, an emulator running pods in-process) never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class SpeechMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stt_streams_active = Gauge("harper_stt_streams_active", "Open /ws/stt connections", registry=r)
        self.tts_streams_active = Gauge("harper_tts_streams_active", "Open /ws/tts connections", registry=r)
        self.stt_final_latency = Histogram(
            "harper_stt_final_latency_seconds",
            "From the end of an utterance (VAD endpoint or stop) to its final being sent",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stt_partial_latency = Histogram(
            "harper_stt_partial_latency_seconds",
            "From the arrival of the newest audio a partial covers to the partial being sent",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tts_first_audio = Histogram(
            "harper_tts_first_audio_seconds",
            "From a speak request starting to its first audio frame being sent",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stt_audio_seconds = Counter(
            "harper_stt_audio_seconds_total", "Seconds of audio received on /ws/stt", registry=r
        )
        self.tts_audio_seconds = Counter(
            "harper_tts_audio_seconds_total", "Seconds of audio sent on /ws/tts", registry=r
        )
        self.model_load_seconds = Gauge(
            "harper_model_load_seconds", "Time taken to load and warm up each model", ["model"], registry=r
        )

        self.memory_trims = Counter(
            "harper_memory_trims_total", "Free heap pages handed back to the system while streams were open",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
