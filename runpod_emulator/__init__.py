"""runpod_emulator: a faithful local stand-in for RunPod's pod APIs, REST v2 and GraphQL, over one fleet.

It speaks RunPod's REST API v2 (``/v2/...``, as published in RunPod's OpenAPI document) and the GraphQL API
of ``https://api.runpod.io/graphql`` as the official ``runpod`` SDK (1.12.0) and ``$variables`` clients use
it, both over the same machines, pods, ledger, fault book and runner: a pod created through one API is seen,
stopped and billed through the other. It models machines with GPU slots, other tenants, boot delays and
per-second billing, runs something real behind each pod's port, and injects RunPod's failures on demand.

Use from another test suite or the controller's local mode::

    from runpod_emulator.server import EmulatorServer
    from runpod_emulator.settings import EmulatorSettings
    from runpod_emulator.clock import FakeClock            # optional: tests that move time by hand

    async with EmulatorServer(EmulatorSettings(port=0, boot_seconds=0, seed=1, rate_limit="off")) as emu:
        os.environ["RUNPOD_API_BASE_URL"] = emu.url        # the SDK appends /graphql itself
        runpod.api_key = "any-non-empty-key"                # any key, unless api_key= is set
        httpx.get(f"{emu.url}/v2/pods", headers={"Authorization": "Bearer any-non-empty-key"})

    with EmulatorServer(settings).start_in_thread() as emu:  # synchronous code: uvicorn on its own thread
        ...

- ``server.EmulatorServer(settings=None, clock=None)``: ``async start()/stop()``, ``async with``,
  ``start_in_thread()/stop_in_thread()``, ``with``; ``.url``, ``.port`` (the bound one, also for port 0),
  ``.emulator`` (the live ``emulator.Emulator``, same event loop only).
- ``app.create_app(settings=None, clock=None)``: the FastAPI app; its lifespan owns the runner and tasks.
- ``settings.EmulatorSettings``: every option, also from ``EMULATOR_*`` environment variables.
- ``clock.FakeClock``: ``advance(seconds)``; pass it as ``clock=`` to check delays and dollars exactly.
- CLI: ``python -m runpod_emulator serve --port P [--api-key K] [--runner simulated|process] ...``.

REST v2 (``/v2/pods``, ``/v2/pods/{id}``, ``/v2/pods/{id}/action``, ``/v2/pods/{id}/logs``,
``/v2/catalog/gpus[/{id}]``, ``/v2/billing/pods``): see ``rest_api``; rate limits: ``ratelimit``.
GraphQL (``POST /graphql``): ``podFindAndDeployOnDemand``, ``podResume``, ``podStop``, ``podTerminate``,
``myself { id pubKey networkVolumes pods }``, ``pod(input: {podId})``, ``gpuTypes(input: {id | ids})``; see
``graphql_api``. One API key for both (REST: ``Authorization: Bearer K``; GraphQL also ``?api_key=K``).
The pod proxy (``/proxy/<podId>-<port>/``): see ``proxy``. Admin API (``/_admin/...``: faults, other tenants,
the bill, request counts, rate limits, crashing a pod): see ``admin``; fault kinds and operations: ``faults``.

Layers: ``fleet`` (pure domain: machines, pods, one transition table), ``spec``, ``errors``, ``ledger`` and
``billing`` (pure billing), ``faults`` and ``operations`` (which calls fail, what they are called),
``ratelimit``, ``podlogs``, ``stock``, ``tenants``, ``catalogue`` → ``emulator`` (keeps them and a runner in
step, with the clock) → ``schema``/``graphql_api``, ``rest_api`` (with ``rest_views``, ``rest_params``,
``rest_validation``, ``rest_logs``, ``problems``), ``proxy``, ``admin`` (HTTP) → ``app``/``server``/``cli``.
Runners: ``runner`` (the interface), ``simulated``, ``process``.
"""
