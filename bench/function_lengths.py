"""Longest functions of the code base (lines from `def` to the last line of the body, docstring included).

    python bench/function_lengths.py [--top 10] [--limit 60]

Prints JSON: the `top` longest functions and how many exceed `limit` lines. Tests are included.
"""
from __future__ import annotations

import argparse
import ast
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SKIP = {".venv", ".git", "runs", "data"}


def functions(root: pathlib.Path = ROOT):
    """(lines, 'path:line name') for every function and method under `root`."""
    for path in sorted(root.rglob("*.py")):
        if SKIP & set(path.relative_to(root).parts):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                yield node.end_lineno - start + 1, f"{path.relative_to(root)}:{node.lineno} {node.name}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--limit", type=int, default=60)
    args = parser.parse_args(argv)
    found = sorted(functions(), reverse=True)
    out = {"longest": [{"lines": n, "function": name} for n, name in found[:args.top]],
           "over_limit": sum(n > args.limit for n, _ in found), "limit": args.limit, "functions": len(found)}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
