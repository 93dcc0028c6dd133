"""The application's layers import one way (issue 26): commands -> jobs -> output -> reading ->
media, with `models` below them all and never importing the application.

Read from the source (every import, in functions too), so a lazy import cannot hide an upward one;
and, in a fresh interpreter, importing the command line or the media layer must not load torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The lower the rank, the lower the layer; a module may import its own rank and below.
RANKS = {"models": 0, "media": 1, "reading": 2, "output": 3, "jobs": 4, "commands": 5}
ROOT_LEAVES = {"malmm_cli", "malmm_cli.wording"}  # shared by every layer, import nothing of malmm's
TOP = {"malmm_cli.cli": 6, "malmm_cli.__main__": 7}
# Front ends beside the command line: they use the jobs as commands/ does, never commands/ nor each other
FRONT_ENDS = {"malmm_cli.llm_plugin": RANKS["commands"]}
TERMINAL = ("typer", "click", "rich")
HEAVY = ("torch", "transformers", "safetensors.torch", "accelerate", "bitsandbytes")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rank(module: str) -> int | None:
    """The layer of a module of this project; None for anything else (the standard library, torch)."""
    if module in TOP:
        return TOP[module]
    if module in FRONT_ENDS:
        return FRONT_ENDS[module]
    if module in ROOT_LEAVES:
        return 0
    parts = module.split(".")
    if parts[0] == "models":
        return RANKS["models"]
    if parts[0] == "malmm_cli" and len(parts) > 1 and parts[1] in RANKS:
        return RANKS[parts[1]]
    if parts[0] == "malmm_cli":
        raise AssertionError(f"{module} is in no layer: put it in one of {', '.join(RANKS)}")
    return None


def front_end(module: str) -> str | None:
    """Which front end a module is part of: the command line (commands/) or one of FRONT_ENDS."""
    if module in FRONT_ENDS:
        return module
    return "commands" if module.startswith("malmm_cli.commands") else None


def imports(tree: ast.Module) -> list[tuple[str, int, bool]]:
    """(module imported, line, whether at module level outside `if TYPE_CHECKING:`)."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, child.lineno, top))
                if child.module == "malmm_cli":  # `from malmm_cli import wording`: the module named
                    found.extend(
                        (f"malmm_cli.{a.name}", child.lineno, top) for a in child.names if a.name != "__version__"
                    )
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, False)
            else:
                visit(child, top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, True)
    return found


SOURCES = sorted((REPO / "malmm_cli").rglob("*.py")) + sorted((REPO / "models").rglob("*.py"))


def test_every_module_is_in_a_layer() -> None:
    for path in SOURCES:
        assert rank(module_name(path)) is not None, path


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(REPO)))
def test_imports_go_one_way(path: Path) -> None:
    name = module_name(path)
    here = rank(name)
    layer = name.split(".")[1] if name.startswith("malmm_cli.") else name.split(".")[0]
    problems = []
    for target, line, top in imports(ast.parse(path.read_text(), str(path))):
        there = rank(target)
        if there is not None and there > here and not (name in ROOT_LEAVES and target == "malmm_cli"):
            problems.append(f"line {line}: {target} is above {name}")
        if name in ROOT_LEAVES and there is not None and target != "malmm_cli":
            problems.append(f"line {line}: {name} is shared by every layer and imports nothing of malmm's")
        if front_end(name) and front_end(target) and front_end(name) != front_end(target):
            problems.append(f"line {line}: {target} is another front end: {name} stands beside it, on the jobs")
        if target.split(".")[0] in TERMINAL and layer != "commands" and name not in TOP:
            problems.append(f"line {line}: {target} outside the command layer")
        heavy = any(target == h or target.startswith(f"{h}.") for h in HEAVY)
        if heavy and top and (layer in ("media", "commands") or name in TOP or name in FRONT_ENDS):
            problems.append(f"line {line}: {target} imported when {name} is (torch waits until a job runs)")
    assert not problems, f"{path.relative_to(REPO)}:\n" + "\n".join(problems)


def test_the_walk_finds_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an upward, a terminal and a heavy import are each found."""
    source = "import torch\nimport rich\n\ndef f():\n    from malmm_cli.jobs import batch\n"
    found = imports(ast.parse(source))
    assert ("torch", 1, True) in found and ("rich", 2, True) in found and ("malmm_cli.jobs", 5, False) in found
    assert rank("malmm_cli.jobs.batch") > rank("malmm_cli.media.video")


def _loaded_after_importing(modules: list[str]) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return set(done.stdout.split())


def test_the_command_line_and_the_media_layer_load_without_torch() -> None:
    """What runs before a job starts (option parsing, every cheap check) and the media layer never
    load torch or transformers: a typo costs a second, and media runs where torch is not installed."""
    media = [module_name(p) for p in sorted((REPO / "malmm_cli" / "media").glob("*.py"))]
    commands = [module_name(p) for p in sorted((REPO / "malmm_cli" / "commands").glob("*.py"))]
    loaded = _loaded_after_importing(["malmm_cli.cli", *commands, *media])
    assert not {"torch", "transformers"} & loaded, sorted({"torch", "transformers"} & loaded)


def test_benchmarks_and_scripts_import_names_that_exist() -> None:
    """Benchmarks and scripts are not run by the suite: a module moved or a name renamed would
    leave them broken until someone measures again. Every name they import from malmm must exist."""
    import importlib
    import importlib.util

    missing = []
    for path in sorted((REPO / "benchmarks").glob("*.py")) + sorted((REPO / "scripts").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        fallbacks = {
            id(inner)
            for handler in ast.walk(tree)
            if isinstance(handler, ast.ExceptHandler)
            for inner in ast.walk(handler)
        }  # fmt: skip  (an older tree's names, measured side by side)
        for node in ast.walk(tree):
            if id(node) in fallbacks:
                continue
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").split(".")[0]
                in (
                    "malmm_cli",
                    "models",
                )
            ):
                module = importlib.import_module(node.module)
                missing += [f"{path.name}: {node.module}.{alias.name}" for alias in node.names
                            if not hasattr(module, alias.name)
                            and importlib.util.find_spec(f"{node.module}.{alias.name}") is None]  # fmt: skip
    assert not missing, missing


def test_the_command_line_loads_no_decoder_until_a_file_is_opened() -> None:
    """`malmm --help` and every refusal before a file is opened cost about the same CPU
    (benchmarks/cheap_checks.py): OpenCV, PyAV and numpy load when a video is opened."""
    loaded = _loaded_after_importing(["malmm_cli.cli", "malmm_cli.jobs.videos", "malmm_cli.jobs.watch"])
    assert not {"cv2", "av", "numpy"} & loaded, sorted({"cv2", "av", "numpy"} & loaded)
