"""Shape rules the style guide sets for the agent's and tools' code, checked on its syntax tree."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60  # a longer function does more than one job: split it into named parts


def long_functions(folder: Path, limit: int) -> list[str]:
    """``folder/file.py:line name (N lines)`` of every function or method under ``folder`` longer
    than ``limit`` lines, from its ``def`` (decorators not counted) to its last line."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(folder.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_the_checker_finds_a_long_method_and_passes_a_short_function(tmp_path):
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "long.py").write_text(f"class C:\n    def method(self):\n{body}\n\ndef short():\n    return 1\n")
    assert long_functions(tmp_path / "code", MAX_FUNCTION_LINES) == [
        f"code/long.py:2 method ({MAX_FUNCTION_LINES + 1} lines)"]


def test_no_function_in_agent_or_tools_is_over_60_lines():
    found = [line for folder in ("agent", "tools") for line in long_functions(REPO / folder, MAX_FUNCTION_LINES)]
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(found)
