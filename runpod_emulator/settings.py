"""Emulator settings: one object per process, from ``EMULATOR_*`` environment variables and CLI flags.

Built once in ``cli.main`` (or by a test / the reconciler's local mode) and passed down; nothing reads the
environment after that. Flags win over the environment, the environment over the defaults. The fidelity
options (churn, ports delay, stale ports, proxy-only HTTP ports) default to off so that fast tests see a
well-behaved RunPod; chaos tests and demos turn them on.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runpod_emulator.ratelimit import DOCUMENTED_EXAMPLE, RateLimitPolicy


class EmulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMULATOR_", extra="forbid")

    host: str = Field("127.0.0.1", description="address the GraphQL/REST/admin API listens on")
    port: int = Field(8765, ge=0, le=65535, description="API port; 0 picks a free one")
    api_key: SecretStr | None = Field(None, description="the only key accepted; unset: any non-empty key is accepted")
    runner: Literal["simulated", "process"] = Field("simulated", description="what runs behind each pod")
    boot_seconds: float = Field(3.0, ge=0, description="seconds from a create until runtime appears (image pull)")
    resume_boot_seconds: float | None = Field(
        None, ge=0, description="seconds from a resume/restart until runtime appears; unset: boot_seconds"
    )
    ports_delay_seconds: float = Field(0.0, ge=0, description="seconds from runtime appearing to its ports appearing")
    load_seconds: float = Field(2.0, ge=0, description="simulated runner: seconds from boot until /health is 200")
    seed: int | None = Field(None, description="seed for ids, fault rates and churn; unset: random")
    machines_per_type: int = Field(4, ge=0, description="machines per GPU type in the catalogue")
    gpus_per_machine: int = Field(8, ge=1, description="GPU slots on each machine")
    command: str | None = Field(
        None, description="process runner: the command per pod (shell words); default: python -m gpu_server serve"
    )
    log_dir: Path | None = Field(None, description="process runner: per-pod log files; default: a new temp dir")
    stop_grace_seconds: float = Field(5.0, ge=0, description="process runner: SIGTERM to SIGKILL grace")
    pod_host: str = Field("127.0.0.1", description="address pods serve on and report as their public ip")
    tick_seconds: float = Field(0.05, gt=0, description="how often the boot watcher looks for pods to boot")
    rate_limit: str = Field(
        DOCUMENTED_EXAMPLE,
        description="REST v2 rate-limit policy, QUOTA/WINDOW[,...] (e.g. 60/minute,3000/hour) or off",
    )
    tenant_take_per_hour: float = Field(
        0.0, ge=0, description="other tenants take each free GPU at this rate per hour (0: never)"
    )
    tenant_release_per_hour: float = Field(
        0.0, ge=0, description="other tenants give back each GPU they hold at this rate per hour (0: never)"
    )
    stale_exited_ports: bool = Field(
        False, description="GraphQL reports an EXITED pod's last runtime.ports (as RunPod was seen doing)"
    )
    http_proxy_only: bool = Field(
        False, description="http ports are reachable only through /proxy/<podId>-<port>/ (RunPod's proxy URL)"
    )
    internal_ip: str = Field(
        "127.0.0.2", description="http_proxy_only: the internal address reported for http ports (nothing listens)"
    )
    proxy_timeout_seconds: float = Field(100.0, gt=0, description="the pod proxy's limit before it answers 524")

    @field_validator("rate_limit")
    @classmethod
    def _valid_policy(cls, value: str) -> str:
        return str(RateLimitPolicy.parse(value))

    def rate_limit_policy(self) -> RateLimitPolicy:
        return RateLimitPolicy.parse(self.rate_limit)

    def command_argv(self) -> list[str]:
        if self.command:
            return shlex.split(self.command)
        return [sys.executable, "-m", "gpu_server", "serve"]
