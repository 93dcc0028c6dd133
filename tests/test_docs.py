"""README.md and docs/ point at things that exist: the pages and headings they link to, the files
they name, and the modules and names of the Python API they teach.

The README used to be one 67 KB page; its guide is now split over docs/, held together by links,
and it names code by path (issue 26 moved the modules into sub-packages).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# A record of past runs names the paths of its time (the commands it ran): not checked for names.
RECORDS = {"mutation.md"}

LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.M)
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
FILE = re.compile(r"\b(?:models|benchmarks|scripts|tests)/[\w/.-]+\.(?:py|sh|pt)\b")
APP_FILE = re.compile(r"\bmalmm_cli/(?:\w+/)*(?:\w+\.py\b)?")
DOTTED = re.compile(r"\b(?:malmm_cli|models)(?:\.(?!md\b)\w+)+")
IMPORT = re.compile(r"^from ((?:malmm_cli|models)[\w.]*) import (.+)$", re.M)


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_anchor(heading) for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8")))}


def test_links_point_at_pages_and_headings_that_exist() -> None:
    broken = []
    for page in PAGES:
        for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_named_files_exist() -> None:
    missing = [
        f"{page.name}: {name}"
        for page in PAGES
        if page.name not in RECORDS
        for name in sorted(set(FILE.findall(page.read_text(encoding="utf-8"))))
        if not (REPO / name).exists()
    ]
    assert not missing, "\n".join(missing)


def _resolves(dotted: str) -> bool:
    """A module, or a name in one (`malmm_cli.output.html_report.to_html`)."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        module = ".".join(parts[:split])
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package that does not exist
            found = False
        if found:
            value = importlib.import_module(module)
            for name in parts[split:]:
                if not hasattr(value, name):
                    return False
                value = getattr(value, name)
            return True
    return False


def unresolved(page: Path) -> list[str]:
    """The app's files, modules and imported names that a page mentions and that do not exist."""
    text = page.read_text(encoding="utf-8")
    missing = [name for name in sorted(set(APP_FILE.findall(text))) if not (REPO / name).exists()]
    missing += [name for name in sorted(set(DOTTED.findall(text))) if not _resolves(name)]
    for module, names in IMPORT.findall("\n".join(FENCE.findall(text))):
        for name in names.split(","):
            if not _resolves(f"{module}.{name.strip()}"):
                missing.append(f"from {module} import {name.strip()}")
    return missing


def test_the_code_the_docs_name_exists() -> None:
    missing = [f"{page.name}: {name}" for page in PAGES if page.name not in RECORDS for name in unresolved(page)]
    assert not missing, "\n".join(missing)
