"""Partitions: calendar months (collections), groups of fields (dynamic), months x groups (field
statistics).

Keys: a month is ``"2024-03-01"`` (Dagster's monthly key; ``month_key`` gives ``"2024-03"``), a
group is its name (``"g_13.0_77.5"``, see :mod:`rasteret_pipelines.fields`), a month x group key
is ``"g_13.0_77.5|2024-03-01"`` (dimensions sorted by name: ``group`` then ``month``). A field is
never a partition: 100,000 fields in 300 groups over 12 months are 3,600 month x group
partitions. Only complete months are partitions: the current month appears once it
has ended. With an end month (the offline demo's last month) the partitions stop there.
"""

from __future__ import annotations

import calendar
import datetime as dt
import os
import re
from dataclasses import dataclass

import dagster as dg

from rasteret_pipelines.errors import UnsafePartitionKeyError

SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""What a field id or group (a dynamic partition key) may look like: it becomes a folder and file name."""
_MONTH_KEY = re.compile(r"^\d{4}-(0[1-9]|1[0-2])-01$")
_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=-]{0,127}$")


def check_aoi_id(aoi_id, what: str = "AOI id") -> str:
    """``aoi_id`` as text when it matches :data:`SAFE_KEY`.

    Raises:
        UnsafePartitionKeyError: naming the key (``../x``, ``a/b``, empty, too long, ...).
    """
    text = str(aoi_id)
    if not SAFE_KEY.match(text) or ".." in text:
        raise UnsafePartitionKeyError(
            f"{what} {text!r} is refused: it becomes a file name, so it must match "
            "[A-Za-z0-9][A-Za-z0-9_.-]* (at most 64 characters, no '..'); delete that partition"
        )
    return text


def check_month_key(key) -> str:
    """A monthly partition key (``YYYY-MM-01``) as text; anything else is refused."""
    text = str(key)
    if not _MONTH_KEY.match(text):
        raise UnsafePartitionKeyError(f"month partition key {text!r} is not of the form YYYY-MM-01")
    return text


def check_path_parts(parts) -> list[str]:
    """Every part of a storage path: one safe name each (no separator, no ``.``/``..``).

    Raises:
        UnsafePartitionKeyError: naming the part.
    """
    out = []
    for part in parts:
        text = str(part)
        if not _SAFE_PART.match(text) or ".." in text:
            raise UnsafePartitionKeyError(f"path part {text!r} is refused: it could leave the storage folder")
        out.append(text)
    return out


def check_under_root(root: str, path: str) -> str:
    """``path`` when it resolves (symbolic links followed) inside the local folder ``root``.

    ``s3://`` locations have no ``..`` or links, so only their parts are checked (by the caller).

    Raises:
        UnsafePartitionKeyError: the path leaves ``root``.
    """
    if str(root).startswith("s3://"):
        return path
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise UnsafePartitionKeyError(f"{path} resolves to {real}, outside the storage folder {real_root}")
    return path


GROUP_DIMENSION = "group"
MONTH_DIMENSION = "month"

group_partitions = dg.DynamicPartitionsDefinition(name="field_group")
"""One partition per group of fields (:mod:`rasteret_pipelines.fields`); the field sensor (and
the demo) add them from the field file."""


def month_partitions(start_month: str, end_month: str | None = None) -> dg.MonthlyPartitionsDefinition:
    """Monthly partitions from ``start_month`` (``YYYY-MM``) to ``end_month`` included, or to the
    last complete month."""
    end_date = None
    if end_month is not None:
        _, last_day = month_bounds(end_month)
        end_date = (last_day + dt.timedelta(days=1)).isoformat()  # exclusive: the next month's first day
    return dg.MonthlyPartitionsDefinition(
        start_date=f"{start_month}-01", end_date=end_date, fmt="%Y-%m-%d", end_offset=0
    )


def month_group_partitions(months: dg.MonthlyPartitionsDefinition) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition({MONTH_DIMENSION: months, GROUP_DIMENSION: group_partitions})


@dataclass(frozen=True)
class Partitions:
    """The partitions definitions of one set of definitions."""

    months: dg.MonthlyPartitionsDefinition
    month_group: dg.MultiPartitionsDefinition
    group: dg.DynamicPartitionsDefinition = group_partitions


def build_partitions(start_month: str, end_month: str | None = None) -> Partitions:
    months = month_partitions(start_month, end_month)
    return Partitions(months=months, month_group=month_group_partitions(months))


def month_key(partition_key: str) -> str:
    """``"2024-03-01"`` -> ``"2024-03"``."""
    return str(partition_key)[:7]


def month_partition_key(month: str) -> str:
    """``"2024-03"`` -> ``"2024-03-01"``."""
    return f"{month[:7]}-01"


def month_bounds(month: str) -> tuple[dt.date, dt.date]:
    """First and last day of ``YYYY-MM`` (or a monthly partition key)."""
    year, mon = int(month[:4]), int(month[5:7])
    return dt.date(year, mon, 1), dt.date(year, mon, calendar.monthrange(year, mon)[1])


def split_month_group(key) -> tuple[str, str]:
    """(monthly partition key, group) of a month x group partition key, both checked.

    Raises:
        UnsafePartitionKeyError: the key is malformed or its group is not a safe name.
    """
    if isinstance(key, dg.MultiPartitionKey):
        dims = key.keys_by_dimension
    else:
        group, sep, month = str(key).partition("|")
        if not sep:
            raise UnsafePartitionKeyError(f"partition key {str(key)!r} is not of the form <group>|YYYY-MM-01")
        dims = {GROUP_DIMENSION: group, MONTH_DIMENSION: month}
    return check_month_key(dims[MONTH_DIMENSION]), check_aoi_id(dims[GROUP_DIMENSION], "group")


def month_group_key(month_partition: str, group: str) -> str:
    """``"g_13.0_77.5|2024-03-01"``: the string form of a month x group key (dimensions sorted by name)."""
    return f"{group}|{month_partition}"
