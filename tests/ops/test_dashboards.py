"""Dashboards and alert rules against the metrics that really exist.

promtool (Debian's ``prometheus`` package) checks the rules and runs their unit tests. Every ``harper_*``
name a Grafana panel, a dashboard variable or an alert queries must be exported by the controller
(``ControllerMetrics``), the gpu_server (``SpeechMetrics``) or the companion library (``VoicePods``), and
every label it filters, groups or templates by must be one those series carry.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from ..requirements import missing
from .repo import GRAFANA, PROMETHEUS, pod_targets

DASHBOARD_FILES = sorted(GRAFANA.glob("*.json"))
SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        missing("promtool not found on PATH: install Debian's `prometheus` package (apt-get install prometheus), "
                "as .ci/run does. The alert rules cannot be checked without it.")
    return subprocess.run([path, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------- what is exported


@dataclass(frozen=True)
class Family:
    name: str  # as exposed: counters with _total
    type: str
    labels: frozenset[str]


def _families(owner: object, exposition: bytes, scrape_labels: set[str]) -> dict[str, Family]:
    """Names and types from the exposition text; label names from the metric objects (a labelled metric
    with no children yet is exposed without samples, so the text alone cannot say which labels it has)."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition.decode(), re.M))
    families = {}
    for wrapper in vars(owner).values():
        if not isinstance(wrapper, MetricWrapperBase):
            continue
        described = wrapper.describe()[0]
        name = described.name + ("_total" if described.type == "counter" else "")
        assert types.get(name) == described.type, f"{name} is not in the exposition as a {described.type}"
        labels = frozenset(wrapper._labelnames) | scrape_labels
        families[name] = Family(name, described.type, labels)
    return families


def exported() -> dict[str, Family]:
    from gpu_server.metrics import SpeechMetrics
    from reconciler.client import VoicePods
    from reconciler.metrics import ControllerMetrics

    scrape = {"job", "instance"}
    controller = ControllerMetrics()
    speech = SpeechMetrics()
    registry = CollectorRegistry()
    companion = VoicePods("http://127.0.0.1:9", "unused", registry=registry)
    asyncio.run(companion.api.aclose())
    return {
        **_families(controller, controller.render(), scrape),
        # pods carry the labels the file_sd sidecar gives their targets
        **_families(speech, generate_latest(speech.registry), scrape | set(pod_targets().TARGET_LABELS)),
        **_families(companion, generate_latest(registry), scrape),
    }


@pytest.fixture(scope="module")
def families() -> dict[str, Family]:
    return exported()


# ------------------------------------------------------------------------------------- loose PromQL reading

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_SELECTOR = re.compile(r"\b(harper_[A-Za-z0-9_]+)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_LABEL_VALUES = re.compile(r"label_values\(\s*(?:harper_\w+\s*(?:\{[^}]*\})?\s*,)?\s*(\w+)\s*\)")
_TEMPLATE = re.compile(r"\{\{\s*(?:\$labels\.)?(\w+)\s*\}\}")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _resolve(name: str, families: dict[str, Family]) -> tuple[Family | None, bool]:
    """The family a series name belongs to, and whether it is a histogram's _bucket (which adds `le`)."""
    if name in families:
        return families[name], False
    for suffix in _HISTOGRAM_SUFFIXES:
        family = families.get(name.removesuffix(suffix))
        if name.endswith(suffix) and family is not None and family.type == "histogram":
            return family, suffix == "_bucket"
    return None, False


def check_query(expr: str, families: dict[str, Family], templates: str = "") -> list[str]:
    """Problems with one query: unknown harper_ names, and labels (in matchers, grouping clauses,
    label_values() and the legend/annotation `templates`) that none of its harper_ series carry."""
    blanked = _STRING.sub('""', expr)
    problems: list[str] = []
    known: set[str] = {"job", "instance"}
    for name, matchers in _SELECTOR.findall(blanked):
        family, bucket = _resolve(name, families)
        if family is None:
            problems.append(f"unknown metric {name}")
            continue
        allowed = family.labels | ({"le"} if bucket else set())
        known |= allowed
        for label in _MATCHER.findall(matchers):
            if label not in allowed and label != "__name__":
                problems.append(f"{name} has no label {label!r}")
    used = {label.strip() for group in _GROUPING.findall(blanked) for label in group.split(",") if label.strip()}
    used |= set(_LABEL_VALUES.findall(blanked))
    used |= set(_TEMPLATE.findall(templates))
    for label in sorted(used - known):
        problems.append(f"label {label!r} is on none of the series queried")
    return problems


def test_the_checker_catches_typos(families: dict[str, Family]) -> None:
    good = 'histogram_quantile(0.95, sum by (le, path) (rate(harper_lease_wait_seconds_bucket{path!="x"}[5m])))'
    assert check_query(good, families, "p95 {{path}}") == []
    assert check_query('harper_pods{rolee="serving"}', families) == ["harper_pods has no label 'rolee'"]
    assert check_query("sum by (kind) (harper_leases)", families) == [
        "label 'kind' is on none of the series queried"
    ]
    assert check_query("rate(harper_reconcile_total[5m])", families) == []
    assert check_query("rate(harper_reconcile[5m])", families) == ["unknown metric harper_reconcile"]
    assert check_query("harper_pods_bucket", families) == ["unknown metric harper_pods_bucket"]
    assert check_query('harper_stt_streams_active{pod=~"$pod"}', families) == []  # a file_sd target label
    assert check_query('up unless on (instance) harper_model_load_seconds{model=~"harper_x"}', families) == []
    assert check_query("x", families, "{{ $labels.reason }}") == ["label 'reason' is on none of the series queried"]


# ------------------------------------------------------------------------------------- what is queried


def dashboard_panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def dashboard_queries(dashboard: dict) -> Iterator[tuple[str, str, str]]:
    """(where, expr, legend) of every panel target and query variable."""
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target.get("expr", ""), target.get("legendFormat", "")
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            yield f"variable {var['name']!r}", query, ""


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_queries_use_exported_metrics_and_labels(path, families: dict[str, Family]) -> None:
    dashboard = json.loads(path.read_text())
    problems = [
        f"{where}: {problem}  [{expr}]"
        for where, expr, legend in dashboard_queries(dashboard)
        for problem in check_query(expr, families, legend)
    ]
    assert problems == []


def test_alert_queries_use_exported_metrics_and_labels(families: dict[str, Family]) -> None:
    problems = [
        f"{rule['alert']}: {problem}"
        for rule in alert_rules()
        for problem in check_query(rule["expr"], families, " ".join(rule.get("annotations", {}).values()))
    ]
    assert problems == []


def test_the_dashboards_and_alerts_query_every_family(families: dict[str, Family]) -> None:
    texts = [path.read_text() for path in DASHBOARD_FILES] + [(PROMETHEUS / "alerts.yml").read_text()]
    queried = set()
    for name, _ in _SELECTOR.findall("\n".join(texts)):
        family, _ = _resolve(name, families)
        if family is not None:
            queried.add(family.name)
    assert sorted(set(families) - queried) == []


# ------------------------------------------------------------------------------------- dashboard structure


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_is_grafana_json_with_a_datasource_on_every_panel(path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] == path.stem and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = list(dashboard_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    problems = []
    for panel in panels:
        where, grid = f"panel {panel.get('title')!r}", panel["gridPos"]
        if grid["x"] + grid["w"] > 24:
            problems.append(f"{where} is wider than the grid")
        if panel["type"] == "row":
            continue
        if panel["type"] not in ("timeseries", "stat"):
            problems.append(f"{where} has type {panel['type']}")
        if panel.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
            problems.append(f"{where} does not use the ${{datasource}} variable")
        targets = panel.get("targets", [])
        if not targets or not all(t.get("expr") for t in targets):
            problems.append(f"{where} has no query")
        if len({t["refId"] for t in targets}) != len(targets):
            problems.append(f"{where} repeats a refId")
    assert problems == []


def test_speech_dashboard_selects_and_groups_pods_by_the_stable_pod_label() -> None:
    """`instance` is a pod's public address, new on every resume: a dashboard keyed on it splits one pod into
    several and loses the selection. `pod` (the controller's pod id, from the file_sd sidecar) stays."""
    dashboard = json.loads((GRAFANA / "harper-speech.json").read_text())
    assert "pod" in pod_targets().TARGET_LABELS
    (selector,) = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert selector["name"] == "pod" and selector["query"]["query"].endswith(", pod)")
    problems = []
    for where, expr, legend in dashboard_queries(dashboard):
        if where.startswith("variable"):
            continue
        if "instance" in expr + legend:
            problems.append(f"{where} uses instance: {expr}")
        if 'pod=~"$pod"' not in expr:
            problems.append(f"{where} ignores the pod selector: {expr}")
    assert problems == []


def test_gpu_server_alerts_group_by_pod_not_by_address() -> None:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    (group,) = [g for g in doc["groups"] if g["name"] == "harper-gpu-server"]
    for rule in group["rules"]:
        grouping = {label.strip() for labels in _GROUPING.findall(rule["expr"]) for label in labels.split(",")}
        # a `by` that keeps `instance` would start the alert over (and drop its `for`) on every resume;
        # `unless on (instance)` only pairs series of one scrape, which is right
        if " by " in rule["expr"]:
            assert "pod" in grouping and "instance" not in grouping, rule["alert"]
        assert "{{ $labels.pod }}" in rule["annotations"]["summary"], rule["alert"]


def test_dashboard_uids_are_unique() -> None:
    uids = [json.loads(path.read_text())["uid"] for path in DASHBOARD_FILES]
    assert len(DASHBOARD_FILES) >= 2 and len(uids) == len(set(uids))


# ------------------------------------------------------------------------------------- alert rules


# Grafana's variables, replaced by something PromQL accepts so promtool can parse the panel queries.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$pod": ".*",
                     "${datasource}": "prometheus"}


def test_dashboard_queries_are_valid_promql(tmp_path) -> None:
    records = []
    for path in DASHBOARD_FILES:
        for panel in dashboard_panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                assert "$" not in expr, f"{path.name}: unknown Grafana variable in {target['expr']}"
                records.append({"record": f"dashboard:{path.stem.replace('-', '_')}:{panel['id']}_{target['refId']}",
                                "expr": expr})
    rules = tmp_path / "dashboard-queries.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": records}]}))
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules_passes() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_for_severity_and_annotations() -> None:
    problems = []
    for rule in alert_rules():
        name = rule["alert"]
        if not rule.get("for"):
            problems.append(f"{name}: no `for`")
        if rule.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity must be one of {sorted(SEVERITIES)}")
        annotations = rule.get("annotations", {})
        if not (annotations.get("summary") and annotations.get("description")):
            problems.append(f"{name}: needs a summary and a description")
    assert problems == []


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    doc = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    fires, quiet = set(), set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert sorted(names - fires) == [], "alerts without a test where they fire"
    assert sorted(names - quiet) == [], "alerts without a test where they stay quiet"
