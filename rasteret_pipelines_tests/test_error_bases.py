"""One rule for error bases: every RasteretError is a ValueError (input) or an OSError (I/O),
and docs/errors.md says which, for every class of errors.py."""

import inspect
import re
from pathlib import Path

import pytest

import rasteret_pipelines.errors as errors

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
FAMILIES = {"RasteretError", "CogError", "CollectionError", "ReadError", "ProductError"}


def _classes() -> dict[str, type]:
    return {
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, errors.RasteretError) and cls.__module__ == errors.__name__
    }


def _documented() -> dict[str, str]:
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \|", DOC.read_text(), flags=re.M)
    return dict(rows)


def test_every_error_has_exactly_one_kind():
    for name, cls in _classes().items():
        if name in FAMILIES:
            assert not issubclass(cls, (ValueError, OSError)), name
            continue
        kinds = [k for k in (ValueError, OSError) if issubclass(cls, k)]
        assert len(kinds) == 1, f"{name} is {[k.__name__ for k in kinds] or 'neither ValueError nor OSError'}"


def test_docs_list_every_error_with_its_kind():
    documented = _documented()
    classes = {n: c for n, c in _classes().items() if n not in FAMILIES}
    assert set(documented) == set(classes), set(documented) ^ set(classes)
    for name, kind in documented.items():
        assert issubclass(classes[name], {"ValueError": ValueError, "OSError": OSError}[kind]), name


def test_family_classes_are_never_raised_directly():
    root = Path(errors.__file__).parent
    pattern = re.compile(rf"raise ({'|'.join(sorted(FAMILIES))})\(")
    hits = [f"{p.relative_to(root)}: {m.group(0)}" for p in root.rglob("*.py") for m in pattern.finditer(p.read_text())]
    assert not hits, hits


@pytest.mark.parametrize("name", sorted(n for n in _classes() if n not in FAMILIES))
def test_message_survives_the_second_base(name):
    cls = _classes()[name]
    if name == "MemoryLimitError":
        exc = cls("a fault: too big", 2, 1)
    elif issubclass(cls, errors.CogError):
        exc = cls("http://x/a.tif", "broken")
    else:
        exc = cls("what is at fault")
    assert "fault" in str(exc) or "broken" in str(exc)
    assert isinstance(exc, errors.RasteretError)
