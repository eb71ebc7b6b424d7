"""The docs name what exists: docs/architecture.md lists every module of the project and names only modules and
attributes that exist; the README and docs pages point only at files that exist."""
import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.(?:py|md|yaml|sh))\b")
DOTTED = re.compile(r"`([a-z_]+(?:\.[A-Za-z_]\w*)+)")
FILE = re.compile(r"\.(py|md|yaml|sh|pt|pt2|json|jsonl|csv|png|npz)$")  # `configs.yaml` names a file, not an attribute


def units() -> set[str]:
    return {p.stem for p in ROOT.glob("*.py")} | {p.parent.name for p in ROOT.glob("*/__init__.py")}


def modules() -> list[str]:
    """Every module of the project as a path: root scripts and package modules (package __init__ and __main__
    files are the package's own entry, named by its folder)."""
    found = [p.name for p in ROOT.glob("*.py")]
    for package in sorted(ROOT.glob("*/__init__.py")):
        found += [str(p.relative_to(ROOT)) for p in package.parent.rglob("*.py")
                  if p.name not in ("__init__.py", "__main__.py")]
    return sorted(found)


def resolve(dotted: str):
    """The object a dotted project name refers to (module, then attributes), or raise naming what is missing."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise AttributeError(f"{name} has no {attr}")
            obj = getattr(obj, attr)
            name += "." + attr
        return obj
    raise ModuleNotFoundError(dotted)


def missing_files(page: pathlib.Path) -> list[str]:
    """Paths into the repository the page names that do not exist: under a project folder (a package, docs/,
    bench/, tests/) or a root module; outputs of runs (`runs/...`, `results.md`) and placeholders a reader
    replaces (`sweeps/specs/my_study.yaml`) are not checked."""
    folders = units() | {"docs", "bench", "tests"}
    out = []
    for path in sorted(set(PATH.findall(page.read_text()))):
        first = path.split("/")[0]
        ours = first in folders if "/" in path else path.endswith(".py") and path[:-3] in units() | {"setup"}
        placeholder = any(part.startswith("my_") for part in path.split("/"))
        if ours and not placeholder and not (ROOT / path).exists() and not (page.parent / path).exists():
            out.append(path)
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_files_the_page_names_exist(page):
    missing = missing_files(page)
    assert not missing, f"{page.relative_to(ROOT)} names files that do not exist: {missing}"


def test_architecture_lists_every_module():
    named = set(PATH.findall(ARCHITECTURE.read_text()))
    missing = [m for m in modules() if m not in named]
    assert not missing, f"docs/architecture.md does not list {missing}"


def test_architecture_names_only_what_exists():
    wrong = []
    for dotted in sorted(set(DOTTED.findall(ARCHITECTURE.read_text()))):
        if dotted.split(".")[0] not in units() or FILE.search(dotted):
            continue  # not a project name: `config.task`, `torch.load`, `teacher.pt`, ...
        try:
            resolve(dotted)
        except (ImportError, AttributeError) as err:
            wrong.append(f"{dotted}: {err}")
    assert not wrong, "docs/architecture.md names what does not exist:\n" + "\n".join(wrong)


def test_the_checks_see_a_wrong_name():
    assert resolve("training.run_state.RunDir").__name__ == "RunDir"
    with pytest.raises(AttributeError, match="dreamer_distill has no evaluate"):
        resolve("dreamer_distill.evaluate")
    with pytest.raises(AttributeError, match="training.student has no load_agent"):
        resolve("training.student.load_agent")
