"""Comments, docstrings and docs cite only what a reader of the repository can open: every
markdown file they name exists in the repository, every relative link of a markdown file
leads to a file (and heading) that exists, and none cites the numbered sections of
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


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """The heading anchors GitHub gives a markdown file (lower case, punctuation dropped,
    spaces as hyphens, ``-1``, ``-2``... on repeats); headings in code blocks do not count."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def link_problems(path: Path, root: Path = REPO) -> list[str]:
    problems = []
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists() or root not in resolved.parents and resolved != root:
            problems.append(f"{path.relative_to(root)}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{path.relative_to(root)}: {target} (no such heading)")
    return problems


def test_relative_markdown_links_resolve():
    problems = [p for path in text_files() if path.suffix == ".md" for p in link_problems(path)]
    assert not problems, "markdown links that lead nowhere:\n" + "\n".join(problems)


def test_the_link_check_finds_broken_links(tmp_path):
    doc = tmp_path.resolve() / "a.md"
    (tmp_path / "b.md").write_text("# Some `code` heading\n\n## Twice\n## Twice\n", encoding="utf-8")
    doc.write_text("[ok](b.md#some-code-heading) [ok](b.md#twice-1) [x](c.md) [y](b.md#nope) "
                   "[web](https://example.com/x.md) [self](#top)\n# Top\n", encoding="utf-8")
    assert link_problems(doc, tmp_path.resolve()) == ["a.md: c.md (no such file)", "a.md: b.md#nope (no such heading)"]
