"""The ``config.json`` of every Secret (base and overlays) and of the bare-VM example is a
configuration the worker starts on, in the documented layout, with secrets as placeholders."""

from __future__ import annotations

import json

import pytest

from tests.deploy import config_checks
from tests.deploy.support import TARGETS, VM_CONFIG, config_problems, config_text

FILES = {**{t: (lambda t=t: config_text(t)) for t in TARGETS}, "vm": lambda: VM_CONFIG.read_text(encoding="utf-8")}


@pytest.mark.parametrize("name", FILES)
def test_config_loads_through_the_worker_loader(name):
    assert config_problems(FILES[name]()) == []


@pytest.mark.parametrize("name", FILES)
def test_config_layout_placeholders_and_no_unknown_keys(name):
    text = FILES[name]()
    assert config_checks.layout_problems(text) == []
    assert config_checks.placeholder_problems(text) == []
    assert config_checks.warning_problems(text) == []


def _edit(text: str, **changes) -> str:
    data = config_checks.raw_values(text)
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize("changes,expected", [
    ({"ZE_WORKER_PORT": "eighty"}, "ZE_WORKER_PORT"),
    ({"ZE_WORKER_S3_BUCKET": None}, "ZE_WORKER_S3_BUCKET"),
    ({"ZE_WORKER_REPLICAS_URLS": ["ftp://elsewhere"]}, "ZE_WORKER_REPLICAS_URLS"),
    ({"ZE_WORKER_KV_BACKEND": "memcached"}, "memcached"),
])
def test_config_check_reports_a_bad_value(changes, expected):
    problems = config_problems(_edit(config_text("base"), **changes))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("changes", [
    {"ZE_WORKER_PORT": 8080}, {"ZE_WORKER_REDIS_TLS": False}, {"ZE_WORKER_REPLICAS_URLS": "https://a"},
])
def test_layout_check_can_fail(changes):
    assert config_checks.layout_problems(_edit(config_text("base"), **changes))


def test_placeholder_and_typo_checks_can_fail():
    text = config_text("base")
    assert config_checks.placeholder_problems(_edit(text, ZE_WORKER_S3_SECRET_ACCESS_KEY="wJalrXUtnFEMI"))
    assert config_checks.warning_problems(_edit(text, ZE_WORKER_REDIS_PASWORD="CHANGE-ME"))
