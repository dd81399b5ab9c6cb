"""How much memory a geometry read will allocate, estimated before any request.

A polygon larger than a scene, or many geometries over many dates, can need more memory than
the machine has; allocating it would end in a bare ``MemoryError`` or in swapping. So the
reader estimates the arrays it is about to allocate from the plan alone (no request made) and
refuses the read with :class:`~rasteret_pipelines.errors.MemoryLimitError`, naming the
estimate, its parts and the limit, when the estimate is above the limit.

What is counted: the output stack (``geometries x dates x largest window x bands``, padding
included, in the output dtype), every fetched window (each (scene, band) window of each
geometry, in its file's dtype and sample count) and the per-geometry masks. Decoded tiles in
flight and warping scratch are transient and small beside these, and are not counted.

The limit is :attr:`FetchConfig.max_read_memory`, else the ``RASTERET_MAX_READ_MEMORY``
environment variable (bytes, or with a ``K``/``M``/``G``/``T`` suffix), else 75% of the
machine's physical memory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from rasteret_pipelines.errors import InvalidReadArgumentError, MemoryLimitError

ENV_VAR = "RASTERET_MAX_READ_MEMORY"
DEFAULT_FRACTION = 0.75
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class ReadEstimate:
    """Bytes a read will allocate, by part."""

    output: int
    windows: int
    masks: int

    @property
    def total(self) -> int:
        return self.output + self.windows + self.masks


def human(n: int) -> str:
    """``n`` bytes as text with a binary unit (``1.5 GiB``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def parse_bytes(text: str) -> int:
    """``"8G"``, ``"512M"``, ``"1073741824"`` (binary units) as a number of bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if match is None:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with K, M, G or T)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def memory_limit(configured: int | None = None) -> int:
    """The read memory limit in bytes: ``configured``, else the environment, else 75% of RAM."""
    if configured is not None:
        return int(configured)
    env = os.environ.get(ENV_VAR)
    if env:
        try:
            return parse_bytes(env)
        except ValueError as exc:
            raise InvalidReadArgumentError(f"{ENV_VAR}={env!r}: {exc}") from exc
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 8 << 30
    return int(physical * DEFAULT_FRACTION)


def estimate_read(
    windows: Sequence[tuple[int, int]],
    n_times: int,
    n_bands: int,
    out_itemsize: int,
    reads: Iterable[tuple[int, int, int]],
) -> ReadEstimate:
    """Bytes of a read.

    Args:
        windows: ``(height, width)`` of every geometry's output window.
        n_times: Dates in the output.
        n_bands: Bands in the output.
        out_itemsize: Bytes of one output value.
        reads: ``(height, width, bytes per pixel)`` of every window fetched.
    """
    max_h = max((h for h, _ in windows), default=0)
    max_w = max((w for _, w in windows), default=0)
    output = len(windows) * n_times * max_h * max_w * n_bands * out_itemsize
    fetched = sum(h * w * b for h, w, b in reads)
    masks = sum(h * w for h, w in windows)
    return ReadEstimate(int(output), int(fetched), int(masks))


def check_memory(estimate: ReadEstimate, limit: int, what: str = "the read") -> None:
    """:class:`MemoryLimitError` when ``estimate`` is above ``limit``."""
    if estimate.total > limit:
        raise MemoryLimitError(
            f"{what} would need about {human(estimate.total)} ({estimate.total} bytes: "
            f"{human(estimate.output)} output, {human(estimate.windows)} fetched windows, "
            f"{human(estimate.masks)} masks), above the limit of {human(limit)} ({limit} bytes). "
            "Read fewer or smaller geometries, fewer dates or bands, or raise the limit "
            f"(FetchConfig(max_read_memory=...) or {ENV_VAR})",
            estimate.total,
            limit,
        )


def estimate_plans(plans, bands: Sequence[str], values: str) -> ReadEstimate:
    """The estimate of a planned read (see :mod:`~rasteret_pipelines.reading.read`), no request made."""
    from rasteret_pipelines.reading.plan import planned_reads

    reads = [r for _, _, _, r in planned_reads(plans)]
    itemsizes: dict[str, int] = {}  # href -> bytes per pixel (a header's dtype is computed per access)
    for r in reads:
        if r.header.href not in itemsizes:
            itemsizes[r.header.href] = np.dtype(r.header.dtype).itemsize * max(1, r.header.count)
    if values == "native":
        out_itemsize = max((np.dtype(r.header.dtype).itemsize for r in reads), default=1)
    else:
        out_itemsize = 4  # float32
    times = {day for p in plans for day in p.layers}
    return estimate_read(
        [(p.grid.height, p.grid.width) for p in plans],
        len(times),
        len(bands),
        out_itemsize,
        ((r.window[3], r.window[2], itemsizes[r.header.href]) for r in reads),
    )


def check_plans(plans, bands: Sequence[str], values: str, config) -> ReadEstimate:
    """The reader's hook: estimate the planned read and refuse it above the configured limit,
    before any request is made."""
    estimate = estimate_plans(plans, bands, values)
    times = {day for p in plans for day in p.layers}
    check_memory(
        estimate,
        memory_limit(getattr(config, "max_read_memory", None)),
        f"reading {len(plans)} geometries x {len(times)} dates x {len(bands)} bands",
    )
    return estimate
