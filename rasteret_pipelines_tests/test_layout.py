"""Import layering and ARCHITECTURE.md, checked from the source (``ast``: lazy imports count).

The layers (see ARCHITECTURE.md):

* the core library, ``rasteret_pipelines`` without ``defs/``, ``definitions.py`` and
  ``cli.py``, imports neither Dagster (``dagster``, ``dagster_*``) nor ``rasteret_pipelines_demo``;
* the Dagster layer (``rasteret_pipelines/defs`` and ``definitions.py``) may use the demo
  mirror lazily (its "demo" STAC setting) but never the demo command
  (``rasteret_pipelines_demo.demo``);
* ``rasteret_pipelines_demo``: every module except ``demo.py`` imports neither Dagster, nor the
  Dagster layer (``rasteret_pipelines.defs``, ``rasteret_pipelines.definitions``), nor the demo
  command. ``demo.py`` is the demo command: it builds the project's Definitions and runs its
  jobs, so it (and only it) imports ``dagster`` and ``rasteret_pipelines.defs``;
* ``cli.py`` imports the demo command lazily, inside ``rasteret-pipelines demo``;
* inside the core library the layers import downwards only: ``cog`` < ``collections`` <
  ``reading`` (with ``aois.py`` and ``fields.py``) < ``products`` < ``api``, all above ``errors``, ``redaction``,
  ``hrefs``, ``s3config`` and ``storage``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import rasteret_pipelines
import rasteret_pipelines_demo

PACKAGE = Path(rasteret_pipelines.__file__).parent
DEMO_PACKAGE = Path(rasteret_pipelines_demo.__file__).parent
REPO = PACKAGE.parent
ARCHITECTURE = REPO / "ARCHITECTURE.md"

DAGSTER = ("dagster", "dagster_*")
DAGSTER_LAYER = ("rasteret_pipelines.defs", "rasteret_pipelines.definitions")
DEMO_COMMAND = ("rasteret_pipelines_demo.demo",)


def _module_name(path: Path, root: Path) -> list[str]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(paths: list[Path], root: Path = REPO) -> dict[str, set[str]]:
    """``{file: modules it imports}`` for the Python files ``paths``: ``import`` and ``from``
    statements anywhere (lazy ones inside functions too), relative imports resolved, and
    ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name. ``from m
    import n`` yields ``m`` and ``m.n`` (``n`` may be a submodule)."""
    found = {}
    for path in sorted(paths):
        package = _module_name(path, root)
        if path.name != "__init__.py":
            package = package[:-1]
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                if module:
                    names.add(module)
                names.update(f"{module}.{alias.name}".lstrip(".") for alias in node.names)
            elif (
                isinstance(node, ast.Call)
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and (
                    (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                    or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
                )
            ):
                names.add(node.args[0].value)
        found[path.relative_to(root).as_posix()] = names
    return found


def _matches(name: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return name.split(".")[0].startswith(pattern[:-1])
    return name == pattern or name.startswith(pattern + ".")


def offenders(paths: list[Path], forbidden: tuple[str, ...], root: Path = REPO) -> list[str]:
    """``"file: module"`` for every import in ``paths`` of a module in ``forbidden`` (a name
    covers its submodules; ``"dagster_*"`` is any top-level module starting with ``dagster_``)."""
    return sorted(
        f"{path}: {name}"
        for path, names in imported_modules(paths, root).items()
        for name in names
        if any(_matches(name, f) for f in forbidden)
    )


def core_modules() -> list[Path]:
    """The core library: ``rasteret_pipelines`` except the Dagster layer and the CLI."""
    return [
        p
        for p in PACKAGE.rglob("*.py")
        if "defs" not in p.relative_to(PACKAGE).parts[:1]
        and p.relative_to(PACKAGE).as_posix() not in ("definitions.py", "cli.py")
    ]


def test_core_library_imports_neither_dagster_nor_the_demo_package():
    core = core_modules()
    assert PACKAGE / "cog" / "reader.py" in core and PACKAGE / "defs" / "assets.py" not in core
    assert offenders(core, (*DAGSTER, "rasteret_pipelines_demo")) == []


def test_dagster_layer_does_not_import_the_demo_command():
    layer = [*(PACKAGE / "defs").rglob("*.py"), PACKAGE / "definitions.py"]
    assert offenders(layer, DEMO_COMMAND) == []
    # what it may use: the demo mirror, lazily, to find it (never to start it) for the "demo" STAC setting
    uses = imported_modules(layer)["rasteret_pipelines/defs/resources.py"]
    assert "rasteret_pipelines_demo.demo_mirror.running_mirror_url" in uses


def test_demo_package_is_independent_of_dagster_except_the_demo_command():
    modules = [p for p in DEMO_PACKAGE.rglob("*.py") if p.name != "demo.py"]
    assert DEMO_PACKAGE / "demo_mirror.py" in modules
    assert offenders(modules, (*DAGSTER, *DAGSTER_LAYER, *DEMO_COMMAND)) == []
    # the demo command drives Dagster; it is the one module allowed to
    command = imported_modules([DEMO_PACKAGE / "demo.py"])["rasteret_pipelines_demo/demo.py"]
    assert "dagster" in command and any(m.startswith("rasteret_pipelines.defs.") for m in command)


def test_the_cli_imports_the_demo_command_lazily():
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    top_level = imported_modules([PACKAGE / "cli.py"])
    assert "rasteret_pipelines_demo.demo" in top_level["rasteret_pipelines/cli.py"]
    for node in tree.body:  # module level: no import of the demo package
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(_matches(n, "rasteret_pipelines_demo") for n in names), ast.dump(node)


def test_the_scan_sees_lazy_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "m.py").write_text("def f():\n    from rasteret_pipelines_demo.demo import run_demo\n")
    (pkg / "n.py").write_text("import rasteret_pipelines_demo.demonstration\nimport dagsterish\n")
    (pkg / "o.py").write_text("import importlib\n\ndef g():\n    return importlib.import_module('dagster_aws.s3')\n")
    (pkg / "sub" / "p.py").write_text(
        "class C:\n    def h(self):\n        from .. import defs\n        from ..defs.x import y\n"
    )
    files = list(pkg.rglob("*.py"))
    assert offenders(files, DEMO_COMMAND, root=tmp_path) == [
        "pkg/m.py: rasteret_pipelines_demo.demo",
        "pkg/m.py: rasteret_pipelines_demo.demo.run_demo",
    ]
    assert offenders(files, DAGSTER, root=tmp_path) == ["pkg/o.py: dagster_aws.s3"]
    assert offenders(files, ("pkg.defs",), root=tmp_path) == [
        "pkg/sub/p.py: pkg.defs",
        "pkg/sub/p.py: pkg.defs.x",
        "pkg/sub/p.py: pkg.defs.x.y",
    ]


# --- the library's inner layers ----------------------------------------------------------------

LAYERS = ("cog", "collections", "reading", "products", "api")
"""The core library's layers, bottom up (ARCHITECTURE.md): each imports only from its own layer
and the ones before it."""
LAYER_OF = {"aois": "reading", "fields": "reading"}
"""Top-level modules that belong to a layer: AOI and field files become the reading layer's geometries."""
BASE = ("errors", "redaction", "hrefs", "s3config", "storage")
"""Below every layer (errors, redaction, the href policy, atomic storage): they import only each other."""


def _layer(name: str, package: str) -> str | None:
    """The layer (or ``"base"``) of the module ``name`` inside ``package``; None outside it or for
    the package root (``rasteret_pipelines`` itself and its attributes such as ``__version__``)."""
    parts = name.split(".")
    if parts[0] != package or len(parts) < 2:
        return None
    first = parts[1]
    if first in BASE:
        return "base"
    first = LAYER_OF.get(first, first)
    return first if first in LAYERS else None


def layer_violations(paths: list[Path], root: Path = REPO, package: str = "rasteret_pipelines") -> list[str]:
    """``"file (layer): module (layer)"`` for every import in ``paths`` of a higher layer."""
    rank = {"base": -1, **{layer: i for i, layer in enumerate(LAYERS)}}
    found = []
    for path, names in imported_modules(paths, root).items():
        mine = _layer(".".join(_module_name(root / path, root)), package)
        if mine is None:  # the package root, which exports every layer
            continue
        for name in sorted(names):
            theirs = _layer(name, package)
            if theirs is not None and rank[theirs] > rank[mine]:
                found.append(f"{path} ({mine}): {name} ({theirs})")
    return sorted(found)


def test_library_layers_import_only_downwards():
    core = core_modules()
    layers = {
        p.relative_to(REPO).as_posix(): _layer(".".join(_module_name(p, REPO)), "rasteret_pipelines") for p in core
    }
    # Every module has a place in the order; only the package root (which exports every layer) has none.
    assert sorted(path for path, layer in layers.items() if layer is None) == ["rasteret_pipelines/__init__.py"]
    assert set(layers.values()) == {None, "base", *LAYERS}
    assert layer_violations(core) == []


def test_the_layer_check_sees_an_upward_import(tmp_path):
    pkg = tmp_path / "pkg"
    for sub in ("cog", "reading"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from pkg import api\n")  # the root may export anything
    (pkg / "errors.py").write_text("def f():\n    from pkg.cog import tiff\n")
    (pkg / "cog" / "tiff.py").write_text("from pkg.errors import E\nfrom ..reading import plan\n")
    (pkg / "reading" / "plan.py").write_text("from pkg.cog import tiff\nimport pkg.api\n")
    (pkg / "aois.py").write_text("from pkg.products import ndvi\n")
    assert layer_violations(list(pkg.rglob("*.py")), root=tmp_path, package="pkg") == [
        "pkg/aois.py (reading): pkg.products (products)",
        "pkg/aois.py (reading): pkg.products.ndvi (products)",
        "pkg/cog/tiff.py (cog): pkg.reading (reading)",
        "pkg/cog/tiff.py (cog): pkg.reading.plan (reading)",
        "pkg/errors.py (base): pkg.cog (cog)",
        "pkg/errors.py (base): pkg.cog.tiff (cog)",
        "pkg/reading/plan.py (reading): pkg.api (api)",
    ]


# --- ARCHITECTURE.md ---------------------------------------------------------------------------


def test_architecture_lists_every_module():
    text = ARCHITECTURE.read_text()
    listed = set(re.findall(r"`([\w./]+\.py)`", text))
    modules = {p.relative_to(REPO).as_posix() for root in (PACKAGE, DEMO_PACKAGE) for p in root.rglob("*.py")}
    assert sorted(modules - listed) == [], "modules missing from ARCHITECTURE.md's table"


def test_architecture_names_only_paths_that_exist():
    text = ARCHITECTURE.read_text()
    paths = [
        p
        for p in re.findall(r"`([^`\s]+)`", text)
        if "://" not in p and ("/" in p or p.endswith((".py", ".md", ".yaml", ".toml")))
    ]
    assert len(paths) > 60
    missing = [p for p in paths if not (REPO / p.rstrip("/")).exists()]
    assert missing == []
