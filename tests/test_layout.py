"""The layout's arrows point one way (DESIGN.md): read off every import in ``src/gradwatch``, lazy ones included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "gradwatch"

#: What each part may import of gradwatch (besides itself); ``cli`` may import everything, nothing imports it.
ALLOWED = {
    "errors": set(),
    "rundir": set(),
    "layers": {"errors"},
    "health": {"errors", "rundir"},
    "resume": {"errors", "rundir"},  # writing a run so it can be continued: the CSV logger, atomic checkpoints
    "loggers": {"health", "resume", "errors", "rundir"},
    "callbacks": {"health", "loggers", "resume", "errors", "rundir"},
    "models": {"layers", "data", "loggers", "errors", "rundir"},  # shapes and the task come from the data
    "data": {"errors"},
    "sweep": {"loggers", "errors", "rundir"},
    "report": {"errors", "rundir"},
}
#: Parts that never import torch or Lightning, at the top or inside a function: light processes import them.
LIGHT = {"rundir": ("torch", "lightning"), "sweep": ("torch", "lightning"), "report": ("torch", "lightning")}


def part(path: Path) -> str:
    """``health`` for ``health/stats.py``, ``rundir`` for ``rundir.py``."""
    relative = path.relative_to(SRC)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


MODULES = sorted(p for p in SRC.rglob("*.py") if part(p) in ALLOWED or part(p) == "cli")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path):
    own = part(path)
    used = {name.split(".")[1] for name in imports(path) if name.startswith("gradwatch.")}
    used.discard(own)
    if own == "cli":
        return
    assert used <= ALLOWED[own], f"{own} imports {sorted(used - ALLOWED[own])}"
    heavy = [name for name in imports(path) if name.split(".")[0] in LIGHT.get(own, ())]
    assert not heavy, f"{own} must stay light, imports {heavy}"


def test_the_allowed_arrows_have_no_circle():
    seen: dict[str, int] = {}

    def visit(node: str) -> None:
        seen[node] = 1
        for target in ALLOWED[node]:
            assert seen.get(target) != 1, f"a circle through {node} and {target}"
            if target not in seen:
                visit(target)
        seen[node] = 2

    for node in ALLOWED:
        if node not in seen:
            visit(node)
