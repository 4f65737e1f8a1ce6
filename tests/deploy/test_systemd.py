"""The bare-VM systemd unit example parses and fits the worker (drain, data directory)."""

from __future__ import annotations

import pytest

from tests.deploy import systemd
from tests.deploy.support import SYSTEMD_UNIT, VM_CONFIG, shipped_config

CONFIG_PATH = "/etc/ze-worker/config.json"


def unit_text() -> str:
    return SYSTEMD_UNIT.read_text(encoding="utf-8")


def check(text: str) -> list[str]:
    worker = shipped_config(VM_CONFIG.read_text(encoding="utf-8")).worker
    return systemd.problems(systemd.parse(text), worker.shutdown_grace_ms, worker.data_dir, CONFIG_PATH)


def test_unit_parses_and_fits_the_worker():
    unit = systemd.parse(unit_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    assert check(unit_text()) == []


def _drop(key):
    return lambda t: "\n".join(line for line in t.splitlines() if not line.startswith(key + "="))


BREAKS = {
    "no restart": _drop("Restart"),
    "no restart delay": _drop("RestartSec"),
    "root": lambda t: t.replace("User=zephyr-edge", "User=root"),
    "no config env": lambda t: t.replace("Environment=ZE_WORKER_CONFIG_JSON=", "Environment=OTHER="),
    "other command": lambda t: t.replace("zephyr-edge serve", "zephyr-edge dev"),
    "short stop timeout": lambda t: t.replace("TimeoutStopSec=40s", "TimeoutStopSec=15"),
    "no kill signal": _drop("KillSignal"),
    "not strict": lambda t: t.replace("ProtectSystem=strict", "ProtectSystem=full"),
    "data dir read-only": lambda t: _drop("StateDirectory")(_drop("ReadWritePaths")(t)),
}


@pytest.mark.parametrize("case", BREAKS)
def test_unit_check_can_fail(case):
    broken = BREAKS[case](unit_text())
    assert broken != unit_text()
    assert check(broken)


@pytest.mark.parametrize("span,expected", [("40", 40), ("40s", 40), ("1min 30s", 90), ("500ms", 0.5)])
def test_time_spans(span, expected):
    assert systemd.seconds(span) == expected


def test_parser_refuses_garbage():
    with pytest.raises(ValueError):
        systemd.parse("[Service]\nthis is not a setting\n")
