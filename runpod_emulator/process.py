"""The process pod runner: one real OS process per running pod, e.g. a local gpu_server.

The process gets the environment a RunPod container would see: the pod's own env plus
``RUNPOD_POD_ID``, ``RUNPOD_PUBLIC_IP`` and ``RUNPOD_TCP_PORT_<private>`` for each tcp port, and
``GPU_SERVER_HOST``/``GPU_SERVER_PORT`` so gpu_server listens on the pod's public port on loopback. It also
inherits the emulator's own environment (PATH, the virtualenv), which a container would not, because a local
process needs it to start at all.

Each process leads its own process group (``start_new_session``), so stopping a pod signals everything it
spawned: SIGTERM, then SIGKILL after the grace period. Output goes to ``<log_dir>/<pod_id>.log`` (appended
across restarts) so no pipe can fill up. Exits are awaited through a pidfd on the event loop rather than a
thread per child, so hundreds of pods stay cheap. A process that exits without being stopped (a server that
failed to start, a crash) is reported through ``take_exits``, and what remains of its group is killed;
``read_output`` hands out the log file's new complete lines for REST's logs endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from runpod_emulator.runner import PodLaunch

log = logging.getLogger(__name__)


async def wait_exit(proc: subprocess.Popen[bytes]) -> None:
    """Wait until ``proc`` exits, then reap it. Bound it with ``asyncio.timeout``."""
    if proc.poll() is not None:
        return
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # no pidfd on this kernel: poll instead
        while proc.poll() is None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    proc.wait()  # it has exited: this only reaps it


PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel send ``sig`` to the child when the process that started it dies,
    SIGKILL included (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere it does nothing). A child in its own session
    is out of reach of the terminal's signals, so without this it outlives a killed parent. Call it on the
    thread that lives as long as the parent (the event loop's): the kernel ties the signal to that thread."""
    parent = os.getpid()

    def preexec() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before the prctl: nobody would send the signal
            os._exit(1)

    return preexec


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class ProcessRunner:
    kind = "process"

    def __init__(
        self, command: Sequence[str], *, log_dir: Path, stop_grace_s: float = 5.0, host: str = "127.0.0.1"
    ) -> None:
        if not command:
            raise ValueError("the process runner needs a command")
        self._command = list(command)
        self.log_dir = log_dir
        self._grace = stop_grace_s
        self._host = host
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._reapers: set[asyncio.Task[None]] = set()
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._exits: list[tuple[str, int | None]] = []
        self._read_at: dict[str, int] = {}  # log file offset up to the last complete line handed out

    def _environment(self, launch: PodLaunch) -> dict[str, str]:
        env = {**os.environ, **dict(launch.env)}
        env["RUNPOD_POD_ID"] = launch.pod_id
        env["RUNPOD_PUBLIC_IP"] = launch.public_ip
        for spec in launch.ports:
            if spec.kind == "tcp":
                env[f"RUNPOD_TCP_PORT_{spec.private}"] = str(launch.public_ports[spec.private])
        if launch.service_public_port is not None:
            env["GPU_SERVER_HOST"] = self._host
            env["GPU_SERVER_PORT"] = str(launch.service_public_port)
        return env

    def log_path(self, pod_id: str) -> Path:
        return self.log_dir / f"{pod_id}.log"

    def _spawn(self, launch: PodLaunch) -> subprocess.Popen[bytes]:
        # Popen rather than asyncio's subprocess API: asyncio on 3.11 watches each child with a thread, and
        # exits are awaited through a pidfd instead (``wait_exit``). Spawning itself takes milliseconds.
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(launch.pod_id), "ab") as out:
            return subprocess.Popen(
                self._command,
                env=self._environment(launch),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # a SIGKILLed emulator (or controller) takes its pods with it
            )

    async def start(self, launch: PodLaunch) -> None:
        proc = self._spawn(launch)
        self._procs[launch.pod_id] = proc
        watcher = asyncio.create_task(self._watch(launch.pod_id, proc), name=f"watch-pod-{launch.pod_id}")
        self._watchers[launch.pod_id] = watcher
        log.info("pod %s: started process %d (%s)", launch.pod_id, proc.pid, self._command[0])

    async def _watch(self, pod_id: str, proc: subprocess.Popen[bytes]) -> None:
        """Notice a process that ends by itself; a stop cancels this first, so what ends here was not asked to."""
        await wait_exit(proc)
        if self._procs.get(pod_id) is proc:
            del self._procs[pod_id]
            self._watchers.pop(pod_id, None)
            _signal_group(proc, signal.SIGKILL)  # whatever it spawned must not outlive the container
            self._exits.append((pod_id, proc.returncode))
            log.warning("pod %s: process %d exited by itself with %s", pod_id, proc.pid, proc.returncode)

    def take_exits(self) -> list[tuple[str, int | None]]:
        exits, self._exits = self._exits, []
        return exits

    def read_output(self, pod_id: str) -> list[str]:
        path = self.log_path(pod_id)
        offset = self._read_at.get(pod_id, 0)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        self._read_at[pod_id] = offset + complete
        return data[:complete].decode("utf-8", "replace").splitlines()

    async def stop(self, pod_id: str) -> None:
        watcher = self._watchers.pop(pod_id, None)
        if watcher is not None:
            watcher.cancel()
        proc = self._procs.pop(pod_id, None)
        if proc is None:
            return
        _signal_group(proc, signal.SIGTERM)
        task = asyncio.create_task(self._reap(pod_id, proc), name=f"reap-pod-{pod_id}")
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    async def _reap(self, pod_id: str, proc: subprocess.Popen[bytes]) -> None:
        try:
            async with asyncio.timeout(self._grace):
                await wait_exit(proc)
        except TimeoutError:
            log.warning("pod %s: process %d ignored SIGTERM for %.1fs, killing it", pod_id, proc.pid, self._grace)
        finally:
            # Whatever the leader did, nothing it spawned may outlive the pod.
            _signal_group(proc, signal.SIGKILL)
            proc.wait()  # after SIGKILL this returns within milliseconds
        log.info("pod %s: process %d ended with %s", pod_id, proc.pid, proc.returncode)

    def describe(self, pod_id: str) -> dict[str, object]:
        proc = self._procs.get(pod_id)
        if proc is None:
            return {"serving": False, "ready": None}
        returncode = proc.poll()
        return {
            "serving": returncode is None,
            "ready": None,
            "pid": proc.pid,
            "returncode": returncode,
            "log": str(self.log_path(pod_id)),
        }

    async def aclose(self) -> None:
        for pod_id in list(self._procs):
            await self.stop(pod_id)
        watchers = list(self._watchers.values())
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*self._reapers, *watchers, return_exceptions=True)
