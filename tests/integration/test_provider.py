"""One provider contract, two APIs: the REST v2 provider (httpx) and the GraphQL provider (the official SDK) do the
same things against the emulator over real HTTP and end in the same error classes. Every REST answer the REST
provider receives here is checked against RunPod's published OpenAPI document (tests/contracts)."""

import asyncio

import httpx
import pytest

from reconciler.provider import (
    AuthFailed,
    BalanceTooLow,
    GraphQLProvider,
    HostGpuBusy,
    NotFound,
    OutOfStock,
    PodSpec,
    RateLimited,
    RestProvider,
    Transient,
)

from ..emulator.contract import ContractChecker
from .harness import EMULATOR_KEY, GPU_A, GPU_B, until


class CheckedTransport(httpx.AsyncBaseTransport):
    """Real HTTP, with every answer checked against RunPod's contract before the provider sees it."""

    def __init__(self, checker: ContractChecker) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.checker = checker

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        response.request = request
        if "text/event-stream" not in response.headers.get("content-type", ""):
            await response.aread()
        self.checker(response)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def make(api: str, url: str, key: str = EMULATOR_KEY, checker: ContractChecker | None = None, **kw):
    calls: list[tuple[str, str]] = []

    def observe(api_name, op, outcome, s):
        calls.append((op, outcome))

    if api == "rest":
        transport = CheckedTransport(checker or ContractChecker(rate_limited=False))
        prov = RestProvider(key, url, observe=observe, transport=transport, **kw)
    else:
        prov = GraphQLProvider(key, url, observe=observe, **kw)
    prov.calls = calls
    return prov


@pytest.fixture(params=["rest", "graphql"])
async def provider(request, emulator):
    checker = ContractChecker(rate_limited=False)
    prov = make(request.param, emulator.url, checker=checker, call_timeout_s=1.0, backoff_s=0.05)
    prov.checker = checker
    yield prov
    await prov.aclose()


def spec(name: str, gpu: str = GPU_A) -> PodSpec:
    return PodSpec(name=name, gpu_type=gpu, image="harper/gpu-server:test", env={"GPU_SERVER_SECRET": "s3cret"})


async def test_every_operation_round_trips(provider, emu, caplog):
    caplog.set_level("DEBUG")
    offers = await provider.gpu_catalog([GPU_A, "NVIDIA Fake 9000"], "SECURE")
    assert set(offers) == {GPU_A} and offers[GPU_A].price_per_hr == pytest.approx(0.69)
    assert offers[GPU_A].stock in (("HIGH", "MEDIUM", "LOW") if provider.api == "rest" else (None,))
    created = await provider.create_pod(spec("harper-op1"))
    assert created.name == "harper-op1" and created.desired_status == "RUNNING"
    query = {"query": f'query {{ pod(input: {{podId: "{created.id}"}}) {{ env }} }}'}
    pod_env = (await emu.http.post("/graphql", json=query)).json()["data"]["pod"]["env"]
    assert "GPU_SERVER_SECRET=s3cret" in pod_env  # the env reached RunPod...
    pod = await provider.get_pod(created.id)
    assert pod.cost_per_hr == pytest.approx(0.69)
    booted = await until(lambda: _with_endpoint(provider, created.id))
    assert booted.endpoint_host == "127.0.0.1" and booted.endpoint_port and not booted.failed
    assert [p.id for p in await provider.list_pods("harper-")] == [created.id]
    assert await provider.list_pods("other-") == []
    await provider.stop_pod(created.id)
    await provider.stop_pod(created.id)  # a repeat is not an error (REST: 409, observed again: already EXITED)
    stopped = await provider.get_pod(created.id)
    assert stopped.desired_status == "EXITED" and stopped.endpoint_port is None
    await provider.resume_pod(created.id)
    resumed = await until(lambda: _with_endpoint(provider, created.id))
    assert resumed.endpoint_port != booted.endpoint_port  # a fresh public port on every start
    await provider.terminate_pod(created.id)
    assert await provider.get_pod(created.id) is None
    assert await provider.find_by_name("harper-op1") is None
    live = [p for p in await emu.pods() if p["name"] == "harper-op1"]
    assert live[0]["state"] == "TERMINATED"
    assert "s3cret" not in str(provider.calls) and "s3cret" not in repr(provider)
    assert caplog.records and "s3cret" not in caplog.text  # ...and no log line carries it
    assert EMULATOR_KEY not in caplog.text and EMULATOR_KEY not in repr(provider)
    if provider.api == "rest":  # every answer went through the contract check, for every operation used
        templates = {(method, template) for method, template, _ in provider.checker.seen}
        assert templates >= {("GET", "/v2/pods"), ("POST", "/v2/pods"), ("GET", "/v2/pods/{id}"),
                             ("POST", "/v2/pods/{id}/action"), ("DELETE", "/v2/pods/{id}"),
                             ("GET", "/v2/catalog/gpus")}, templates


async def _with_endpoint(provider, pod_id):
    pod = await provider.get_pod(pod_id)
    return pod if pod and pod.endpoint_port else None


async def test_resume_on_a_full_host_is_host_gpu_busy(provider, emu):
    created = await provider.create_pod(spec("harper-busy"))
    await provider.stop_pod(created.id)
    machine = next(p["machine_id"] for p in await emu.pods() if p["id"] == created.id)
    await emu.fill(machine)
    with pytest.raises(HostGpuBusy) as info:
        await provider.resume_pod(created.id)
    assert str(info.value) == "There are not enough free GPUs on the host machine to start this pod."


async def test_empty_stock_is_out_of_stock(provider, emu):
    for machine in await emu.machines():
        if machine["gpu_type_id"] == GPU_B:
            await emu.fill(machine["id"])
    if provider.api == "rest":  # the catalog says so before anyone tries
        assert (await provider.gpu_catalog([GPU_B], "SECURE"))[GPU_B].stock == "NONE"
    with pytest.raises(OutOfStock) as info:
        await provider.create_pod(spec("harper-nostock", GPU_B))
    assert str(info.value).startswith("There are no longer any instances available with the requested specifications.")


@pytest.mark.parametrize(
    ("op", "kind", "call", "error"),
    [
        ("resume_pod", "host_gpu_busy", "resume", HostGpuBusy),
        ("create_pod", "out_of_stock", "create", OutOfStock),
        ("create_pod", "no_resources", "create", OutOfStock),
        ("create_pod", "no_cuda_host", "create", OutOfStock),
        ("create_pod", "low_balance", "create", BalanceTooLow),
        ("stop_pod", "auth", "stop", AuthFailed),
        ("list_pods", "internal", "list", Transient),
        ("list_pods", "gateway", "list", Transient),
        ("list_pods", "rate_limit", "list", RateLimited),
    ],
)
async def test_faults_are_classified_alike_on_both_apis(provider, emu, op, kind, call, error):
    created = await provider.create_pod(spec(f"harper-{kind}".replace("_", "-")))
    if call == "resume":
        await provider.stop_pod(created.id)
    await emu.fault(op=op, kind=kind, count=10)  # more than the retries
    with pytest.raises(error):
        if call == "resume":
            await provider.resume_pod(created.id)
        elif call == "create":
            await provider.create_pod(spec("harper-second"))
        elif call == "stop":
            await provider.stop_pod(created.id)
        else:
            await provider.list_pods("harper-")
    await emu.clear_faults()


async def test_graphql_429_as_recorded_is_transient_and_the_create_did_not_happen(emulator, emu):
    prov = make("graphql", emulator.url, call_timeout_s=1.0, backoff_s=0.05)
    try:
        await emu.fault(op="create_pod", kind="rate_limit_recorded", count=5)
        with pytest.raises(Transient):  # SDK 1.12.0 raises KeyError('data') on the bare {"message"} body
            await prov.create_pod(spec("harper-429"))
        assert not [p for p in await emu.pods() if p["name"] == "harper-429"]
    finally:
        await prov.aclose()


async def test_reads_retry_through_transient_and_rate_limit(provider, emu):
    await provider.create_pod(spec("harper-retry"))
    await emu.fault(op="list_pods", kind="internal", count=1)
    await emu.fault(op="list_pods", kind="rate_limit", count=1)
    assert [p.name for p in await provider.list_pods("harper-")] == ["harper-retry"]
    outcomes = [o for op, o in provider.calls if op == "list_pods"]
    assert outcomes == ["Transient", "RateLimited", "ok"]


async def test_unknown_pod_is_not_found(provider):
    with pytest.raises(NotFound):
        await provider.stop_pod("nosuchpod00000")
    assert await provider.get_pod("nosuchpod00000") is None


async def test_wrong_key_is_auth_failed_and_never_echoed(emulator, provider):
    prov = make(provider.api, emulator.url, key="wrong-key-123", call_timeout_s=2.0)
    try:
        with pytest.raises(AuthFailed) as info:
            await prov.list_pods()
        assert "wrong-key-123" not in str(info.value)
    finally:
        await prov.aclose()


async def test_create_that_times_out_but_happened_is_found_by_name_not_repeated(provider, emu):
    await emu.fault(op="create_pod", kind="timeout", count=1, delay_s=3)
    created = await provider.create_pod(spec("harper-ghost"))  # the call times out after 1 s
    assert created.name == "harper-ghost"
    named = [p for p in await emu.pods() if p["name"] == "harper-ghost"]
    assert len(named) == 1 and named[0]["id"] == created.id
    assert ("create_pod", "Transient") in provider.calls
    await asyncio.sleep(2.5)  # let the held answer drain before the emulator stops


async def test_create_reported_failed_but_applied_is_adopted(provider, emu):
    await emu.fault(op="create_pod", kind="internal", count=1, applied=True)
    created = await provider.create_pod(spec("harper-applied"))
    assert [p["id"] for p in await emu.pods() if p["name"] == "harper-applied"] == [created.id]


async def test_create_that_failed_and_did_not_happen_raises(provider, emu):
    await emu.fault(op="create_pod", kind="internal", count=1)
    with pytest.raises(Transient):
        await provider.create_pod(spec("harper-nothing"))
    assert not [p for p in await emu.pods() if p["name"] == "harper-nothing"]


async def test_a_crashed_container_is_failed_with_its_log(provider, emu):
    created = await provider.create_pod(spec("harper-crash"))
    await until(lambda: _with_endpoint(provider, created.id))
    await emu.crash(created.id, "gpu_server: RuntimeError: CUDA driver version is insufficient")
    pod = await provider.get_pod(created.id)
    if provider.api == "rest":
        assert pod.failed and pod.status == "ERROR" and pod.endpoint_port is None
        lines = await provider.pod_logs(created.id, 20)
        assert any("CUDA driver version is insufficient" in line for line in lines), lines
    else:  # GraphQL cannot tell: RUNNING without a runtime, no logs
        assert not pod.failed and pod.endpoint_port is None
        assert await provider.pod_logs(created.id, 20) == []


async def test_billing_matches_the_emulators_ledger(provider, emu):
    created = await provider.create_pod(spec("harper-bill"))
    await asyncio.sleep(1.0)
    await provider.terminate_pod(created.id)  # nothing accrues any more: both sides are final
    billed = await provider.billing(0.0)
    if provider.api == "graphql":
        assert billed is None  # GraphQL has no billing records
        return
    bill = await emu.bill()
    mine = {b.runpod_id: b for b in billed}[created.id]
    expected = bill["by_pod"][created.id]
    assert mine.gpu_usd == pytest.approx(expected["gpu_usd"], rel=1e-6)
    assert mine.storage_usd == pytest.approx(expected["storage_usd"], rel=1e-6)


async def test_values_that_would_break_the_graphql_query_are_refused(emulator):
    prov = make("graphql", emulator.url)
    try:
        bad = PodSpec(name='harper-x", imageName: "evil', gpu_type=GPU_A, image="img")
        with pytest.raises(Exception, match="quotes"):
            await prov.create_pod(bad)
    finally:
        await prov.aclose()


async def test_rest_429_waits_for_retry_after_and_the_budget_holds_calls_back(emulator, emu):
    prov = make("rest", emulator.url, checker=ContractChecker(rate_limited=True))
    try:
        await emu.rate_limit("3/minute")
        await prov.list_pods()
        assert prov.budget.allowance() == 0 and prov.budget.as_dict()["minute"]["remaining"] == 2  # reserve 2
        await prov.list_pods()
        await prov.list_pods()
        with pytest.raises(RateLimited) as info:  # the window is spent: not even sent
            await prov.list_pods()
        assert info.value.retry_after_s > 30
        requests = (await emu.http.get("/_admin/requests")).json()
        assert requests["by_api"]["rest"]["total"] == 3  # the 4th call never left the controller
        assert ("list_pods", "Throttled") in prov.calls
    finally:
        await prov.aclose()


@pytest.mark.parametrize("api", ["rest", "graphql"])
async def test_hundred_concurrent_creates_through_the_provider(api):
    from runpod_emulator.server import EmulatorServer
    from runpod_emulator.settings import EmulatorSettings

    server = EmulatorServer(EmulatorSettings(port=0, api_key=EMULATOR_KEY, boot_seconds=60, seed=11,
                                             machines_per_type=4, gpus_per_machine=16, rate_limit="off"))
    await server.start()
    prov = make(api, server.url, call_timeout_s=30.0)
    try:
        created = await asyncio.gather(*(prov.create_pod(spec(f"harper-c{i}", GPU_A if i % 2 else GPU_B))
                                         for i in range(100)))
        assert len({c.id for c in created}) == 100
        listed = await prov.list_pods("harper-c")
        assert sorted(p.name for p in listed) == sorted(f"harper-c{i}" for i in range(100))
    finally:
        await prov.aclose()
        await server.stop()
