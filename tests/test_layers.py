"""Imports point one way: a package imports only from lower layers (or acyclically within its own layer).

Every `import` and `from ... import` of the project's modules is read with `ast`, those inside functions
included (the heavy imports are deferred there, and a deferred upward import is still an upward import).
"""
import ast
import pathlib
from collections import defaultdict

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Lowest first. Every top-level .py file not named here is an entry point (the top layer).
LAYERS = [
    ("tools",),
    ("envs", "replay"),
    ("configs",),
    ("models",),
    ("methods",),
    ("training", "collection", "ood"),
    ("artefacts", "sweeps", "analysis"),
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
SCRIPTS = len(LAYERS)
# Calls that make a loop: a training step. methods/ holds loss hooks, which the loops in training/ call.
LOOP_CALLS = {"step", "backward", "zero_grad"}


def units(root: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """Importable top-level name -> its source files: each package (a folder with __init__.py) and root module."""
    found = {p.stem: [p] for p in root.glob("*.py")}
    for init in root.glob("*/__init__.py"):
        found[init.parent.name] = sorted(init.parent.rglob("*.py"))
    return found


def layer(unit: str, root: pathlib.Path) -> int:
    if unit in LAYER:
        return LAYER[unit]
    if (root / f"{unit}.py").is_file():
        return SCRIPTS
    raise AssertionError(f"package {unit}/ has no layer: add it to LAYERS in tests/test_layers.py")


def imported(path: pathlib.Path, root: pathlib.Path):
    """(module name, line) of every import in the file, relative imports resolved against its package."""
    package = path.relative_to(root).parent.parts
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                yield ".".join(base + ((node.module,) if node.module else ())), node.lineno
            else:
                yield node.module, node.lineno


def edges(root: pathlib.Path) -> dict[tuple[str, str], list[str]]:
    """(importer, imported) between distinct units of the project -> the 'file:line' places that import."""
    found = units(root)
    out = defaultdict(list)
    for unit, files in found.items():
        for path in files:
            for name, line in imported(path, root):
                target = name.split(".")[0]
                if target in found and target != unit:
                    out[unit, target].append(f"{path.relative_to(root)}:{line}")
    return out


def upward(root: pathlib.Path) -> list[str]:
    return [f"{a} (layer {layer(a, root)}) imports {b} (layer {layer(b, root)}) at {', '.join(places)}"
            for (a, b), places in sorted(edges(root).items()) if layer(b, root) > layer(a, root)]


def cycles(root: pathlib.Path) -> list[list[str]]:
    """Each cycle of the unit graph once, as [a, b, ..., a] (depth-first search, back edges)."""
    graph = defaultdict(set)
    for a, b in edges(root):
        graph[a].add(b)
    state, stack, found = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def loop_calls(root: pathlib.Path, package: str) -> list[str]:
    """'file:line .name()' for every call of a LOOP_CALLS attribute in the package."""
    out = []
    for path in sorted((root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LOOP_CALLS):
                out.append(f"{path.relative_to(root)}:{node.lineno} .{node.func.attr}()")
    return out


def test_every_package_has_a_layer():
    for unit in units(ROOT):
        layer(unit, ROOT)


def test_no_upward_import():
    found = upward(ROOT)
    assert not found, "imports must point down the layers " + " -> ".join("/".join(u) for u in LAYERS) + \
        " -> scripts:\n" + "\n".join(found)


def test_no_import_cycle():
    found = cycles(ROOT)
    places = edges(ROOT)
    assert not found, "import cycles:\n" + "\n".join(
        " -> ".join(c) + "  (" + "; ".join(places[a, b][0] for a, b in zip(c, c[1:])) + ")" for c in found)


def test_methods_hold_no_loops():
    found = loop_calls(ROOT, "methods")
    assert not found, "methods/ holds loss hooks; optimizer steps and backward passes belong in training/:\n" + \
        "\n".join(found)


@pytest.fixture
def tree(tmp_path):
    """A miniature project: tools <- envs <- configs, each importing only downward."""
    def write(rel, text):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    write("tools.py", "import os\n")
    write("envs/__init__.py", "from .tasks import x\n")
    write("envs/tasks.py", "import tools\nx = 1\n")
    write("configs.py", "from envs import tasks\n")
    write("methods/__init__.py", "")
    write("methods/base.py", "def loss(x):\n    return x.sum()\n")
    write("sweep.py", "import configs\n")
    return write, tmp_path


def test_checks_see_what_they_should(tree):
    """The checks find a deferred upward import, a same-layer cycle and a loop in methods/ when planted."""
    write, root = tree
    assert upward(root) == [] and cycles(root) == [] and loop_calls(root, "methods") == []
    write("envs/tasks.py", "import tools\nx = 1\ndef f():\n    from configs import y\n")
    assert upward(root) == ["envs (layer 1) imports configs (layer 2) at envs/tasks.py:4"]
    assert cycles(root) == [["configs", "envs", "configs"]]
    write("replay/__init__.py", "from ..envs import tasks\n")  # relative import resolves to envs
    write("envs/wrappers.py", "def g():\n    import replay.buffer\n")
    assert ["envs", "replay", "envs"] in cycles(root), cycles(root)
    write("methods/base.py", "def fit(opt, loss):\n    loss.backward()\n    opt.step()\n")
    assert loop_calls(root, "methods") == ["methods/base.py:2 .backward()", "methods/base.py:3 .step()"]
    write("newpkg/__init__.py", "")
    with pytest.raises(AssertionError, match="newpkg/ has no layer"):
        layer("newpkg", root)
