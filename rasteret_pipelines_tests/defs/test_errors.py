"""Every error class rasteret-pipelines raises on purpose lives in ``rasteret_pipelines.errors``."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import rasteret_pipelines
from rasteret_pipelines import errors
from rasteret_pipelines.errors import RasteretError


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def test_every_rasteret_error_is_defined_in_errors_module():
    for info in pkgutil.walk_packages(rasteret_pipelines.__path__, "rasteret_pipelines."):
        importlib.import_module(info.name)
    misplaced = sorted(
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in set(_all_subclasses(RasteretError))
        if cls.__module__.startswith("rasteret_pipelines.") and cls.__module__ != "rasteret_pipelines.errors"
    )
    assert misplaced == []
    for cls in set(_all_subclasses(RasteretError)):
        if cls.__module__ == "rasteret_pipelines.errors":
            assert cls.__doc__ and cls.__doc__.strip(), cls.__name__


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("rasteret_pipelines.defs.settings", "SettingsError"),
        ("rasteret_pipelines.defs.resources", "StorageConfigError"),
        ("rasteret_pipelines.defs.resources", "LocalServerDownError"),
        ("rasteret_pipelines.defs.partitions", "UnsafePartitionKeyError"),
        ("rasteret_pipelines.defs.io_managers", "MissingPartitionError"),
        ("rasteret_pipelines.defs.aois", "AoiFileError"),
        ("rasteret_pipelines.defs.pipeline", "AoiNotIndexedError"),
    ],
)
def test_old_import_names_still_work(module, name):
    assert getattr(importlib.import_module(module), name) is getattr(errors, name)


def test_settings_error_is_a_rasteret_error_and_a_value_error():
    from rasteret_pipelines.defs.settings import Settings

    assert issubclass(errors.SettingsError, RasteretError)
    assert issubclass(errors.SettingsError, ValueError)
    with pytest.raises(errors.SettingsError, match="RASTERET_START_MONTH"):
        Settings.from_env({"RASTERET_START_MONTH": "24-1"})
