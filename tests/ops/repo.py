"""Paths of the operations files, and the pod-targets sidecar loaded as a module (it is a script in deploy/)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
GRAFANA = DASHBOARDS / "grafana"
PROMETHEUS = DASHBOARDS / "prometheus"
DEPLOY = ROOT / "deploy"


def pod_targets() -> ModuleType:
    name = "harper_deploy_pod_targets"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DEPLOY / "pod_targets.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
