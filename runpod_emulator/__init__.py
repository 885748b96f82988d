"""runpod_emulator: a faithful local stand-in for RunPod's pod GraphQL API.

It speaks the wire protocol of ``https://api.runpod.io/graphql`` as the official ``runpod`` SDK (1.12.0) and
``$variables`` clients use it, models machines with GPU slots, other tenants, boot delays and per-second
billing, runs something real behind each pod's port, and injects RunPod's failures on demand.

Use from another test suite or the controller's local mode::

    from runpod_emulator.server import EmulatorServer
    from runpod_emulator.settings import EmulatorSettings
    from runpod_emulator.clock import FakeClock            # optional: tests that move time by hand

    async with EmulatorServer(EmulatorSettings(port=0, boot_seconds=0, seed=1)) as emu:
        os.environ["RUNPOD_API_BASE_URL"] = emu.url        # the SDK appends /graphql itself
        runpod.api_key = "any-non-empty-key"                # any key, unless api_key= is set
        ...                                                 # call the SDK in a thread: it is synchronous

    with EmulatorServer(settings).start_in_thread() as emu:  # synchronous code: uvicorn on its own thread
        ...

- ``server.EmulatorServer(settings=None, clock=None)``: ``async start()/stop()``, ``async with``,
  ``start_in_thread()/stop_in_thread()``, ``with``; ``.url``, ``.port`` (the bound one, also for port 0),
  ``.emulator`` (the live ``emulator.Emulator``, same event loop only).
- ``app.create_app(settings=None, clock=None)``: the FastAPI app; its lifespan owns the runner and tasks.
- ``settings.EmulatorSettings``: every option, also from ``EMULATOR_*`` environment variables.
- ``clock.FakeClock``: ``advance(seconds)``; pass it as ``clock=`` to check delays and dollars exactly.
- CLI: ``python -m runpod_emulator serve --port P [--api-key K] [--runner simulated|process] ...``.

GraphQL (``POST /graphql``): ``podFindAndDeployOnDemand``, ``podResume``, ``podStop``, ``podTerminate``,
``myself { id pubKey networkVolumes pods }``, ``pod(input: {podId})``, ``gpuTypes(input: {id | ids})``.
Auth by ``Authorization: Bearer K`` or ``?api_key=K``. Error conventions: see ``graphql_api``.
Admin API (``/_admin/...``, faults, other tenants, the bill): see ``admin``; fault fields: ``faults.FaultRule``.

Layers: ``fleet`` (pure domain: machines, pods, one transition table), ``ledger`` (pure billing), ``faults``
(which calls fail), ``catalogue`` (GPU types and prices) → ``emulator`` (keeps them and a runner in step,
with the clock) → ``schema``/``graphql_api``/``admin`` (HTTP) → ``app``/``server``/``cli``. Runners:
``runner`` (the interface), ``simulated``, ``process``.
"""
