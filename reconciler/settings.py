"""Process settings for the controller, read from ``HARPER_*`` environment variables (and flags).

One ``Settings`` object is built in ``main()`` and passed down. Policy fields here are only the *defaults*
written to a new database; after that the policy lives in the database and is changed through the admin
API. Secrets are ``SecretStr`` so they never print.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .domain import Policy, Tuning


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HARPER_", extra="ignore")

    runpod_api_key: SecretStr = SecretStr("")  # empty: local mode (an emulator on loopback)
    runpod_api_url: str = ""  # RunPod's base URL (REST under /v2, GraphQL at /graphql); empty: RunPod itself
    runpod_api: Literal["rest", "graphql"] = "rest"  # REST v2; GraphQL (the SDK) until RunPod retires it
    catalog_ttl_s: float = Field(60.0, gt=0)  # GPU prices and stock are read at most this often
    billing_interval_s: float = Field(300.0, gt=0)  # what RunPod billed is read this often
    database_url: str = "sqlite+aiosqlite:///harper.db"
    api_token: SecretStr = SecretStr("")  # companion scope (/v1/leases*); empty: generated and printed
    admin_token: SecretStr = SecretStr("")  # admin scope (everything); empty: generated and printed
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8080, ge=1, le=65535)
    public_url: str = ""  # how clients reach this API, if not http://host:port
    reconcile_interval_s: float = Field(5.0, gt=0)
    gpu_image: str = "ghcr.io/harper-voice/gpu-server:latest"
    cloud_type: str = "SECURE"
    pod_volume_gb: int = 20
    pod_container_disk_gb: int = 20
    health_timeout_s: float = 2.0
    provider_timeout_s: float = 30.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    # policy defaults for a new database (the values themselves live in domain.Policy)
    standby_count: int = Policy.model_fields["standby_count"].default
    idle_ttl_s: float = Policy.model_fields["idle_ttl_s"].default
    stopped_ttl_s: float = Policy.model_fields["stopped_ttl_s"].default
    sessions_per_pod: int = Policy.model_fields["sessions_per_pod"].default
    max_pods: int = Policy.model_fields["max_pods"].default
    gpu_types: str = ",".join(Policy.model_fields["gpu_types"].default_factory())
    budget_usd_per_hour: float = Policy.model_fields["budget_usd_per_hour"].default

    # loop mechanics (defaults from domain.Tuning)
    lease_ttl_s: float = Tuning.model_fields["lease_ttl_s"].default
    create_grace_s: float = Tuning.model_fields["create_grace_s"].default
    orphan_grace_s: float = Tuning.model_fields["orphan_grace_s"].default
    ready_timeout_s: float = Tuning.model_fields["ready_timeout_s"].default
    unhealthy_timeout_s: float = Tuning.model_fields["unhealthy_timeout_s"].default
    stop_timeout_s: float = Tuning.model_fields["stop_timeout_s"].default
    resume_backoff_s: float = Tuning.model_fields["resume_backoff_s"].default
    out_of_stock_s: float = Tuning.model_fields["out_of_stock_s"].default
    pending_timeout_s: float = Tuning.model_fields["pending_timeout_s"].default
    max_provider_actions: int = Tuning.model_fields["max_provider_actions"].default
    queue_limit: int = Tuning.model_fields["queue_limit"].default

    # local mode: the emulator the daemon starts when there is no RunPod key
    local_runner: Literal["process", "simulated"] = "process"
    local_boot_s: float = 1.0
    local_state_dir: str = ".local"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def local_mode(self) -> bool:
        return not self.runpod_api_key.get_secret_value()

    def default_policy(self) -> Policy:
        return Policy(
            standby_count=self.standby_count, idle_ttl_s=self.idle_ttl_s, stopped_ttl_s=self.stopped_ttl_s,
            sessions_per_pod=self.sessions_per_pod, max_pods=self.max_pods,
            gpu_types=[t for t in self.gpu_types.split(",") if t.strip()],
            budget_usd_per_hour=self.budget_usd_per_hour,
        )

    def tuning(self) -> Tuning:
        return Tuning(**{name: getattr(self, name) for name in Tuning.model_fields})


POLICY_FIELDS = tuple(Policy.model_fields)


def policy_report(settings: Settings, stored: Policy | None) -> list[tuple[int, str]]:
    """What to log at start: the policy in force and where each value comes from, and a warning where the
    environment says something the stored policy overrides (policy settings only seed a new database)."""
    env_policy = settings.default_policy()
    in_force = stored or env_policy
    lines: list[tuple[int, str]] = []
    sources = []
    for name in POLICY_FIELDS:
        value = getattr(in_force, name)
        if stored is not None:
            source = "database"
        elif name in settings.model_fields_set:
            source = f"HARPER_{name.upper()}"
        else:
            source = "default"
        sources.append(f"{name}={value!r} ({source})")
        if stored is not None and name in settings.model_fields_set and getattr(env_policy, name) != value:
            lines.append((logging.WARNING, (
                f"HARPER_{name.upper()}={getattr(env_policy, name)!r} is not applied: the database's policy says "
                f"{value!r} (environment policy only seeds a new database; change it with PATCH /v1/policy)")))
    lines.insert(0, (logging.INFO, "policy in force: " + ", ".join(sources)))
    if in_force.paused:
        lines.append((logging.WARNING, "the controller starts paused: no pod is created or resumed until "
                                       'PATCH /v1/policy {"paused": false}'))
    return lines


def setting_error(e: ValidationError) -> str:
    """One line naming the setting (as the operator sets it: ``HARPER_X``) for a settings, policy or tuning
    error; never the value of a secret."""
    err = e.errors()[0] if e.errors() else {}
    loc = [str(x) for x in err.get("loc", ())]
    name = loc[0] if loc else ""
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if not name:  # a rule across fields (policy), e.g. standby_count above max_pods
        return f"bad policy settings: {msg}"
    env = f"HARPER_{name.upper()}"
    secret = name in ("runpod_api_key", "api_token", "admin_token")
    value = err.get("input")
    shown = "" if secret or isinstance(value, dict) else f"={value}"
    return f"bad setting {env}{shown}: {msg}"
