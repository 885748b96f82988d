"""The RunPod provider through the official SDK against the emulator over HTTP, and its error classes."""

import asyncio

import pytest

from reconciler.provider import (
    AuthFailed,
    HostGpuBusy,
    NotFound,
    OutOfStock,
    PodSpec,
    RateLimited,
    RunPodProvider,
    Transient,
)

from .harness import EMULATOR_KEY, GPU_A, GPU_B, until


@pytest.fixture
async def provider(emulator):
    calls: list[tuple[str, str]] = []
    prov = RunPodProvider(EMULATOR_KEY, emulator.url, call_timeout_s=1.0, backoff_s=0.05,
                          observe=lambda api, op, outcome, s: calls.append((op, outcome)))
    prov.calls = calls
    yield prov
    prov.close()


def spec(name: str, gpu: str = GPU_A) -> PodSpec:
    return PodSpec(name=name, gpu_type=gpu, image="harper/gpu-server:test", env={"GPU_SERVER_SECRET": "s3cret"})


async def test_every_operation_round_trips(provider, emu, caplog):
    caplog.set_level("DEBUG")
    assert await provider.gpu_price(GPU_A) == pytest.approx(0.69)
    created = await provider.create_pod(spec("harper-op1"))
    assert created.name == "harper-op1" and created.desired_status == "RUNNING"
    query = {"query": f'query {{ pod(input: {{podId: "{created.id}"}}) {{ env }} }}'}
    pod_env = (await emu.http.post("/graphql", json=query)).json()["data"]["pod"]["env"]
    assert "GPU_SERVER_SECRET=s3cret" in pod_env  # the env reached RunPod...
    pod = await provider.get_pod(created.id)
    assert pod.cost_per_hr == pytest.approx(0.69) and pod.machine_id
    booted = await until(lambda: _with_endpoint(provider, created.id))
    assert booted.endpoint_host == "127.0.0.1" and booted.endpoint_port
    assert [p.id for p in await provider.list_pods("harper-")] == [created.id]
    assert await provider.list_pods("other-") == []
    await provider.stop_pod(created.id)
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
    env = (await emu.pods())[0]
    assert "s3cret" not in str(provider.calls) and "s3cret" not in repr(provider)
    assert env["name"] == "harper-op1"
    assert caplog.records and "s3cret" not in caplog.text  # ...and no log line carries it
    assert EMULATOR_KEY not in caplog.text  # nor the API key (the SDK puts it in the URL it requests)


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
    with pytest.raises(OutOfStock) as info:
        await provider.create_pod(spec("harper-nostock", GPU_B))
    assert str(info.value) == (
        "There are no longer any instances available with the requested specifications. Please refresh and try again."
    )


@pytest.mark.parametrize(
    ("op", "kind", "call", "error"),
    [
        ("podResume", "host_gpu_busy", "resume", HostGpuBusy),
        ("podFindAndDeployOnDemand", "out_of_stock", "create", OutOfStock),
        ("podStop", "auth", "stop", AuthFailed),
        ("myself", "internal", "list", Transient),
        ("myself", "rate_limit", "list", RateLimited),
    ],
)
async def test_faults_are_classified(provider, emu, op, kind, call, error):
    created = await provider.create_pod(spec(f"harper-{kind}"))
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


async def test_reads_retry_through_transient_and_rate_limit(provider, emu):
    await provider.create_pod(spec("harper-retry"))
    await emu.fault(op="myself", kind="internal", count=1)
    await emu.fault(op="myself", kind="rate_limit", count=1)
    assert [p.name for p in await provider.list_pods("harper-")] == ["harper-retry"]
    outcomes = [o for op, o in provider.calls if op == "list_pods"]
    assert outcomes == ["Transient", "RateLimited", "ok"]


async def test_unknown_pod_is_not_found(provider):
    with pytest.raises(NotFound):
        await provider.stop_pod("nosuchpod00000")
    assert await provider.get_pod("nosuchpod00000") is None


async def test_wrong_key_is_auth_failed_and_never_echoed(emulator):
    prov = RunPodProvider("wrong-key-123", emulator.url, call_timeout_s=2.0)
    try:
        with pytest.raises(AuthFailed) as info:
            await prov.list_pods()
        assert "wrong-key-123" not in str(info.value)
    finally:
        prov.close()


async def test_create_that_times_out_but_happened_is_found_by_name_not_repeated(provider, emu):
    await emu.fault(op="podFindAndDeployOnDemand", kind="timeout", count=1, delay_s=3)
    created = await provider.create_pod(spec("harper-ghost"))  # the call times out after 1 s
    assert created.name == "harper-ghost"
    named = [p for p in await emu.pods() if p["name"] == "harper-ghost"]
    assert len(named) == 1 and named[0]["id"] == created.id
    assert ("create_pod", "Transient") in provider.calls
    await asyncio.sleep(2.5)  # let the held answer drain before the emulator stops


async def test_create_reported_failed_but_applied_is_adopted(provider, emu):
    await emu.fault(op="podFindAndDeployOnDemand", kind="internal", count=1, applied=True)
    created = await provider.create_pod(spec("harper-applied"))
    assert [p["id"] for p in await emu.pods() if p["name"] == "harper-applied"] == [created.id]


async def test_create_that_failed_and_did_not_happen_raises(provider, emu):
    await emu.fault(op="podFindAndDeployOnDemand", kind="internal", count=1)
    with pytest.raises(Transient):
        await provider.create_pod(spec("harper-nothing"))
    assert not [p for p in await emu.pods() if p["name"] == "harper-nothing"]


async def test_values_that_would_break_the_query_are_refused(provider):
    bad = PodSpec(name='harper-x", imageName: "evil', gpu_type=GPU_A, image="img")
    with pytest.raises(Exception, match="quotes"):
        await provider.create_pod(bad)


async def test_hundred_concurrent_creates_through_the_provider():
    from runpod_emulator.server import EmulatorServer
    from runpod_emulator.settings import EmulatorSettings

    server = EmulatorServer(EmulatorSettings(port=0, api_key=EMULATOR_KEY, boot_seconds=60, seed=11,
                                             machines_per_type=4, gpus_per_machine=16))
    await server.start()
    prov = RunPodProvider(EMULATOR_KEY, server.url, call_timeout_s=30.0, max_threads=32)
    try:
        created = await asyncio.gather(*(prov.create_pod(spec(f"harper-c{i}", GPU_A if i % 2 else GPU_B))
                                         for i in range(100)))
        assert len({c.id for c in created}) == 100
        listed = await prov.list_pods("harper-c")
        assert sorted(p.name for p in listed) == sorted(f"harper-c{i}" for i in range(100))
    finally:
        prov.close()
        await server.stop()
