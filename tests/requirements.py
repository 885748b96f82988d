"""Tests that need a tool from a Debian package (promtool, PostgreSQL, espeak-ng) skip where it is missing and say
why, except in CI (``CI=true``), where they fail: CI installs the packages, so it cannot pass by skipping."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NoReturn

import pytest


def missing(why: str, env: Mapping[str, str] = os.environ) -> NoReturn:
    if env.get("CI") == "true":
        pytest.fail(why + " (CI=true: required)", pytrace=False)
    pytest.skip(why)
