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

from rasteret_pipelines.cog import FetchConfig, FetchStats, RangeFetcher
from rasteret_pipelines.cog.read import fetch_windows
from rasteret_pipelines.reading.plan import GeometryPlan, SceneReads, planned_reads

OnScene = Callable[[int, SceneReads, dict[str, np.ndarray]], None]
"""``on_scene(geometry index, scene reads, {asset key: 2-D array})``."""


async def fetch_plans(plans: list[GeometryPlan], config: FetchConfig | None, on_scene: OnScene) -> FetchStats:
    """Fetch every planned window in one batch; returns the transport's request counters."""
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

    async with RangeFetcher(config) as fetcher:
        await fetch_windows(fetcher, [(r.header, r.window) for _, _, _, r in reads], on_window=on_window)
    return fetcher.stats
