"""Every end-to-end test deploys through the real ``zephyr-agent`` from npm: without
Node.js and npm they skip with that reason (and fail on CI), instead of failing inside a
fixture."""

from __future__ import annotations

import pytest

from tests import requirements

WHY = "the end-to-end tests install and run the real zephyr-agent from npm (needs Node.js and npm)"


@pytest.fixture(autouse=True)
def node_and_npm():
    for name in ("node", "npm"):
        requirements.tool(name, WHY)
