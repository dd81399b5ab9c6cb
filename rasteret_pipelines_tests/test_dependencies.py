"""Every third-party package the shipped code imports is declared in pyproject.toml.

The imports are read from the source with ``ast`` (lazy imports inside functions count), each
module is mapped to the distributions that provide it (``importlib.metadata``), and one of those
must be declared: in ``dependencies``, or, for the optional parts, in the extra that installs them.
A package that arrives only through another one's dependencies breaks when that one drops it.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

from rasteret_pipelines_tests.test_layout import DEMO_PACKAGE, PACKAGE, REPO, imported_modules

FIRST_PARTY = {"rasteret_pipelines", "rasteret_pipelines_demo"}
EXTRAS_FOR_LIBRARY = ("postgres", "obstore", "dask")
"""The extras a user installs for an optional part of the package (``test`` and ``bench`` are not
for the shipped code)."""


def _name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement (PEP 503 normalisation)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(pyproject: Path = REPO / "pyproject.toml") -> set[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    names = {_name(r) for r in project["dependencies"]}
    for extra in EXTRAS_FOR_LIBRARY:
        names |= {_name(r) for r in project["optional-dependencies"][extra]}
    return names


def third_party_imports(paths: list[Path], root: Path = REPO) -> dict[str, set[str]]:
    """``{top-level module: files importing it}`` for imports that are neither stdlib nor ours."""
    found: dict[str, set[str]] = {}
    for path, names in imported_modules(paths, root).items():
        for name in names:
            top = name.split(".")[0]
            if top and top not in sys.stdlib_module_names and top not in FIRST_PARTY and top != "__future__":
                found.setdefault(top, set()).add(path)
    return found


def undeclared(imports: dict[str, set[str]], names: set[str]) -> list[str]:
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module, files in sorted(imports.items()):
        dists = {_name(d) for d in providers.get(module, [])}
        if not dists & names:
            missing.append(f"{module} (from {sorted(dists) or 'no installed distribution'}) in {sorted(files)[0]}")
    return missing


def shipped_modules() -> list[Path]:
    return [*PACKAGE.rglob("*.py"), *DEMO_PACKAGE.rglob("*.py")]


def test_every_imported_package_is_declared():
    imports = third_party_imports(shipped_modules())
    assert {"numpy", "aiohttp", "yarl", "urllib3", "requests", "affine", "pydantic", "dagster"} <= set(imports)
    assert undeclared(imports, declared()) == []


def test_the_check_sees_a_package_that_arrives_only_transitively(tmp_path):
    (tmp_path / "m.py").write_text("import numpy\nimport json\n\ndef f():\n    from yarl import URL\n")
    imports = third_party_imports([tmp_path / "m.py"], root=tmp_path)
    assert imports == {"numpy": {"m.py"}, "yarl": {"m.py"}}
    assert undeclared(imports, {"numpy"}) == ["yarl (from ['yarl']) in m.py"]
    assert undeclared(imports, {"numpy", "yarl"}) == []


@pytest.mark.parametrize("requirement, name", [("dask[array]>=2025.1", "dask"), ("lazy_loader>=0.4", "lazy-loader")])
def test_requirement_names_are_normalised(requirement, name):
    assert _name(requirement) == name
