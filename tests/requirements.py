"""What some tests need from the machine besides Python packages (kubectl, Node.js and npm,
PostgreSQL), decided in one place: when it is missing, a developer's run skips those tests
with the reason, and a CI run (``CI=true``) fails them with the same reason, since CI must
never pass by skipping. The README's test section lists the same requirements."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import NoReturn

import pytest

from tests.services import port_open

CI_VARIABLE = "CI"


def on_ci(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(CI_VARIABLE, "").strip().lower() == "true"


def missing(reason: str) -> NoReturn:
    """Skip (developer machine) or fail (CI) the current test with ``reason``."""
    if on_ci():
        pytest.fail(f"{reason} ({CI_VARIABLE}=true: a missing requirement is a failure)", pytrace=False)
    pytest.skip(reason)


def tool(name: str, purpose: str) -> str:
    """The path of the executable ``name`` on the PATH; skip or fail without it."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not on the PATH: {purpose}")
    return path


def service(host: str, port: int, purpose: str) -> None:
    """Something answers on ``host:port``; skip or fail otherwise."""
    if not port_open(port, host):
        missing(f"nothing answers on {host}:{port}: {purpose}")
