"""Emulator settings: one object per process, from ``EMULATOR_*`` environment variables and CLI flags.

Built once in ``cli.main`` (or by a test / the reconciler's local mode) and passed down; nothing reads the
environment after that. Flags win over the environment, the environment over the defaults.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class EmulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMULATOR_", extra="forbid")

    host: str = Field("127.0.0.1", description="address the GraphQL/admin API listens on")
    port: int = Field(8765, ge=0, le=65535, description="API port; 0 picks a free one")
    api_key: SecretStr | None = Field(None, description="the only key accepted; unset: any non-empty key is accepted")
    runner: Literal["simulated", "process"] = Field("simulated", description="what runs behind each pod")
    boot_seconds: float = Field(3.0, ge=0, description="seconds from create/resume until runtime appears")
    load_seconds: float = Field(2.0, ge=0, description="simulated runner: seconds from boot until /health is 200")
    seed: int | None = Field(None, description="seed for ids and fault rates; unset: random")
    machines_per_type: int = Field(4, ge=0, description="machines per GPU type in the catalogue")
    gpus_per_machine: int = Field(8, ge=1, description="GPU slots on each machine")
    command: str | None = Field(
        None, description="process runner: the command per pod (shell words); default: python -m gpu_server serve"
    )
    log_dir: Path | None = Field(None, description="process runner: per-pod log files; default: a new temp dir")
    stop_grace_seconds: float = Field(5.0, ge=0, description="process runner: SIGTERM to SIGKILL grace")
    pod_host: str = Field("127.0.0.1", description="address pods serve on and report as their public ip")
    tick_seconds: float = Field(0.05, gt=0, description="how often the boot watcher looks for pods to boot")

    def command_argv(self) -> list[str]:
        if self.command:
            return shlex.split(self.command)
        return [sys.executable, "-m", "gpu_server", "serve"]
