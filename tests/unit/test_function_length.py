"""Every function of the service (app/) and of its local cluster (cluster/) reads on one screen: 40 lines at
most, from its ``def`` to the end of its body."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
CODE = (ROOT / "app", ROOT / "cluster")
MAX_LINES = 40


def long_functions(source: str) -> dict[str, int]:
    """The functions of ``source`` (methods and nested ones included) longer than ``MAX_LINES``, by name."""
    return {
        node.name: length
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := (node.end_lineno or node.lineno) - node.lineno + 1) > MAX_LINES
    }


def test_no_function_in_app_or_cluster_is_over_40_lines() -> None:
    found = {
        f"{path.relative_to(ROOT)}: {name}": length
        for directory in CODE
        for path in sorted(directory.rglob("*.py"))
        for name, length in long_functions(path.read_text()).items()
    }
    assert found == {}


def function(name: str, lines: int, indent: str = "") -> str:
    body = "".join(f"{indent}    x = {n}\n" for n in range(lines - 1))
    return f"{indent}async def {name}() -> None:\n{body}"


def test_a_function_over_the_limit_is_found_wherever_it_is() -> None:
    source = function("fits", MAX_LINES) + "class A:\n" + function("method", MAX_LINES + 1, indent="    ")

    assert long_functions(source) == {"method": MAX_LINES + 1}
