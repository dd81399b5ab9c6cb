"""Import layering: the Dagster layer and the demo mirror do not import the demo command."""

from __future__ import annotations

import ast
from pathlib import Path

import rasteret_pipelines

PACKAGE = Path(rasteret_pipelines.__file__).parent


def imported_modules(folder: Path) -> dict[str, set[str]]:
    """``{file: modules it imports}`` for every Python file under ``folder`` (lazy imports too)."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(folder.parent))] = names
    return found


def offenders(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{path}: {name}"
        for path, names in imported_modules(folder).items()
        for name in names
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


def test_dagster_layer_does_not_import_the_demo_command():
    assert offenders(PACKAGE / "defs", ("rasteret_pipelines_demo.demo",)) == []


def test_mirror_imports_neither_the_dagster_layer_nor_the_demo():
    assert offenders(PACKAGE / "mirror", ("rasteret_pipelines.defs", "rasteret_pipelines_demo.demo", "dagster")) == []


def test_the_scan_sees_lazy_imports(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from rasteret_pipelines_demo.demo import run_demo\n")
    (tmp_path / "n.py").write_text("import rasteret_pipelines.demonstration\n")
    assert offenders(tmp_path, ("rasteret_pipelines_demo.demo",)) == [
        f"{tmp_path.name}/m.py: rasteret_pipelines_demo.demo",
        f"{tmp_path.name}/m.py: rasteret_pipelines_demo.demo.run_demo",
    ]
