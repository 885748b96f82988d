"""The docker-compose example, read without Docker: its files, settings, secrets and wiring.

What compose would mount is laid out in a temporary directory at the containers' paths, so promtool can
check the Prometheus config the container would load (and find the alert rules where it would). The
pod-targets sidecar (deploy/pod_targets.py) is run against a stand-in for the controller's GET /v1/pods.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from .repo import DEPLOY, GRAFANA, PROMETHEUS, pod_targets
from .test_dashboards import promtool

COMPOSE = DEPLOY / "docker-compose.yml"
SECRET_NAME = re.compile(r"KEY|TOKEN|PASSWORD|SECRET")
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of the service's bind mounts."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((DEPLOY / source).resolve(), target))
    return mounts


def named_mounts(service: dict[str, Any]) -> dict[str, str]:
    """volume name -> container path."""
    return {
        volume.split(":")[0]: volume.split(":")[1]
        for volume in service.get("volumes", [])
        if not volume.startswith((".", "/"))
    }


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_services_and_the_files_they_use_exist(services) -> None:
    assert {"controller", "pod-targets", "prometheus", "grafana"} <= set(services)
    build = services["controller"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    declared = set(yaml.safe_load(COMPOSE.read_text()).get("volumes", {}))
    problems = []
    for name, service in services.items():
        problems += [f"{name}: {src} does not exist" for src, _ in bind_mounts(service) if not src.exists()]
        problems += [f"{name}: volume {vol} is not declared" for vol in named_mounts(service) if vol not in declared]
    assert problems == []


def test_compose_environment_names_are_real_controller_settings(services) -> None:
    from reconciler.settings import Settings

    settings = {"HARPER_" + name.upper() for name in Settings.model_fields}
    example = dict(
        line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    used = {key for service in services.values() for key in environment(service)}
    used |= set(INTERPOLATION.findall(COMPOSE.read_text())) | set(example)
    assert sorted(k for k in used if k.startswith("HARPER_") and k not in settings) == []
    assert sorted(set(INTERPOLATION.findall(COMPOSE.read_text())) - set(example)) == [], \
        "every variable compose reads from .env is documented in .env.example"


def test_compose_holds_no_secrets(services) -> None:
    inline = [
        f"{name}: {key}"
        for name, service in services.items()
        for key, value in environment(service).items()
        if SECRET_NAME.search(key) and not INTERPOLATION.fullmatch(value)
    ]
    assert inline == []
    assert all(not value for key, value in (
        line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ) if SECRET_NAME.search(key))
    assert ".env" in (DEPLOY / ".gitignore").read_text().split(), "deploy/.env must be git-ignored"


def lay_out(mounts: list[tuple[Path, str]], root: Path) -> None:
    for source, target in mounts:
        dest = root / target.lstrip("/")
        if source.is_dir():
            shutil.copytree(source, dest)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, dest)


def config_file(service: dict[str, Any]) -> str:
    (flag,) = [arg for arg in service["command"] if arg.startswith("--config.file=")]
    return flag.split("=", 1)[1]


def test_prometheus_container_config_is_valid_and_loads_the_alert_rules(services, tmp_path: Path) -> None:
    prometheus = services["prometheus"]
    lay_out(bind_mounts(prometheus), tmp_path)
    result = promtool("check", "config", str(tmp_path / config_file(prometheus).lstrip("/")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


def test_reference_scrape_config_is_valid_and_is_what_compose_uses() -> None:
    result = promtool("check", "config", "scrape.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    reference = yaml.safe_load((PROMETHEUS / "scrape.yml").read_text())["scrape_configs"]
    assert yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"] == reference


def test_pod_targets_file_lands_where_prometheus_discovers_pods(services) -> None:
    sidecar, prometheus = services["pod-targets"], services["prometheus"]
    command = sidecar["command"]
    out = PurePosixPath(command[command.index("--out") + 1])
    script = PurePosixPath(command[1])
    assert any(src == DEPLOY / "pod_targets.py" and target == str(script) for src, target in bind_mounts(sidecar))
    (volume,) = [name for name, path in named_mounts(sidecar).items() if PurePosixPath(path) == out.parent]
    seen_at = PurePosixPath(named_mounts(prometheus)[volume]) / out.name
    config_path = PurePosixPath(config_file(prometheus))
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "harper-gpu-server"]
    globs = [str(config_path.parent / f) for sd in job["file_sd_configs"] for f in sd["files"]]
    assert any(fnmatch.fnmatch(str(seen_at), pattern) for pattern in globs), (seen_at, globs)


def test_grafana_container_gets_the_datasource_and_dashboards(services) -> None:
    grafana = services["grafana"]
    mounts = {target: source for source, target in bind_mounts(grafana)}
    provisioning = GRAFANA / "provisioning"
    assert mounts["/etc/grafana/provisioning/datasources/harper.yaml"] == provisioning / "datasources.yaml"
    assert mounts["/etc/grafana/provisioning/dashboards/harper.yaml"] == provisioning / "dashboards.yaml"
    (provider,) = yaml.safe_load((provisioning / "dashboards.yaml").read_text())["providers"]
    assert mounts[provider["options"]["path"]] == GRAFANA
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (GRAFANA / PurePosixPath(home).relative_to(provider["options"]["path"])).is_file()
    (datasource,) = yaml.safe_load((provisioning / "datasources.yaml").read_text())["datasources"]
    host = re.match(r"http://([\w-]+):(\d+)$", datasource["url"])
    assert host and host[1] in services and datasource["type"] == "prometheus"


# ------------------------------------------------------------------------------------- the pod-targets sidecar


def pod(pod_id: str, host: str | None, port: int | None) -> dict[str, Any]:
    from reconciler.api import ws_endpoints

    endpoints = ws_endpoints(SimpleNamespace(endpoint_host=host, endpoint_port=port))
    return {"id": pod_id, "name": f"harper-{pod_id}", "gpu_type": "NVIDIA L4", "endpoints": endpoints}


def test_pod_targets_lists_pods_with_endpoints_by_their_current_address() -> None:
    groups = pod_targets().target_groups([pod("7", "203.0.113.7", 40123), pod("3", None, None)])
    assert groups == [{"targets": ["203.0.113.7:40123"], "labels": {"pod": "7", "gpu_type": "NVIDIA L4"}}]


class FakeController(BaseHTTPRequestHandler):
    pods: list[dict[str, Any]] = []
    token = "admin-token"

    def do_GET(self) -> None:
        if self.path != "/v1/pods" or self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_response(401 if self.path == "/v1/pods" else 404)
            self.end_headers()
            return
        body = json.dumps({"pods": self.pods}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def controller() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeController)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-controller", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_pod_targets_follows_a_pod_to_its_new_port(controller: str, tmp_path: Path) -> None:
    sidecar, out = pod_targets(), tmp_path / "targets" / "gpu-pods.json"
    FakeController.pods = [pod("7", "203.0.113.7", 40123)]
    assert sidecar.poll_once(controller, FakeController.token, out) == 1
    first = out.stat().st_mtime_ns
    assert sidecar.poll_once(controller, FakeController.token, out) == 1
    assert out.stat().st_mtime_ns == first, "an unchanged target set is not rewritten"
    FakeController.pods = [pod("7", "203.0.113.9", 41555)]  # stopped and resumed elsewhere
    sidecar.poll_once(controller, FakeController.token, out)
    (moved,) = json.loads(out.read_text())
    assert moved["targets"] == ["203.0.113.9:41555"]
    assert moved["labels"] == {"pod": "7", "gpu_type": "NVIDIA L4"}, "the pod label stays the controller's pod id"
    assert oct(out.stat().st_mode & 0o777) == "0o644"


def test_pod_targets_explains_a_refused_token_and_keeps_the_last_file(controller: str, tmp_path: Path) -> None:
    sidecar, out = pod_targets(), tmp_path / "gpu-pods.json"
    out.write_text("[]\n")
    with pytest.raises(sidecar.FetchError, match="HARPER_ADMIN_TOKEN"):
        sidecar.poll_once(controller, "wrong", out)
    assert out.read_text() == "[]\n"
