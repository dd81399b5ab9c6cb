"""The slow tier (``SLOW`` in ``conftest.py``): every entry names a test that exists, with a reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rasteret_pipelines_tests.conftest import SLOW, slow_reason

TESTS = Path(__file__).parent


@pytest.mark.parametrize("entry", sorted(SLOW))
def test_every_slow_entry_names_an_existing_module_or_test(entry):
    module, _, name = entry.partition("::")
    path = TESTS / module
    assert path.is_file(), f"{entry}: no module {module}"
    assert len(SLOW[entry]) > 20, f"{entry}: give the reason it is slow"
    if name:
        tests = {
            node.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
        assert name in tests, f"{entry}: no test {name} in {module}"


def test_slow_reason_matches_modules_tests_and_parameters_only():
    module = next(e for e in SLOW if "::" not in e)
    single = next(e for e in SLOW if "::" in e)
    assert slow_reason(f"rasteret_pipelines_tests/{module}::test_anything") == SLOW[module]
    assert slow_reason(f"rasteret_pipelines_tests/{single}[param-1]") == SLOW[single]
    assert slow_reason(f"rasteret_pipelines_tests/{single}_other") is None
    assert slow_reason(f"rasteret_pipelines_tests/{module.removesuffix('.py')}_other.py::test_x") is None
    assert slow_reason("rasteret_pipelines_tests/test_tiers.py::test_x") is None


def test_the_hook_marks_the_listed_tests_and_no_other():
    from rasteret_pipelines_tests.conftest import pytest_collection_modifyitems

    class Item:
        def __init__(self, nodeid):
            self.nodeid, self.marks = nodeid, []

        def add_marker(self, mark):
            self.marks.append(mark.name)

    module = next(e for e in SLOW if "::" not in e)
    single = next(e for e in SLOW if "::" in e)
    items = [
        Item(f"rasteret_pipelines_tests/{n}") for n in (f"{module}::test_a", f"{single}[x]", "test_tiers.py::test_b")
    ]
    pytest_collection_modifyitems(None, items)
    assert [i.marks for i in items] == [["slow"], ["slow"], []]
