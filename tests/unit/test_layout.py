"""The code's rooms as README.md's Code layout shows them: one package per concern, saying in its docstring
what belongs there; no import circle; the order's journey file by file, following the imports."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"
README = (ROOT / "README.md").read_text()
ROLE_STARTS = {"app/orders/controller.py", "app/consumer/__main__.py", "app/worker/tasks.py"}
"""Where the journey enters a process role (the API's route, the consumer, the worker's task): nothing above
it in the journey imports it, the role runs it."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in APP.rglob("*.py")}


def imported_by(path: Path) -> set[str]:
    """The app modules ``path`` imports, anywhere in it (functions and ``TYPE_CHECKING`` blocks included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name in MODULES and MODULES[name] != path}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            if component:
                found.append(sorted([node, *component]))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def table(heading: str) -> Iterator[list[str]]:
    """The cells of each row of the README's table whose header row starts with ``heading``."""
    lines = README[README.index(f"| {heading} |") :].splitlines()[2:]
    for line in lines:
        if not line.startswith("|"):
            return
        yield [cell.strip() for cell in line.strip("|").split(" | ")]


def docstring(path: Path) -> str:
    """The first paragraph of a module's docstring, on one line."""
    text = ast.get_docstring(ast.parse(path.read_text()), clean=True) or ""
    return " ".join(text.split("\n\n")[0].split())


def names_in(path: Path) -> set[str]:
    """Every name a module defines, uses or spells as a string."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.id if isinstance(node, ast.Name) else node.name)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
    return names


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = {name: imported_by(path) for name, path in MODULES.items()}
    assert circles(graph) == []


def test_the_readme_names_every_room_with_what_its_docstring_says_belongs_there() -> None:
    rooms = {path.parent.relative_to(ROOT).as_posix(): docstring(path) for path in APP.glob("*/__init__.py")}
    listed = {room.strip("`"): what for room, what in table("Room")}
    assert listed == rooms


def test_the_readme_names_every_module_beside_the_rooms() -> None:
    beside = README[README.index("Beside them:") :].split("\n\n")[0]
    modules = {path.relative_to(ROOT).as_posix() for path in APP.glob("*.py") if path.stem != "__init__"}
    assert set(re.findall(r"`(app/\w+\.py)`", beside)) == modules


def test_the_journey_follows_the_imports_and_names_what_each_file_has() -> None:
    journey = [(file.strip("`"), what) for file, what in table("File")]
    assert journey, "the journey's table is missing"
    seen: set[str] = set()
    for file, what in journey:
        path = ROOT / file
        named = {name.split(".")[-1] for name in re.findall(r"`([A-Za-z_][\w.]*)`", what)}
        assert named - names_in(path) == set(), f"{file} has no such names"
        importers = {module for module in seen if module_name(path) in imported_by(MODULES[module])}
        assert importers or file in ROLE_STARTS, f"no file above {file} in the journey imports it"
        seen.add(module_name(path))
