"""The documentation stays true to the code: the configuration reference (docs/configuration.md)
lists every key of the core and of the built-in backends with the default the code really
uses, the scaling examples (docs/replication.md) load, and the README's test command is the
one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from zephyr_edge import plugins
from zephyr_edge.settings import config

from tests.deploy.support import config_problems, filled_in

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
CONFIGURATION = REPO / "docs" / "configuration.md"
REPLICATION = REPO / "docs" / "replication.md"


def _rows() -> dict[str, str]:
    """key -> default column of the configuration reference's tables."""
    rows = {}
    for line in CONFIGURATION.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*`(ZE_WORKER_[A-Z0-9_]+)`\s*\|\s*([^|]*)\|", line)
        if m:
            rows[m.group(1)] = m.group(2).strip()
    return rows


def _documented_default(field: attrs.Attribute) -> str:
    if field.default is attrs.NOTHING:
        return "required"
    value = config.make_converter().unstructure(field.default)
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if value == "":
        return "empty"
    return f"`{value}`"


def _fields(kind: str | None, name: str | None):
    if kind is None:
        return [(f, "") for f in attrs.fields(attrs.resolve_types(config.WorkerConfig))]
    cls = plugins.load(kind, name)
    if cls.Options is None:
        return []
    return [(f, cls.options_prefix) for f in attrs.fields(attrs.resolve_types(cls.Options))]


@pytest.mark.parametrize(
    "kind,name", [(None, None), ("storage", "s3"), ("storage", "local"), ("kv", "redis"), ("kv", "local")]
)
def test_every_key_is_documented_with_its_default(kind, name):
    rows = _rows()
    for field, prefix in _fields(kind, name):
        key = config.key_of(field, prefix)
        assert key in rows, f"{key} is missing from docs/configuration.md"
        expected = _documented_default(field)
        assert rows[key].startswith(expected), f"{key}: docs/configuration.md says {rows[key]!r}, code default is {expected}"


def test_config_file_key_is_documented():
    assert config.CONFIG_FILE_KEY in _rows()


def _scaling_examples() -> list[str]:
    return re.findall(r"```jsonc\n(.*?)```", REPLICATION.read_text(encoding="utf-8"), re.DOTALL)


def test_the_scaling_examples_load(tmp_path):
    """Each worked configuration of the three scaling modes is refused with its ``<...>``
    placeholders, loads through the worker's own loader once they are filled in, and
    configures the mode it illustrates."""
    examples = _scaling_examples()
    assert len(examples) == 3
    loaded = []
    for i, example in enumerate(examples):
        problems = config_problems(example)
        assert problems and all("is still a placeholder" in p for p in problems), problems
        path = tmp_path / f"example-{i}.json"
        path.write_text(filled_in(example), encoding="utf-8")
        loaded.append(config.load({config.CONFIG_FILE_KEY: str(path)}))
    same_region, multi_region, combined = (c.worker for c in loaded)
    assert not same_region.replica_name and not same_region.replicas_urls
    assert multi_region.replica_name == "us-east-1" and len(multi_region.replicas_urls) == 2
    assert combined.replica_name == "eu-west-1" and len(combined.replicas_urls) == 2
    assert loaded[2].kv.name == "redis-cluster"
    assert all(not c.warnings for c in loaded), [c.warnings for c in loaded]


CI_RUN = README.parent / ".ci" / "run"
KEEP_IDENTICAL = "# Keep this line identical to the test command in README.md"


def readme_test_command() -> str:
    section = README.read_text(encoding="utf-8").split("\n## Running the tests", 1)[1].split("\n## ", 1)[0]
    [command] = re.findall(r"```sh\n(.*?)\n```", section, re.DOTALL)
    return command


def ci_test_command(text: str) -> str:
    lines = text.splitlines()
    [at] = [i for i, line in enumerate(lines) if line.startswith(KEEP_IDENTICAL)]
    return lines[at + 1]


def editable_installs(text: str) -> list[str]:
    """pip install lines that install something editable (what users never get)."""
    return [line for line in text.splitlines()
            if "pip install" in line and re.search(r"(^|\s)(-e|--editable)(\s|=|$)", line)]


def test_readme_and_ci_run_the_same_test_command_without_editable_installs():
    ci = CI_RUN.read_text(encoding="utf-8")
    assert ci_test_command(ci) == readme_test_command()
    assert editable_installs(ci) == [] and editable_installs(readme_test_command()) == []
    assert editable_installs("python -m pip install -q -e '.[test]' && pytest")


def test_ci_builds_the_wheel_and_runs_the_quickstart_with_it():
    ci = CI_RUN.read_text(encoding="utf-8")
    assert "python -m build" in ci and "zephyr_edge-*.whl" in ci
    assert '"$work/venv/bin/zephyr-edge" dev' in ci and "/readyz" in ci and "kill -TERM" in ci
