"""The requirement helper skips on a developer machine and fails on CI, with the reason."""

from __future__ import annotations

import pytest

from tests import requirements
from tests.services import free_port

ABSENT = "ze-no-such-tool-4f1c"


@pytest.mark.parametrize("ci", ["", "false", "1"])
def test_a_missing_tool_skips_outside_ci(monkeypatch, ci):
    monkeypatch.setenv(requirements.CI_VARIABLE, ci)
    with pytest.raises(pytest.skip.Exception, match=f"{ABSENT} is not on the PATH: for this test"):
        requirements.tool(ABSENT, "for this test")


@pytest.mark.parametrize("ci", ["true", "TRUE"])
def test_a_missing_tool_or_service_fails_on_ci(monkeypatch, ci):
    monkeypatch.setenv(requirements.CI_VARIABLE, ci)
    with pytest.raises(pytest.fail.Exception, match=f"{ABSENT} is not on the PATH: for this test"):
        requirements.tool(ABSENT, "for this test")
    port = free_port()
    with pytest.raises(pytest.fail.Exception, match=f"nothing answers on 127.0.0.1:{port}: a database"):
        requirements.service("127.0.0.1", port, "a database")


def test_present_tools_pass(monkeypatch):
    monkeypatch.setenv(requirements.CI_VARIABLE, "true")
    assert requirements.tool("sh", "a shell").endswith("sh")
