"""Partitions: calendar months (collections), AOIs (dynamic), and months x AOIs (NDVI).

Keys: a month is ``"2024-03-01"`` (Dagster's monthly key; ``month_key`` gives ``"2024-03"``),
an AOI is its id (``"1"``), a month x AOI key is ``"1|2024-03-01"`` (dimensions sorted by name:
``aoi`` then ``month``). Only complete months are partitions: the current month appears once it
has ended.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass

import dagster as dg

AOI_DIMENSION = "aoi"
MONTH_DIMENSION = "month"

aoi_partitions = dg.DynamicPartitionsDefinition(name="aoi")
"""One partition per AOI id; the AOI sensor (and the demo) add them from the AOI file."""


def month_partitions(start_month: str) -> dg.MonthlyPartitionsDefinition:
    """Monthly partitions from ``start_month`` (``YYYY-MM``) to the last complete month."""
    return dg.MonthlyPartitionsDefinition(start_date=f"{start_month}-01", fmt="%Y-%m-%d", end_offset=0)


def month_aoi_partitions(months: dg.MonthlyPartitionsDefinition) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition({MONTH_DIMENSION: months, AOI_DIMENSION: aoi_partitions})


@dataclass(frozen=True)
class Partitions:
    """The partitions definitions of one set of definitions."""

    months: dg.MonthlyPartitionsDefinition
    month_aoi: dg.MultiPartitionsDefinition
    aoi: dg.DynamicPartitionsDefinition = aoi_partitions


def build_partitions(start_month: str) -> Partitions:
    months = month_partitions(start_month)
    return Partitions(months=months, month_aoi=month_aoi_partitions(months))


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


def split_month_aoi(key) -> tuple[str, str]:
    """(monthly partition key, AOI id) of a month x AOI partition key."""
    if isinstance(key, dg.MultiPartitionKey):
        dims = key.keys_by_dimension
    else:
        aoi, month = str(key).split("|", 1)
        dims = {AOI_DIMENSION: aoi, MONTH_DIMENSION: month}
    return dims[MONTH_DIMENSION], dims[AOI_DIMENSION]
