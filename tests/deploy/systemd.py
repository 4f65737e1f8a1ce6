"""A tiny systemd unit parser (repeated keys kept) and the rules of the example unit."""

from __future__ import annotations

import re
import shlex

Unit = dict[str, list[tuple[str, str]]]
UNITS_S = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001, "msec": 0.001}
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict"}


def parse(text: str) -> Unit:
    unit: Unit = {}
    section = None
    pending = ""
    for number, line in enumerate(text.splitlines(), 1):
        line = pending + line.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.setdefault(section, [])
        elif "=" in line and section is not None:
            key, value = line.split("=", 1)
            unit[section].append((key.strip(), value.strip()))
        else:
            raise ValueError(f"line {number}: not a section, key=value or comment: {line!r}")
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def last(unit: Unit, section: str, key: str) -> str | None:
    found = values(unit, section, key)
    return found[-1] if found else None


def seconds(text: str) -> float:
    """A systemd time span (``40``, ``40s``, ``1min 30s``) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    if not parts or any(unit not in UNITS_S for _, unit in parts):
        raise ValueError(f"not a time span: {text!r}")
    return sum(float(n) * UNITS_S[unit] for n, unit in parts)


def environment(unit: Unit) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in values(unit, "Service", "Environment"):
        env.update(w.split("=", 1) for w in shlex.split(line) if "=" in w)
    return env


def problems(unit: Unit, shutdown_grace_ms: int, data_dir: str | None, config_path: str) -> list[str]:
    found = []
    if last(unit, "Service", "Restart") not in ("on-failure", "always", "on-abnormal"):
        found.append("Restart= is missing")
    if last(unit, "Service", "RestartSec") is None:
        found.append("RestartSec= is missing")
    user = last(unit, "Service", "User")
    if not user or user == "root":
        found.append("User= must name a dedicated user")
    if environment(unit).get("ZE_WORKER_CONFIG_JSON") != config_path:
        found.append(f"Environment=ZE_WORKER_CONFIG_JSON={config_path} is missing")
    exec_start = shlex.split(last(unit, "Service", "ExecStart") or "")
    if len(exec_start) != 2 or not exec_start[0].endswith("/zephyr-edge") or exec_start[1] != "serve":
        found.append(f"ExecStart= runs {exec_start}, not `zephyr-edge serve`")
    if last(unit, "Service", "KillSignal") != "SIGTERM":
        found.append("KillSignal=SIGTERM is missing")
    stop = last(unit, "Service", "TimeoutStopSec")
    if stop is None or not seconds(stop) > shutdown_grace_ms / 1000:
        found.append(f"TimeoutStopSec={stop} does not exceed the shutdown grace {shutdown_grace_ms} ms")
    for key, value in HARDENING.items():
        if last(unit, "Service", key) != value:
            found.append(f"{key}={value} is missing")
    writable = set(" ".join(values(unit, "Service", "ReadWritePaths")).split())
    writable |= {"/var/lib/" + d for d in " ".join(values(unit, "Service", "StateDirectory")).split()}
    if data_dir and not any(data_dir == w or data_dir.startswith(w.rstrip("/") + "/") for w in writable):
        found.append(f"the data directory {data_dir} is not writable under ProtectSystem=strict")
    return found
