"""The largest modules and functions of kernels/ and service/, in lines.

    python docs/code_sizes.py [CHECKOUT]

What a reader meets first when opening the package; used to keep modules and drivers
small (issue 13). Counts from the source's own syntax tree (a function's lines run from
its ``def`` to its last statement, nested functions counted on their own too).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def sizes(root: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    modules, functions = [], []
    for path in sorted([*root.glob("kernels/**/*.py"), *root.glob("service/**/*.py")]):
        source = path.read_text()
        rel = path.relative_to(root)
        modules.append((len(source.splitlines()), str(rel)))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{rel}:{node.name}"))
    return sorted(modules, reverse=True), sorted(functions, reverse=True)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
    modules, functions = sizes(root)
    print("modules:  ", ", ".join(f"{name} {n}" for n, name in modules[:8]))
    print("functions:", ", ".join(f"{name} {n}" for n, name in functions[:10]))


if __name__ == "__main__":
    main()
