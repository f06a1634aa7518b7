"""No function in the packages' sources is longer than 60 lines (issue 21).

A longer function is split into named steps that each read at once. Triton kernels are exempt:
a kernel is one compiled program, and splitting it would only move its body into @triton.jit
helpers. Benchmarks (bench/) and tests are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 60


def _is_triton_kernel(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Decorated by triton (@triton.jit, @triton.autotune(...), @triton.heuristics(...))."""
    for decorator in fn.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if ast.unparse(target).startswith("triton."):
            return True
    return False


def long_functions(path: Path) -> list[tuple[str, int]]:
    """(name, lines) of each function or method in `path` longer than MAX_LINES, counted from
    its `def` line to its last line (decorators not included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_LINES and not _is_triton_kernel(node):
                found.append((node.name, lines))
    return found


def test_sources_are_found() -> None:
    sources = sorted(ROOT.glob("packages/*/src/**/*.py"))
    packages = {p.relative_to(ROOT).parts[1] for p in sources}
    assert {"tr-tokenizer", "ismail-core", "ismail-kernels", "ismail-serve"} <= packages


def test_no_function_is_longer_than_60_lines() -> None:
    too_long = [
        f"{path.relative_to(ROOT)}:{name}:{lines}"
        for path in sorted(ROOT.glob("packages/*/src/**/*.py"))
        for name, lines in long_functions(path)
    ]
    assert not too_long, (
        f"functions over {MAX_LINES} lines (split them into named steps):\n" + "\n".join(too_long)
    )


def test_the_check_finds_long_functions_but_not_kernels(tmp_path: Path) -> None:
    body = "\n".join(["    x = 1"] * MAX_LINES)  # with its def line: one over
    method_body = body.replace("    ", "        ")
    source = tmp_path / "module.py"
    source.write_text(
        f"@triton.jit\ndef kernel():\n{body}\n\n"
        f"@triton.autotune(configs=[], key=[])\n@triton.jit\ndef tuned():\n{body}\n\n"
        f"class C:\n    def method(self):\n{method_body}\n\n"
        f"def short():\n    return 1\n"
    )
    assert long_functions(source) == [("method", MAX_LINES + 1)]
