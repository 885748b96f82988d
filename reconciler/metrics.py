"""Prometheus metrics of the controller (prefix ``harper_``, base units, no lease or session ids in labels).

One ``ControllerMetrics`` per app, on its own registry: created in the lifespan, never at import.
Gauges are set from the state after each reconcile pass; counters are bumped where things happen.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from . import __version__

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class ControllerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.pods = Gauge("harper_pods", "Pods by role, state and GPU type", ["role", "state", "gpu_type"], registry=r)
        self.leases = Gauge("harper_leases", "Leases by state", ["state"], registry=r)
        self.lease_requests = Counter(
            "harper_lease_requests", "Lease API requests by result", ["result"], registry=r
        )
        self.lease_wait = Histogram(
            "harper_lease_wait_seconds", "Time from lease request to ready, by claim path", ["path"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.cost_per_hour = Gauge(
            "harper_cost_dollars_per_hour", "Current spend rate in USD per hour", ["kind"], registry=r
        )
        self.cost_total = Counter("harper_cost_dollars", "USD spent since start", ["kind"], registry=r)
        self.gpu_seconds = Counter(
            "harper_gpu_seconds", "GPU seconds billed, leased or idle", ["usage"], registry=r
        )
        self.standby_ready = Gauge(
            "harper_standby_ready", "Stopped standby pods that were Ready and can be resumed", registry=r
        )
        self.leases_queued = Gauge("harper_leases_queued", "Pending leases waiting for a pod", registry=r)
        self.warm_target = Gauge(
            "harper_warm_target", "Idle Ready pods the warm-capacity schedule wants now (0 outside its windows)",
            registry=r,
        )
        self.reconcile = Counter("harper_reconcile", "Reconcile passes by result", ["result"], registry=r)
        self.reconcile_duration = Histogram(
            "harper_reconcile_duration_seconds", "Reconcile pass duration", buckets=LATENCY_BUCKETS, registry=r
        )
        self.provider_requests = Counter(
            "harper_provider_requests", "RunPod calls by operation and outcome", ["op", "outcome"], registry=r
        )
        self.provider_duration = Histogram(
            "harper_provider_request_duration_seconds", "RunPod call duration", ["op"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.capacity_errors = Counter(
            "harper_capacity_errors", "RunPod capacity refusals", ["gpu_type", "reason"], registry=r
        )
        self.orphans = Counter(
            "harper_orphans_collected", "Unknown harper- pods found and handled", ["action"], registry=r
        )
        self.build_info = Gauge("harper_build_info", "Build information", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        for kind in ("gpu", "storage"):
            self.cost_total.labels(kind=kind)
            self.cost_per_hour.labels(kind=kind)
        for usage in ("leased", "idle"):
            self.gpu_seconds.labels(usage=usage)

    def observe_provider(self, op: str, outcome: str, seconds: float) -> None:
        self.provider_requests.labels(op=op, outcome=outcome).inc()
        self.provider_duration.labels(op=op).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
