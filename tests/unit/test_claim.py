"""The controller lock's decisions: when a claim is stale, when its holder is provably gone, what a refused
controller is told."""

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.claim import Holder, holder_gone, may_take_over, process_key, refusal

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="process liveness needs /proc")

NOW = 1_780_000_000.0
HOLDER = Holder(token="t", host="ctl-1", pid=4242, process="", api_url="http://ctl-1:8080", since=NOW - 3600,
                renewed_at=NOW - 4, stale_after_s=30.0)


def test_a_claim_is_stale_only_after_its_holders_period_without_renewal():
    assert not HOLDER.is_stale(NOW)
    assert not HOLDER.is_stale(HOLDER.renewed_at + 30.0)
    assert HOLDER.is_stale(HOLDER.renewed_at + 30.1)
    assert not may_take_over(HOLDER, NOW, holder_gone=False)
    assert may_take_over(HOLDER, NOW, holder_gone=True)
    assert may_take_over(HOLDER, NOW + 27, holder_gone=False)


def test_the_refusal_names_the_holder_and_what_to_do():
    assert refusal(HOLDER, NOW) == (
        "another controller holds this database: host ctl-1 pid 4242 (API http://ctl-1:8080) since "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(NOW - 3600))} UTC, last renewed 4 s ago; "
        "stop it or wait 30 s after it died"
    )
    assert "(API" not in refusal(replace(HOLDER, api_url=""), NOW)


def test_a_live_process_is_never_gone_and_an_unknown_one_never_provably_so():
    me = replace(HOLDER, pid=os.getpid(), process=process_key(os.getpid()))
    assert me.process and not holder_gone(me)
    assert not holder_gone(replace(me, process=""))  # another OS, or a record without the key
    other_machine = "0000-boot/pid:[1]/" + me.process.rsplit("/", 1)[1]
    assert not holder_gone(replace(me, pid=999_999_999, process=other_machine))  # its pid means nothing here


def test_a_process_that_ended_or_whose_pid_was_reused_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    held = replace(HOLDER, pid=child.pid, process=process_key(child.pid))
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":  # not reaped yet
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert holder_gone(held)  # a zombie is gone
    child.wait()
    assert holder_gone(held)  # and so is a reaped one
    here = process_key(os.getpid()).rsplit("/", 1)[0]
    assert holder_gone(replace(HOLDER, pid=os.getpid(), process=f"{here}/1"))  # its pid now runs another process
