"""Fetching: every planned window of every geometry as one concurrent batch, handed on as it lands.

A tile needed by several windows (geometries, bands) is fetched and decoded once
(:func:`rasteret_pipelines.cog.read.fetch_windows`). Each window is passed to ``on_scene`` as
soon as all windows of its (geometry, scene) are assembled, so the caller masks and mosaics
it straight into the output while other tiles are still in flight; no window waits for the
whole batch (on a machine that pages out idle memory, waiting costs more than the copy).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rasteret_pipelines.cog import ByteReader, FetchConfig, FetchStats, RangeFetcher
from rasteret_pipelines.cog.read import fetch_windows
from rasteret_pipelines.hrefs import check_href
from rasteret_pipelines.reading.plan import GeometryPlan, SceneReads, planned_reads

OnScene = Callable[[int, SceneReads, dict[str, np.ndarray]], None]
"""``on_scene(geometry index, scene reads, {asset key: 2-D array})``."""


async def fetch_plans(
    plans: list[GeometryPlan],
    config: FetchConfig | None,
    on_scene: OnScene,
    reader: ByteReader | None = None,
    on_fetched: Callable[[], None] | None = None,
) -> FetchStats:
    """Fetch every planned window in one batch; returns the transport's request counters.

    ``reader``: where the bytes come from (None: the default reader configured by ``config``).
    ``on_fetched``: called when every byte has arrived (see
    :func:`~rasteret_pipelines.cog.read.fetch_windows`). The caller has already checked every
    href against its policy.
    """
    reads = list(planned_reads(plans))  # (geometry index, scene reads, asset key, read)
    pending: dict[int, dict[str, np.ndarray]] = {}
    waiting = {id(sr): len(sr.reads) for _, sr, _, _ in reads}

    def on_window(i: int, array: np.ndarray) -> None:
        gi, sr, key, _ = reads[i]
        got = pending.setdefault(id(sr), {})
        got[key] = array[0]  # single-band COGs (one asset per band)
        if len(got) == waiting[id(sr)]:
            del pending[id(sr)]
            on_scene(gi, sr, got)

    async with RangeFetcher(config, reader=reader) as fetcher:
        await fetch_windows(
            fetcher, [(r.header, r.window) for _, _, _, r in reads], on_window=on_window, on_fetched=on_fetched
        )
    return fetcher.stats


def check_plan_hrefs(plans: list[GeometryPlan], allow_local: bool) -> None:
    """Every planned href through :func:`~rasteret_pipelines.hrefs.check_href`, before any request.

    The default reader applies the same policy per request; doing it here as well refuses a bad
    href before the batch starts, and covers a reader passed in, which has no policy of its own.
    """
    seen: set[str] = set()
    for _, _, _, read in planned_reads(plans):
        href = read.header.href
        if href not in seen:
            seen.add(href)
            check_href(href, allow_local=allow_local)
