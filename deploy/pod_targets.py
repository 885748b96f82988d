"""Prometheus sidecar: writes the gpu_server pods the controller knows as a file_sd target file.

Why it exists: RunPod maps a pod's port to a new public port every time the pod resumes, so Prometheus
cannot scrape the pods from a static list. The controller knows the current endpoints (``GET /v1/pods``,
admin token, Ready pods only); this polls it and rewrites the target file when the set changes (atomically,
so Prometheus never reads half a file). Prometheus watches the file through ``file_sd_configs`` (see
dashboards/prometheus/scrape.yml). Stdlib only: it runs in the controller image or any Python 3.11.

    HARPER_ADMIN_TOKEN=... python deploy/pod_targets.py --controller http://controller:8080 \\
        --out /data/gpu-pods.json

While the controller cannot be reached the last file is kept: pods go on being scraped, and one that went
away shows as down until the next successful poll removes it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger("pod_targets")

# Labels each target carries into every gpu_server series (the dashboards and alerts may group by them).
TARGET_LABELS = ("pod", "gpu_type")


def target_groups(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """file_sd target groups for the pods with endpoints (the controller gives them for Ready pods only)."""
    groups = []
    for pod in pods:
        stt = (pod.get("endpoints") or {}).get("stt")
        if not stt or not pod.get("id"):
            continue
        url = urllib.parse.urlsplit(stt)
        if not url.hostname or not url.port:
            continue
        # `pod` is the controller's pod id: unlike the address (`instance`), it survives a stop and resume, so
        # dashboards and alerts keyed on it follow one pod across its addresses. It is also the id the admin
        # API takes (GET /v1/pods/{id}).
        labels = {"pod": str(pod["id"]), "gpu_type": str(pod.get("gpu_type") or "")}
        groups.append({"targets": [f"{url.hostname}:{url.port}"], "labels": labels})
    return sorted(groups, key=lambda g: g["labels"]["pod"])


def render(groups: list[dict[str, Any]]) -> str:
    return json.dumps(groups, indent=2, sort_keys=True) + "\n"


class FetchError(Exception):
    """The controller could not be asked for its pods; the message says why."""


def fetch_pods(controller: str, token: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        controller.rstrip("/") + "/v1/pods", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = json.load(response)
    except urllib.error.HTTPError as e:
        hint = " (is HARPER_ADMIN_TOKEN the controller's admin token?)" if e.code in (401, 403) else ""
        raise FetchError(f"GET /v1/pods answered {e.code}{hint}") from e
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"cannot reach the controller at {controller}: {e}") from e
    except ValueError as e:
        raise FetchError(f"GET /v1/pods did not answer JSON: {e}") from e
    return list(body.get("pods", []))


def write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # Prometheus runs as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def poll_once(controller: str, token: str, out: Path) -> int:
    """One poll; returns the number of targets written (or kept)."""
    groups = target_groups(fetch_pods(controller, token))
    if write_if_changed(out, render(groups)):
        log.info("%d gpu_server target(s) written to %s", len(groups), out)
    return len(groups)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the controller's Ready pods as Prometheus file_sd targets.")
    parser.add_argument("--controller", default="http://controller:8080", help="controller base URL")
    parser.add_argument("--out", type=Path, default=Path("/data/gpu-pods.json"), help="target file to write")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between polls")
    parser.add_argument("--once", action="store_true", help="poll once and exit (1 if the controller failed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = os.environ.get("HARPER_ADMIN_TOKEN", "")
    if not token:
        print("pod_targets: set HARPER_ADMIN_TOKEN to the controller's admin token", file=sys.stderr)
        return 2
    while True:
        try:
            poll_once(args.controller, token, args.out)
        except FetchError as e:
            log.warning("%s; keeping the previous targets", e)
            if args.once:
                return 1
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
