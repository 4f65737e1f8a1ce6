"""Comments, docstrings and docs cite only what a reader of the repository can open: every
markdown file they name exists in the repository, and none cites the numbered sections of
the design notes the code was written from, which are not shipped. (This file is not
scanned: it spells out the patterns it looks for.)"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", "__pycache__", ".cache", "node_modules", ".venv", "venv", "build", "dist", ".eggs"}
SUFFIXES = {".py", ".md", ".cfg", ".toml", ".ini", ".txt", ".yaml", ".yml", ".json", ".js", ".mjs", ".sh",
            ".service", ".conf"}
URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+")
MD_NAME = re.compile(r"(?<![\w.-])((?:[\w.-]+/)*[\w-]+\.md)\b")
#: Citations of the unshipped design notes: a numbered protocol section, their folder.
OUTSIDE = re.compile(r"\bprotocol (?:section )?\d|shared/docs\b")


def text_files() -> list[Path]:
    found = []
    for path in REPO.rglob("*"):
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in path.relative_to(REPO).parts):
            continue
        if path == Path(__file__).resolve():
            continue
        if path.is_file() and (path.suffix in SUFFIXES or path.name in ("Dockerfile", "run")):
            found.append(path)
    return found


def test_cited_markdown_files_exist_in_the_repository():
    files = text_files()
    shipped = {p.relative_to(REPO).as_posix() for p in files if p.suffix == ".md"}
    names = {name.rsplit("/", 1)[-1] for name in shipped}
    missing = []
    for path in files:
        text = URL.sub("", path.read_text(encoding="utf-8", errors="replace"))
        for number, line in enumerate(text.splitlines(), 1):
            for cited in MD_NAME.findall(line):
                if cited.rsplit("/", 1)[-1] not in names:
                    missing.append(f"{path.relative_to(REPO)}:{number}: {cited}")
    assert not missing, "documents cited but not in the repository:\n" + "\n".join(missing)


def test_no_citation_of_numbered_protocol_sections():
    found = []
    for path in text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "citations of documents outside the repository:\n" + "\n".join(found)
