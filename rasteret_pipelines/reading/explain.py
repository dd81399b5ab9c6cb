"""An exact dry run of a read: what it will fetch, from the cached headers alone.

:func:`explain` plans a read as the read itself plans it (the same functions) and asks the
engine's range planner (:func:`~rasteret_pipelines.cog.read.plan_spans`) how the needed tiles
coalesce into requests, batch by batch as the read will send them. Nothing is requested: the
collection's headers hold every tile's offset and size. So the read that follows makes exactly
:attr:`ReadPlan.gets` range GETs for exactly :attr:`ReadPlan.bytes` bytes.

Reads: ``"get_xarray"`` and ``"get_gdf"`` (:func:`~rasteret_pipelines.reading.read_geometries`,
one batch), ``"zonal_stats"`` and ``"sample_points"`` (one batch per date).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np

from rasteret_pipelines.errors import InvalidReadArgumentError
from rasteret_pipelines.reading.options import ReadOptions

READS = ("get_xarray", "get_gdf", "zonal_stats", "sample_points")
_COLUMNS = ["scene", "date", "band", "windows", "tiles", "gets", "bytes", "decoded_bytes"]


@dataclass
class ReadPlan:
    """What a read will fetch: one row per (scene, band), and the totals."""

    read: str
    rows: list[dict] = field(default_factory=list)
    """``scene``, ``date``, ``band`` (asset key), ``windows``, ``tiles``, ``gets``, ``bytes``,
    ``decoded_bytes`` per (scene, band)."""
    peak_bytes: int = 0
    """Estimated memory the read allocates at its peak (its output and working arrays)."""

    def _sum(self, key: str) -> int:
        return int(sum(r[key] for r in self.rows))

    @property
    def scenes(self) -> int:
        """Scenes read."""
        return len({r["scene"] for r in self.rows})

    @property
    def windows(self) -> int:
        """(scene, band) windows: one per geometry for a read, one per tile for fields."""
        return self._sum("windows")

    @property
    def tiles(self) -> int:
        """Distinct tiles fetched and decoded (per batch)."""
        return self._sum("tiles")

    @property
    def gets(self) -> int:
        """Range GETs after coalescing adjacent tiles."""
        return self._sum("gets")

    @property
    def bytes(self) -> int:
        """Bytes to fetch."""
        return self._sum("bytes")

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the decoded tiles."""
        return self._sum("decoded_bytes")

    def to_pandas(self):
        """One row per (scene, band)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=_COLUMNS)

    def summary(self) -> dict:
        return {
            "read": self.read,
            "scenes": self.scenes,
            "windows": self.windows,
            "tiles": self.tiles,
            "gets": self.gets,
            "bytes": self.bytes,
            "decoded_bytes": self.decoded_bytes,
            "peak_bytes": self.peak_bytes,
        }

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"ReadPlan({s['read']}: {s['scenes']} scenes, {s['windows']} windows, {s['tiles']} tiles, "
            f"{s['gets']} GETs, {_mb(s['bytes'])} to fetch, {_mb(s['decoded_bytes'])} decoded, "
            f"peak about {_mb(s['peak_bytes'])})"
        )

    def _repr_html_(self) -> str:
        s = self.summary()
        head = "".join(f"<th>{k}</th>" for k in ("scenes", "windows", "tiles", "GETs", "to fetch", "decoded", "peak"))
        cells = "".join(
            f"<td>{v}</td>"
            for v in (
                s["scenes"],
                s["windows"],
                s["tiles"],
                s["gets"],
                _mb(s["bytes"]),
                _mb(s["decoded_bytes"]),
                _mb(s["peak_bytes"]),
            )
        )
        return (
            f"<p><b>{s['read']}</b>: a dry run from the cached headers (no request made)</p>"
            f"<table><tr>{head}</tr><tr>{cells}</tr></table>" + self.to_pandas().to_html(index=False, max_rows=40)
        )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def explain(read: str, collection, *args, **kwargs) -> ReadPlan:
    """The dry run of ``read`` over ``collection`` with the read's own arguments.

    Args:
        read: ``"get_xarray"``, ``"get_gdf"``, ``"zonal_stats"`` or ``"sample_points"``.
        collection: An opened :class:`~rasteret_pipelines.collections.Collection`.
        args, kwargs: The arguments the read takes after the collection
            (:func:`~rasteret_pipelines.reading.read_geometries`,
            :func:`~rasteret_pipelines.reading.zonal_stats`,
            :func:`~rasteret_pipelines.reading.sample_points`).

    Raises:
        InvalidReadArgumentError: an unknown read; otherwise what the read raises before its
            first request (bad bands, dates, geometries, no scene).
    """
    from rasteret_pipelines.reading import read as read_module
    from rasteret_pipelines.reading import zonal

    if read in ("get_xarray", "get_gdf"):
        bound = _bind(read_module.read_geometries, collection, *args, **kwargs)
        options = ReadOptions.resolve(bound.pop("options", None), bound.pop("option_keywords", {}), read)
        bound.update(options.keywords())
        bound.pop("resampling", None)
        bound.pop("reader", None)
        planned = read_module.plan_read(collection, **bound)
        return _geometries_plan(read, planned, bound.get("values", "float"))
    if read in ("zonal_stats", "sample_points"):
        function = getattr(zonal, read)
        bound = _bind(function, collection, *args, **kwargs)
        spec = zonal._variables(
            collection, bound.pop("bands", None), bound.pop("index", None), bound.pop("values", None)
        )
        points = read == "sample_points"
        if not points:
            zonal.parse_stats(bound.pop("stats", zonal.DEFAULT_STATS))
        data = zonal.load_fields(
            bound.pop("points" if points else "fields"),
            bound.pop("id_column", "id"),
            bound.pop("keep", ()),
            points=points,
        )
        for name in ("reader", "output"):
            bound.pop(name, None)
        plan = zonal.plan_fields_read(collection, data, spec, points=points, **bound)
        return _fields_plan(read, plan)
    raise InvalidReadArgumentError(f"explain knows the reads {', '.join(READS)}, not {read!r}")


def _bind(function, collection, *args, **kwargs) -> dict:
    try:
        bound = inspect.signature(function).bind(collection, *args, **kwargs)
    except TypeError as exc:
        raise InvalidReadArgumentError(f"{function.__name__}: {exc}") from None
    out = dict(bound.arguments)
    out.pop("collection", None)
    return out


class _Rows:
    """Rows keyed by href: (scene, date, band) and the counters."""

    def __init__(self):
        self.rows: dict[str, dict] = {}

    def add(self, href: str, scene: str, date, band: str, **counts) -> None:
        row = self.rows.get(href)
        if row is None:
            row = self.rows[href] = {
                "scene": scene,
                "date": str(np.datetime64(date, "D")),
                "band": band,
                **{k: 0 for k in _COLUMNS[3:]},
            }
        for k, v in counts.items():
            row[k] += v

    def add_batch(self, requests, names, config) -> None:
        """Tiles, GETs and bytes of one batch as the engine will fetch it."""
        from rasteret_pipelines.cog.header import validate_window
        from rasteret_pipelines.cog.read import plan_spans

        checked = [(h, validate_window(h, w, 0)) for h, w in requests]
        spans, _ = plan_spans(checked, 0, config)
        headers = {h.href: h for h, _ in checked}
        for h, _ in checked:
            self.add(h.href, *names[h.href], windows=1)
        for href, href_spans in spans.items():
            level = headers[href].levels[0]
            itemsize = max(level.bits_per_sample // 8, 1) * level.samples_per_pixel
            tiles = sum(len(span.blocks) for span in href_spans)
            self.add(
                href,
                *names[href],
                tiles=tiles,
                gets=len(href_spans),
                bytes=sum(span.end - span.start for span in href_spans),
                decoded_bytes=tiles * level.tile_width * level.tile_height * itemsize,
            )


def _geometries_plan(read: str, planned, values: str) -> ReadPlan:
    from rasteret_pipelines.reading.memory import estimate_plans
    from rasteret_pipelines.reading.plan import planned_reads

    rows = _Rows()
    names, requests = {}, []
    for _, sr, key, r in planned_reads(planned.plans):
        names[r.header.href] = (sr.scene.id, sr.day, key)
        requests.append((r.header, r.window))
    rows.add_batch(requests, names, planned.config)
    estimate = estimate_plans(planned.plans, planned.bands, values)
    return ReadPlan(read, list(rows.rows.values()), estimate.total)


def _fields_plan(read: str, plan) -> ReadPlan:
    from rasteret_pipelines.reading.zonal import PAIR_BYTES_PER_BAND, days_in_flight

    rows = _Rows()
    pairs = sum(g.rows.size for g in plan.grids)
    largest_day = 0
    for day, day_scenes, requests in plan.day_requests():
        names = {scene.headers[k].href: (scene.id, day, k) for _, scene in day_scenes for k in plan.read_keys}
        before = sum(r["decoded_bytes"] for r in rows.rows.values())
        rows.add_batch(requests, names, plan.config)
        largest_day = max(largest_day, sum(r["decoded_bytes"] for r in rows.rows.values()) - before)
    # The pairs (field, row, col, position, and per file layout order/field/offset), then per
    # date in flight its decoded tiles and per pair and band a value, a flag and float64 scratch.
    layouts = len(
        {(h.crs, tuple(h.transform)) for _, s in (x for v in plan.days.values() for x in v) for h in s.headers.values()}
    )
    per_day = largest_day + pairs * len(plan.read_keys) * PAIR_BYTES_PER_BAND
    peak = pairs * 32 + pairs * layouts * 24 + days_in_flight(pairs, len(plan.read_keys)) * per_day
    return ReadPlan(read, list(rows.rows.values()), int(peak))
