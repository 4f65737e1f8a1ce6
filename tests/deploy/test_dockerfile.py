"""The Dockerfile: hadolint-clean, and our own image rules (multi-stage, pinned slim base,
no compiler in the final stage, numeric user, port, entrypoint, config path)."""

from __future__ import annotations

import pytest

from tests.deploy import dockerfile
from tests.deploy.support import DOCKERFILE, DOCKERIGNORE, worker_config


def text() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def configured_port() -> int:
    return int(worker_config("base").worker.port)


def test_hadolint_passes():
    code, output = dockerfile.hadolint(DOCKERFILE)
    assert code == 0, f"hadolint:\n{output}"


def test_hadolint_can_fail(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\n", encoding="utf-8")
    code, output = dockerfile.hadolint(bad)
    assert code != 0 and "DL" in output


def test_image_rules():
    assert dockerfile.problems(text(), configured_port()) == []


def _final_replace(old: str, new: str):
    def edit(t: str) -> str:
        head, sep, tail = t.rpartition("\nFROM ")
        assert old in tail, old
        return head + sep + tail.replace(old, new)

    return edit


BREAKS = {
    "compiler": _final_replace("\nWORKDIR /var/lib", "\nRUN apt-get install -y --no-install-recommends gcc\nWORKDIR /var/lib"),
    "named user": _final_replace("USER 10001:10001", "USER zephyr-edge"),
    "root": _final_replace("USER 10001:10001", "USER 0"),
    "port": _final_replace("EXPOSE 8080", "EXPOSE 9000"),
    "entrypoint": _final_replace('ENTRYPOINT ["zephyr-edge", "serve"]', 'ENTRYPOINT ["zephyr-edge", "dev"]'),
    "config path": _final_replace("ZE_WORKER_CONFIG_JSON=/etc/ze-worker", "ZE_WORKER_CONFIG_JSON=/etc"),
    "bytecode": _final_replace("PYTHONDONTWRITEBYTECODE=1", "PYTHONFOO=1"),
    "unpinned": lambda t: t.replace("python:3.12.11-slim-bookworm", "python:3.12-slim", 1),
    "single stage": lambda t: t.rpartition("\nFROM ")[2].join(["FROM ", ""]),
    "no brotli": lambda t: t.replace('".[brotli]"', "."),
}


@pytest.mark.parametrize("case", BREAKS)
def test_image_rules_can_fail(case):
    broken = BREAKS[case](text())
    assert broken != text()
    assert dockerfile.problems(broken, configured_port())


def test_dockerignore_keeps_what_the_build_copies():
    ignore = DOCKERIGNORE.read_text(encoding="utf-8")
    assert dockerfile.dockerignore_problems(text(), ignore) == []
    assert dockerfile.dockerignore_problems(text(), ignore.replace("!zephyr_edge/\n", ""))
    assert dockerfile.dockerignore_problems(text(), "tests/\n")
