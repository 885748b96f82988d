"""Pure rules of the RunPod seam: reading RunPod's rate-limit headers into a budget, and mapping REST v2 answers
to the error tree. (The providers themselves are tested against the emulator over HTTP in tests/integration.)"""

import httpx
import pytest

from reconciler.provider import (
    AuthFailed,
    BalanceTooLow,
    Conflict,
    GpuTypeDenied,
    HostGpuBusy,
    NotFound,
    OutOfStock,
    RateBudget,
    RateLimited,
    Rejected,
    Transient,
)
from reconciler.provider.ratelimit import parse_structured_list
from reconciler.provider.rest import classify, parse_pod

POLICY = '"minute";q=60;w=60, "hour";q=3000;w=3600, "day";q=50000;w=86400'


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_structured_lists_parse_and_garbage_is_skipped():
    assert parse_structured_list(POLICY) == {
        "minute": {"q": 60, "w": 60}, "hour": {"q": 3000, "w": 3600}, "day": {"q": 50000, "w": 86400}}
    assert parse_structured_list('"minute";r=0;t=12, what is this, "hour";r=2800;t=1812') == {
        "minute": {"r": 0, "t": 12}, "hour": {"r": 2800, "t": 1812}}
    assert parse_structured_list("") == {}


def test_budget_counts_calls_in_flight_and_paces_what_is_left():
    clock = FakeClock()
    budget = RateBudget(reserve=2, clock=clock)
    assert budget.allowance() is None and budget.pace_s() == 0.0  # no quota reported (GraphQL)
    budget.update({"ratelimit-policy": POLICY, "ratelimit": '"minute";r=59;t=60, "hour";r=2999;t=3600'})
    assert budget.allowance() == 57
    for _ in range(10):
        budget.spend()  # sent, answers not back yet
    assert budget.allowance() == 47
    # A late answer reporting more left than we counted does not undo the calls still in flight.
    budget.update({"ratelimit": '"minute";r=55;t=59, "hour";r=2995;t=3599'})
    assert budget.allowance() == 47
    assert budget.pace_s() == pytest.approx(60 / 49, rel=0.05)  # 49 left for ~60 s
    for _ in range(49):
        budget.spend()
    assert budget.allowance() == 0 and budget.wait_s() == pytest.approx(60, abs=1.5)
    clock.t += 61  # the minute window resets
    assert budget.wait_s() == 0 and budget.allowance() == 58  # the hour window is not near its end


def test_retry_after_blocks_every_call_until_it_passes():
    clock = FakeClock()
    budget = RateBudget(clock=clock)
    budget.retry_after(12)
    assert budget.wait_s() == 12 and budget.allowance() == 0
    clock.t += 12
    assert budget.wait_s() == 0


def answer(status: int, body=None, **headers) -> httpx.Response:
    request = httpx.Request("POST", "https://api.runpod.io/v2/pods")
    if isinstance(body, str):
        return httpx.Response(status, text=body, headers={"content-type": "text/html", **headers}, request=request)
    return httpx.Response(status, json=body or {}, headers=headers, request=request)


def problem(status: int, detail: str, **extra):
    return answer(status, {"title": "x", "status": status, "detail": detail, **extra})


@pytest.mark.parametrize(
    ("response", "op", "error"),
    [
        (problem(400, "There are not enough free GPUs on the host machine to start this pod."), "resume_pod",
         HostGpuBusy),
        (problem(400, "There are no longer any instances available with the requested specifications."),
         "create_pod", OutOfStock),
        (problem(400, "No compatible CUDA host is currently available."), "create_pod", OutOfStock),
        (problem(400, "This machine does not have the resources to deploy your pod."), "create_pod", OutOfStock),
        (problem(400, "requested GPU is unavailable in that data center"), "create_pod", OutOfStock),
        (problem(400, "gpu.count exceeds maxCount for this GPU type"), "create_pod", Rejected),
        (problem(402, "Your account balance is too low to rent a pod. Please add funds to your account."),
         "create_pod", BalanceTooLow),
        (problem(500, "create pod: Your account balance is too low to rent a pod."), "create_pod", BalanceTooLow),
        (problem(401, "Unauthorized"), "list_pods", AuthFailed),
        (problem(403, "no access to this GPU pool"), "create_pod", GpuTypeDenied),
        (problem(403, "forbidden"), "stop_pod", AuthFailed),
        (problem(404, "pod not found"), "get_pod", NotFound),
        (problem(409, "action stop not valid for status EXITED"), "stop_pod", Conflict),
        (problem(422, "invalid body", errors=["$: additional properties 'bogus' not allowed"]), "create_pod",
         Rejected),
        (problem(429, "Too Many Requests"), "list_pods", RateLimited),
        (problem(503, "upstream unavailable"), "create_pod", Transient),
        (answer(502, "<html><body>502 Bad Gateway</body></html>"), "list_pods", Transient),
    ],
)
def test_rest_answers_map_to_the_error_tree(response, op, error):
    err = classify(response, op)
    assert type(err) is error and err.op == op


def test_rate_limited_carries_retry_after_and_422_names_the_field():
    err = classify(problem(429, "Too Many Requests", **{}), "list_pods")
    assert err.retry_after_s is None
    err = classify(answer(429, {"title": "Too Many Requests", "status": 429, "detail": "minute window"},
                          **{"Retry-After": "12"}), "list_pods")
    assert err.retry_after_s == 12
    err = classify(problem(422, "invalid", errors=["$: additional properties 'bogus' not allowed"]), "create_pod")
    assert "bogus" in str(err)


def test_rest_pod_endpoint_only_while_running_and_error_is_failed():
    raw = {"id": "abc", "name": "harper-x", "status": "RUNNING", "cost": 0.69, "gpu": {"id": "NVIDIA L4"},
           "runtime": {"ports": [{"private": 8000, "public": 40001, "type": "tcp", "ip": "1.2.3.4"},
                                 {"private": 22, "public": 40002, "type": "tcp", "ip": "1.2.3.4"}]}}
    pod = parse_pod(raw)
    assert (pod.endpoint_host, pod.endpoint_port, pod.desired_status, pod.failed) == ("1.2.3.4", 40001, "RUNNING",
                                                                                        False)
    exited = parse_pod({**raw, "status": "EXITED"})  # stale ports on a stopped pod are not an endpoint
    assert exited.endpoint_port is None and exited.desired_status == "EXITED"
    booting = parse_pod({**raw, "status": "PROVISIONING", "runtime": None})
    assert booting.desired_status == "RUNNING" and booting.endpoint_port is None
    assert parse_pod({**raw, "status": "ERROR"}).failed
