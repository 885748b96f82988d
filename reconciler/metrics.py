"""Prometheus metrics of the controller (prefix ``harper_``, base units, no lease or session ids in labels).

One ``ControllerMetrics`` per app, on its own registry: created in the lifespan, never at import.
Gauges are set from the state after each reconcile pass; counters are bumped where things happen.

The policy in force is exported too (``harper_policy_*``), so alert rules compare spend with *the* budget and
expect a standby only where the policy asks for one, instead of thresholds copied from the defaults.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from . import __version__
from .domain import PodPhase

if TYPE_CHECKING:
    from .domain import Policy
    from .tables import PodRow

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
            "harper_provider_requests", "RunPod calls by API (rest|graphql), operation and outcome",
            ["api", "op", "outcome"], registry=r,
        )
        self.quota_remaining = Gauge(
            "harper_provider_quota_remaining", "RunPod rate-limit calls left in each window, as last reported",
            ["window"], registry=r,
        )
        self.gpu_stock = Gauge(
            "harper_gpu_stock", "RunPod pod stock per GPU type (0 NONE, 1 LOW, 2 MEDIUM, 3 HIGH)", ["gpu_type"],
            registry=r,
        )
        self.cost_billed = Counter(
            "harper_cost_billed_dollars", "USD RunPod billed for our pods since start (its billing records)",
            ["kind"], registry=r,
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
        self.quota_limit = Gauge(
            "harper_provider_quota_limit", "RunPod rate-limit calls allowed in each window (RateLimit-Policy)",
            ["window"], registry=r,
        )
        self.pods_unhealthy = Gauge(
            "harper_pods_unhealthy", "Ready pods whose health checks fail (out of the warm pool until healthy "
            "again; replaced after unhealthy_timeout_s)", registry=r,
        )
        self.policy_budget = Gauge(
            "harper_policy_budget_dollars_per_hour", "Policy: spend limit in USD per hour (creates stop there)",
            registry=r,
        )
        self.policy_standby = Gauge(
            "harper_policy_standby_count", "Policy: stopped Ready standby pods to keep", registry=r
        )
        self.policy_max_pods = Gauge("harper_policy_max_pods", "Policy: most pods alive at once", registry=r)
        self.policy_sessions_per_pod = Gauge(
            "harper_policy_sessions_per_pod", "Policy: leases one pod serves at once", registry=r
        )
        self.policy_paused = Gauge(
            "harper_policy_paused", "Policy: 1 while paused (no pod is created or resumed), else 0", registry=r
        )
        self.policy_idle_ttl = Gauge(
            "harper_policy_idle_ttl_seconds", "Policy: an unleased running pod is stopped after this", registry=r
        )
        self.policy_stopped_ttl = Gauge(
            "harper_policy_stopped_ttl_seconds", "Policy: a surplus stopped pod is terminated after this",
            registry=r,
        )
        self.policy_gpu_types = Gauge(
            "harper_policy_gpu_type", "Policy: GPU types tried for new pods, value = priority (1 first)",
            ["gpu_type"], registry=r,
        )
        self.build_info = Gauge("harper_build_info", "Build information", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        for kind in ("gpu", "storage"):
            self.cost_total.labels(kind=kind)
            self.cost_billed.labels(kind=kind)
            self.cost_per_hour.labels(kind=kind)
        for usage in ("leased", "idle"):
            self.gpu_seconds.labels(usage=usage)

    def observe_provider(self, api: str, op: str, outcome: str, seconds: float) -> None:
        self.provider_requests.labels(api=api, op=op, outcome=outcome).inc()
        self.provider_duration.labels(op=op).observe(seconds)

    def set_state(
        self, policy: Policy, pods: Iterable[PodRow], quota: Mapping[str, Mapping[str, float]]
    ) -> None:
        """Gauges of what a pass found: the policy in force, unhealthy pods and RunPod's quota per window
        (``RateBudget.as_dict()``; empty where the API reports none, as GraphQL)."""
        self.policy_budget.set(policy.budget_usd_per_hour)
        self.policy_standby.set(policy.standby_count)
        self.policy_max_pods.set(policy.max_pods)
        self.policy_sessions_per_pod.set(policy.sessions_per_pod)
        self.policy_paused.set(1 if policy.paused else 0)
        self.policy_idle_ttl.set(policy.idle_ttl_s)
        self.policy_stopped_ttl.set(policy.stopped_ttl_s)
        self.policy_gpu_types.clear()  # a type dropped from the policy must not linger
        for rank, gpu_type in enumerate(policy.gpu_types, start=1):
            self.policy_gpu_types.labels(gpu_type=gpu_type).set(rank)
        self.pods_unhealthy.set(
            sum(1 for pod in pods if pod.phase == PodPhase.READY and pod.unhealthy_since is not None)
        )
        for window, state in quota.items():
            self.quota_limit.labels(window=window).set(state["quota"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
