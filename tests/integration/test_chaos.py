"""Crash safety under chaos, short: 20 SIGKILLs of the real daemon at random moments (mid-boot or at work) while
sessions come and go and RunPod fails a fifth of its calls on both APIs (``chaos.py`` says how). ``bench/chaos.py``
runs the long one and prints its figures.

Afterwards: no two leases ever held one slot, every lease ended released, expired or failed with a reason, the
workload was served through the crashes, every ``harper-`` pod at RunPod is known to the controller once it
settles and none is left after it winds down, no answer was a 5xx, the estimated cost is the bill less what the
kills hid from it, and no secret appears in anything the run produced.
"""

from __future__ import annotations

import pytest

from .chaos import ChaosConfig, ChaosRun

pytestmark = pytest.mark.timeout(900)
KILLS = 20


async def test_sigkills_and_faults_lose_no_lease_and_leak_no_pod(tmp_path):
    figures = await ChaosRun(ChaosConfig(kills=KILLS, seed=1234, at_work_s=(0.3, 2.5)), tmp_path, print).run()
    print("\n".join(figures.lines()))
    assert figures.kills == KILLS
    assert figures.violations == [], figures.violations[:20]
    leases = sum(figures.leases.values())
    assert leases >= KILLS and figures.leases["served"] >= KILLS // 2, figures.leases
    assert set(figures.leases) <= {"served", "served, then expired", "served, then failed", "released while waiting",
                                   "expired before a pod", "failed before a pod"}, figures.leases
    assert figures.expired_heartbeating == 0  # a lease expires only when its client stops: kills cost none
    assert not [why for why in figures.reasons if "timed out waiting" in why], figures.reasons  # none stranded
    assert figures.pods_unknown == 0 and figures.pods_leaked == 0
    assert figures.faults_fired["internal"] and figures.faults_fired["timeout"], figures.faults_fired
    # What the controller read from RunPod's billing records is the bill. Its own estimate cannot see the time the
    # daemon was down or starting (nor each killed daemon's last moments since its last pass): it falls short of
    # the bill, by about what RunPod billed in those windows, and never exceeds it.
    assert figures.read_billed_usd == pytest.approx(figures.billed_usd, rel=0.01)
    assert 0 < figures.estimate_usd <= figures.billed_usd * 1.01
    assert -0.5 < figures.accounted_gap() < 0.02, figures.lines()
    assert figures.secrets_found == [] and figures.scanned_bytes > 100_000
