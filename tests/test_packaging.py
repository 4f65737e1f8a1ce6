"""What ``pip install .`` gives users: the sdist holds what the wheel needs, the wheel
(built from that sdist, as ``python -m build`` does) holds every module of the source
package, and every entry point it declares resolves when the wheel alone is installed."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "zephyr_edge"
#: Files of the repository the sdist must carry for the wheel to build from it.
SDIST_FILES = {"setup.py", "setup.cfg", "README.md"}


def source_modules() -> set[str]:
    """Every ``.py`` of the source package, relative to the repository."""
    return {p.relative_to(REPO).as_posix() for p in (REPO / PACKAGE).rglob("*.py")}


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist and the wheel built from it (``python -m build``, without network)."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)])
    return out


def only(folder: Path, pattern: str) -> Path:
    [path] = folder.glob(pattern)
    return path


def wheel_names(dist: Path) -> set[str]:
    with zipfile.ZipFile(only(dist, "*.whl")) as wheel:
        return set(wheel.namelist())


def missing_modules(names: set[str], prefix: str = "") -> set[str]:
    """Modules of the source package absent from an archive listing."""
    return {m for m in source_modules() if prefix + m not in names}


def test_sdist_holds_the_metadata_files_and_every_module(dist):
    with tarfile.open(only(dist, "*.tar.gz")) as sdist:
        names = set(sdist.getnames())
    [root] = {n.split("/", 1)[0] for n in names}
    assert {root + "/" + f for f in SDIST_FILES} <= names
    assert missing_modules(names, root + "/") == set()


def test_wheel_holds_every_module_of_the_source_package(dist):
    assert missing_modules(wheel_names(dist)) == set()


def test_module_check_can_fail():
    dropped = f"{PACKAGE}/storage/local.py"
    assert missing_modules(source_modules() - {dropped}) == {dropped}


def entry_points(dist: Path) -> dict[str, dict[str, str]]:
    """``{group: {name: "module:attr"}}`` from the wheel's ``entry_points.txt``."""
    with zipfile.ZipFile(only(dist, "*.whl")) as wheel:
        [path] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser(delimiters=("=",))
        parser.optionxform = str  # keep names as written
        parser.read_string(wheel.read(path).decode("utf-8"))
    return {group: dict(parser[group]) for group in parser.sections()}


#: Run against the installed copy: import every entry point's target; report failures and
#: every module of the package loaded from elsewhere than the installed copy (argv[2]).
RESOLVE = """
import importlib, json, os, sys
failed = {}
for target in json.loads(sys.argv[1]):
    module, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in filter(None, attr.split(".")):
            obj = getattr(obj, part)
    except Exception as exc:
        failed[target] = f"{type(exc).__name__}: {exc}"
elsewhere = sorted(
    name for name, mod in list(sys.modules.items())
    if name.split(".")[0] == "zephyr_edge"
    and not os.path.realpath(getattr(mod, "__file__", None) or "/").startswith(os.path.realpath(sys.argv[2]) + os.sep)
)
print(json.dumps({"failed": failed, "elsewhere": elsewhere}))
"""


def dependency_paths() -> list[str]:
    """Where this interpreter's installed dependencies live (site-packages)."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def test_every_entry_point_resolves_from_the_installed_wheel(dist, tmp_path):
    points = entry_points(dist)
    assert set(points) >= {"console_scripts", "zephyr_edge.storage", "zephyr_edge.kv"}
    site = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
         str(only(dist, "*.whl"))])
    targets = sorted({t.strip() for group in points.values() for t in group.values()})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # -S: no .pth files, so an editable install of the source tree in this environment
    # cannot answer the imports; the dependencies come from site-packages, after the wheel.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *dependency_paths()])}
    result = run([sys.executable, "-S", "-c", RESOLVE, json.dumps(targets), str(site)], cwd=elsewhere, env=env)
    report = json.loads(result.stdout)
    assert report == {"failed": {}, "elsewhere": []}
