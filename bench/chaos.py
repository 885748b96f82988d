"""Chaos: many companion sessions against the real controller while it is SIGKILLed at random moments, RunPod
fails a fifth of its calls on both APIs and other tenants take GPUs.

    .venv/bin/python bench/chaos.py [--kills 120] [--seed 1] [--keep DIR]

The controller runs as ``python -m reconciler run`` (REST v2; a quarter of the restarts on GraphQL through the SDK,
over the same database) against the RunPod emulator in this process. Sessions arrive at random (1/s), take a
lease with an Idempotency-Key they retry through crashes, hold it with heartbeats for 1-6 s and release it (or,
one in five, vanish). RunPod fails about 20% of calls (internal errors, some carried out anyway; rate limits,
GraphQL's as recorded; timeouts that carry the call out), answers 30% of resumes with host-GPU-busy, keeps the
first GPU type out of stock, and other tenants take and give back GPUs. The daemon is SIGKILLed mid-boot or at
work, and restarted at once. ``tests/integration/chaos.py`` holds the machinery (``test_chaos.py`` runs 20 kills in
``make test``).

Checked at every kill (the database and RunPod as the dead daemon left them) and at the end: no two leases ever
held one slot; every lease ended released, expired or failed with a reason; every ``harper-`` pod at RunPod has
its intent row, and once settled the controller knows each one; after winding down to nothing no pod is left;
no answer was a 5xx; no secret (RunPod key, API tokens, lease tokens, pod secrets) in the daemon's output, the
events, the metrics or any answer. Printed: kills survived, leases served, wait p50/p95, RunPod calls and faults,
pods leaked, the cost estimate against the emulator's bill (and why they differ), secrets found.
Exit status 1 if an invariant was broken.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.chaos import ChaosConfig, ChaosRun


async def _run(run: ChaosRun):
    """The run, cancelled (its daemon stopped, the emulator closed) on SIGINT or SIGTERM."""
    task = asyncio.current_task()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    return await run.run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=120, help="SIGKILLs of the daemon (default 120)")
    parser.add_argument("--seed", type=int, default=1, help="seed of kills, sessions, faults and tenants")
    parser.add_argument("--arrivals-per-s", type=float, default=1.0, help="sessions arriving per second")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="share of RunPod calls that fail")
    parser.add_argument("--graphql-share", type=float, default=0.25, help="share of restarts on GraphQL")
    parser.add_argument("--keep", type=Path, help="keep the database and the daemon's log in this directory")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # the runpod SDK configures the root logger at import (INFO)
    config = ChaosConfig(kills=args.kills, seed=args.seed, arrivals_per_s=args.arrivals_per_s,
                         fault_rate=args.fault_rate, graphql_share=args.graphql_share)
    started = time.monotonic()

    def progress(line: str) -> None:
        print(f"[{time.monotonic() - started:6.0f}s] {line}", flush=True)

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; {args.kills} kills, seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        figures = asyncio.run(_run(ChaosRun(config, workdir, progress)))
    print("\n== chaos: figures ==")
    for line in figures.lines():
        print(line)
    for violation in figures.violations[:50]:
        print("VIOLATION:", violation)
    for name in figures.secrets_found:
        print("SECRET FOUND:", name)
    broken = figures.violations or figures.secrets_found or figures.pods_unknown or figures.pods_leaked
    print("all invariants held" if not broken else "INVARIANTS BROKEN")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
