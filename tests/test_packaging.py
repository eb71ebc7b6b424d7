"""pyproject.toml against the tree: every package and root module installed, every console command resolves,
and one pin list (env.yaml and install_add.sh install from it; the environment running the tests has its pins)."""
import importlib
import importlib.metadata
import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PROJECT["tool"]["setuptools"]


def pins() -> dict[str, str]:
    """name -> version of every dependency and extra."""
    reqs = PROJECT["project"]["dependencies"] + sum(PROJECT["project"]["optional-dependencies"].values(), [])
    out = {}
    for req in reqs:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][A-Za-z0-9.]*)", req)
        assert match, f"pyproject.toml: '{req}' is not pinned as name==version"
        out[match.group(1)] = match.group(2)
    return out


def test_every_package_and_root_module_is_installed():
    # The project's own packages only: a checkout's .venv (as CI's) holds thousands of other packages.
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    nested = [str(p.relative_to(ROOT)) for package in packages for p in (ROOT / package).glob("*/**/__init__.py")]
    assert not nested, f"subpackages need their own entry in pyproject.toml's packages: {nested}"
    assert set(SETUPTOOLS["packages"]) == packages, (sorted(packages - set(SETUPTOOLS["packages"])),
                                                     sorted(set(SETUPTOOLS["packages"]) - packages))
    modules = {p.stem for p in ROOT.glob("*.py")}
    assert set(SETUPTOOLS["py-modules"]) == modules, (sorted(modules - set(SETUPTOOLS["py-modules"])),
                                                      sorted(set(SETUPTOOLS["py-modules"]) - modules))


def test_every_console_command_resolves_to_a_callable():
    for command, target in PROJECT["project"]["scripts"].items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr, None)), f"{command} = {target}: no such callable"


def test_one_pin_list_installed_as_pinned():
    wrong = {}
    for name, version in pins().items():
        installed = importlib.metadata.version(name).split("+")[0]  # torch's local label, e.g. 2.13.0+cpu
        if installed != version:
            wrong[name] = f"{installed} installed, {version} pinned"
    assert not wrong, f"the environment differs from pyproject.toml's pins (rerun ./install_add.sh): {wrong}"
    assert not (ROOT / "requirements.txt").exists(), "pyproject.toml is the one pin list"
    for name in ("env.yaml", "install_add.sh"):
        text = (ROOT / name).read_text()
        assert "-e .[test,wandb]" in text or '-e ".[test,wandb]"' in text, f"{name} does not install from pyproject.toml"
        own = [pin for pin in re.findall(r"[A-Za-z0-9_.\-]+==[0-9][\w.]*", text)]
        assert not own, f"{name} pins {own} itself; pyproject.toml is the one pin list"


def test_readme_says_why_each_dependency_is_pinned():
    section = (ROOT / "README.md").read_text().split("## Dependencies", 1)[-1].split("\n## ", 1)[0].lower()
    missing = [name for name in pins() if name.lower() not in section]
    assert not missing, f"README.md's Dependencies section does not name {missing}"
