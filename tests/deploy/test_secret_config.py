"""The ``config.json`` of every Secret (base and overlays) and of the bare-VM example: the
worker refuses it as shipped (one problem per placeholder secret, naming the key, never the
value), and starts on it once the placeholders are replaced; documented layout; every
placeholder anywhere in the shipped files is one the worker refuses."""

from __future__ import annotations

import json
import re

import pytest

from zephyr_edge.settings import config as cfg
from zephyr_edge import plugins

from tests.deploy import config_checks
from tests.deploy.support import SHIPPED, TARGETS, VM_CONFIG, config_problems, config_text, filled_in, raw_values

FILES = {**{t: (lambda t=t: config_text(t)) for t in TARGETS}, "vm": lambda: VM_CONFIG.read_text(encoding="utf-8")}
#: A quoted value of a key in a config shown to users: ``"ZE_WORKER_X": "value"``.
QUOTED_VALUE = re.compile(r'"(ZE_WORKER_[A-Z0-9_]+)"\s*:\s*"([^"]*)"')
#: Anything that looks like a placeholder, wherever it is quoted.
LOOKS_LIKE_PLACEHOLDER = re.compile(r'"(change[-_ ]?me[^"]*|<[^"<>]+>)"', re.I)


def placeholder_keys(text: str) -> set[str]:
    return {key for key, value in raw_values(text).items() if isinstance(value, str) and cfg.is_placeholder(value)}


@pytest.mark.parametrize("name", FILES)
def test_config_is_refused_as_shipped_and_loads_once_filled_in(name):
    text = FILES[name]()
    keys = placeholder_keys(text)
    assert cfg.KEY_PREFIX + "JWT_SECRET" in keys
    problems = config_problems(text)
    assert sorted(p.split(" ", 1)[0] for p in problems) == sorted(keys), problems
    assert all("placeholder" in p for p in problems)
    shown = "\n".join(problems)
    assert not [v for v in raw_values(text).values() if isinstance(v, str) and cfg.is_placeholder(v) and v in shown]
    assert config_problems(filled_in(text)) == []


def shipped_files():
    for root in SHIPPED:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        yield from (f for f in files if f.suffix in {".yaml", ".yml", ".json", ".md", ".service", ".cfg", ".py"})


def test_every_placeholder_in_the_shipped_files_is_refused():
    secret_keys = set()
    for choice in [("storage", "s3"), ("storage", "local"), ("kv", "redis"), ("kv", "local")]:
        klass = plugins.load(*choice)
        if klass.Options is not None:
            secret_keys |= set(cfg.secret_keys([(klass.Options, klass.options_prefix)]))
    secret_keys |= set(cfg.secret_keys([(cfg.WorkerConfig, "")]))
    seen = 0
    for path in shipped_files():
        text = path.read_text(encoding="utf-8")
        for value in LOOKS_LIKE_PLACEHOLDER.findall(text):
            assert cfg.is_placeholder(value), f"{path}: {value!r} looks like a placeholder the worker accepts"
        for key, value in QUOTED_VALUE.findall(text):
            if cfg.is_placeholder(value):
                seen += 1
                assert key in secret_keys, f"{path}: {key} holds a placeholder but is not a secret the worker checks"
    assert seen >= 20, "the scan no longer finds the shipped placeholders"


@pytest.mark.parametrize("value", ["CHANGE-ME", "change-me-please", "ChangeMe123", " CHANGE_ME", "<shared secret>"])
def test_placeholders_are_refused(value):
    problems = config_problems(json.dumps({**raw_values(filled_in(config_text("base"))), "ZE_WORKER_REDIS_PASSWORD": value}))
    assert problems == ["ZE_WORKER_REDIS_PASSWORD is still a placeholder from the example configuration: "
                        "replace it with a real secret"]


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
    problems = config_problems(_edit(filled_in(config_text("base")), **changes))
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
