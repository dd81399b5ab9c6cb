"""An exact dry run of a read: what it will fetch, from the cached headers alone.

:func:`explain` plans a read as the read itself plans it (the same functions) and asks the
engine's range planner (:func:`~rasteret_pipelines.cog.read.plan_spans`) how the needed tiles
coalesce into requests, batch by batch as the read will send them. Nothing is requested: the
collection's headers hold every tile's offset and size. So the read that follows makes exactly
:attr:`ReadPlan.gets` range GETs for exactly :attr:`ReadPlan.bytes` bytes.

Reads: ``"get_xarray"`` and ``"get_gdf"`` (:func:`~rasteret_pipelines.reading.read_geometries`,
one batch), ``"get_xarray"`` in its data-cube form (``bbox=``, ``geopolygon=``, ``like=`` or no
geometries: :func:`~rasteret_pipelines.reading.cube.read_cube`, one batch per overview level
for an eager read, and per block for ``chunks=``: one per dask task), ``"zonal_stats"`` and
``"sample_points"`` (one batch per date).

With ``chunks=`` the counts are those of one compute of the whole Dataset (computing its
variables one by one, or twice, reads again). Each block fetches the tiles it needs in its own
batch, so a tile that two blocks need is fetched by both, and ranges that the eager read
coalesces across a block edge are split there: the plan says how many GETs and bytes that
adds to the eager read (:attr:`ReadPlan.notes`).
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rasteret_pipelines.errors import DaskMissingError, InvalidReadArgumentError
from rasteret_pipelines.reading.options import CubeOptions, ReadOptions

READS = ("get_xarray", "get_gdf", "zonal_stats", "sample_points")
_COLUMNS = ["scene", "date", "band", "level", "windows", "tiles", "gets", "bytes", "decoded_bytes"]
_COUNTS = _COLUMNS[4:]


@dataclass
class ReadPlan:
    """What a read will fetch: one row per (scene, band), and the totals."""

    read: str
    rows: list[dict] = field(default_factory=list)
    """``scene``, ``date``, ``band`` (asset key), ``level`` (0: full resolution, k: the k-th
    overview), ``windows``, ``tiles``, ``gets``, ``bytes``, ``decoded_bytes`` per (scene, band)."""
    peak_bytes: int = 0
    """Estimated memory the read allocates at its peak (its output and working arrays); for
    ``chunks=``, what one task holds (the largest block's)."""
    tasks: int = 0
    """Dask tasks of a lazy cube (``chunks=``), each reading one block; 0 for a read done at once."""
    notes: list[str] = field(default_factory=list)
    """What the numbers mean beyond the table (tiles fetched by more than one dask task, ...)."""
    planned: _Planned | None = field(default=None, repr=False, compare=False)
    """The read as this dry run planned it, kept for the read itself: given as ``planned=`` to
    :func:`~rasteret_pipelines.reading.read_geometries`,
    :func:`~rasteret_pipelines.reading.cube.read_cube` (eager or with ``chunks=``),
    :func:`~rasteret_pipelines.reading.zonal_stats` or
    :func:`~rasteret_pipelines.reading.sample_points` (with the arguments it was planned with),
    the read runs this plan instead of planning again, so it fetches exactly what the plan says.
    None for plans added up (:meth:`sequence`). It holds what the read holds while it runs (the
    geometries' masks, the fields' pixel pairs, or a cube's scenes with their cached headers):
    drop the plan, or set this to None, to free them. Never pickled: a plan sent elsewhere
    carries its numbers only."""

    def __getstate__(self) -> dict:
        return {**self.__dict__, "planned": None}

    def _sum(self, key: str) -> int:
        return int(sum(r[key] for r in self.rows))

    @property
    def scenes(self) -> int:
        """Scenes read."""
        return len({r["scene"] for r in self.rows})

    @property
    def windows(self) -> int:
        """(scene, band) windows: one per geometry for a read, one per tile for fields, one per
        block for a cube (one block unless ``chunks=``)."""
        return self._sum("windows")

    @property
    def tiles(self) -> int:
        """Tiles fetched and decoded: the distinct tiles of each batch, summed over batches."""
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

    @classmethod
    def sequence(cls, read: str, plans: Sequence[ReadPlan]) -> ReadPlan:
        """Reads done one after another as one plan: rows of the same (scene, band, level)
        added up, the largest peak, every note."""
        rows: dict[tuple, dict] = {}
        for plan in plans:
            for r in plan.rows:
                row = rows.setdefault((r["scene"], r["band"], r["level"]), {**r, **{k: 0 for k in _COUNTS}})
                for k in _COUNTS:
                    row[k] += r[k]
        return cls(
            read,
            list(rows.values()),
            max((p.peak_bytes for p in plans), default=0),
            sum(p.tasks for p in plans),
            [n for p in plans for n in p.notes],
        )

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
            "tasks": self.tasks,
        }

    def markdown(self) -> str:
        """The totals as a Markdown table (see :func:`plans_markdown`)."""
        return plans_markdown([(self.read, self)])

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
        from html import escape

        notes = "".join(f"<li>{escape(n)}</li>" for n in self.notes)
        return (
            f"<p><b>{escape(s['read'])}</b>: a dry run from the cached headers (no request made)</p>"
            f"<table><tr>{head}</tr><tr>{cells}</tr></table>"
            + (f"<ul>{notes}</ul>" if notes else "")
            + self.to_pandas().to_html(index=False, max_rows=40)
        )


@dataclass
class _Planned:
    """A planned read kept on its :class:`ReadPlan`: which read of which collection with which
    arguments (complete, defaults included) it is the plan of, and the plan itself."""

    read: str
    collection: object
    arguments: dict
    work: object
    """A :class:`~rasteret_pipelines.reading.read.PlannedRead`, a
    :class:`~rasteret_pipelines.reading.zonal.FieldsPlan`, or a cube's plan and Dataset
    attributes (:func:`~rasteret_pipelines.reading.cube.plan_cube`'s result)."""


def reuse_plan(plan, reads: Sequence[str], collection, planner, arguments: dict):
    """The planned work of ``plan`` (a :class:`ReadPlan` from :func:`explain`) for a read that
    would otherwise call ``planner(collection, **arguments)``: checked to be the plan of that read
    (one of ``reads``), of that collection object, with equal arguments.

    Raises:
        InvalidReadArgumentError: ``plan`` is not an :func:`explain` plan holding its planned
            read, or it was planned for another read, collection or value of an argument (named).
    """
    kept = plan.planned if isinstance(plan, ReadPlan) else None
    if kept is None:
        what = (
            "a ReadPlan without its planned read (a sum of plans, an unpickled or released one)"
            if isinstance(plan, ReadPlan)
            else type(plan).__name__
        )
        raise InvalidReadArgumentError(f"planned= takes the ReadPlan explain() returned for this read, not {what}")
    if kept.read not in reads:
        raise InvalidReadArgumentError(f"planned= is the plan of {kept.read!r}, not of {reads[0]!r}")
    if kept.collection is not collection:
        raise InvalidReadArgumentError(
            "planned= was planned over another collection object: explain the read of this collection"
        )
    given = complete_arguments(planner, arguments)
    for name in sorted(set(given) | set(kept.arguments)):
        if not _same(kept.arguments.get(name, _MISSING), given.get(name, _MISSING)):
            raise InvalidReadArgumentError(
                f"planned= was planned with another {name}= than this read's: pass the arguments the plan "
                "was made with, or leave planned= out to plan the read again"
            )
    return kept.work


_MISSING = object()


def complete_arguments(planner, arguments: dict) -> dict:
    """``arguments`` of ``planner`` (by keyword) with its defaults filled in; ``collection`` left
    out, and ``options`` (a cube's) spelled out by field, so that a difference names the option."""
    bound = inspect.signature(planner).bind_partial(**arguments)
    bound.apply_defaults()
    out = dict(bound.arguments)
    out.pop("collection", None)
    options = out.pop("options", None)
    if options is not None:
        out.update({f.name: getattr(options, f.name) for f in dataclasses.fields(options)})
    return out


def _same(a, b) -> bool:
    """Whether two values of an argument are the same input: the same object, or equal (pandas
    objects by ``equals``, arrays element by element, anything else by ``==``)."""
    if a is b:
        return True
    try:
        if "pandas" in sys.modules:
            import pandas as pd

            if isinstance(a, (pd.DataFrame, pd.Series)) or isinstance(b, (pd.DataFrame, pd.Series)):
                # GeoPandas too: the same rows, in the same CRS
                return type(a) is type(b) and bool(a.equals(b)) and getattr(a, "crs", None) == getattr(b, "crs", None)
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return type(a) is type(b) and a.shape == b.shape and bool(np.all(a == b))
        return bool(a == b)
    except (TypeError, ValueError):  # values that do not compare as one truth value
        return False


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def plans_markdown(plans: Sequence[tuple[str, ReadPlan]]) -> str:
    """A Markdown table of labelled plans (scenes, windows, tiles, GETs, MB to fetch, decoded MB,
    peak MB), with their total (:meth:`ReadPlan.sequence`) when there are several, and the
    plans' notes below it."""
    head = "| read | scenes | windows | tiles | GETs | MB to fetch | decoded MB | peak MB |\n|---|---|---|---|---|---|---|---|"

    def line(label: str, p: ReadPlan) -> str:
        mb = (f"{v / 1e6:.1f}" for v in (p.bytes, p.decoded_bytes, p.peak_bytes))
        return f"| {label} | {p.scenes} | {p.windows} | {p.tiles} | {p.gets} | " + " | ".join(mb) + " |"

    lines = [head, *(line(label, p) for label, p in plans)]
    if len(plans) > 1:
        lines.append(line("**total**", ReadPlan.sequence("total", [p for _, p in plans])))
    notes = [f"- {n}" for _, p in plans for n in p.notes]
    return "\n".join(lines + ([""] + notes if notes else []))


def explain(read: str, collection, *args, **kwargs) -> ReadPlan:
    """The dry run of ``read`` over ``collection`` with the read's own arguments.

    Args:
        read: ``"get_xarray"``, ``"get_gdf"``, ``"zonal_stats"`` or ``"sample_points"``.
        collection: An opened :class:`~rasteret_pipelines.collections.Collection`.
        args, kwargs: The arguments the read takes after the collection
            (:func:`~rasteret_pipelines.reading.read_geometries`,
            :func:`~rasteret_pipelines.reading.zonal_stats`,
            :func:`~rasteret_pipelines.reading.sample_points`). For ``"get_xarray"``, an area
            (``bbox=``, ``geopolygon=``, ``like=``) or no geometries means the data cube, as in
            ``Rasteret.get_xarray``: :func:`~rasteret_pipelines.reading.cube.read_cube`'s
            arguments, ``chunks=`` included, and ``options=`` a
            :class:`~rasteret_pipelines.reading.options.CubeOptions` (or a ``ReadOptions``).

    Raises:
        InvalidReadArgumentError: an unknown read; otherwise what the read raises before its
            first request (bad bands, dates, geometries, grid, chunks, no scene).
    """
    from rasteret_pipelines.reading import read as read_module
    from rasteret_pipelines.reading import zonal
    from rasteret_pipelines.reading.cube import is_cube_read

    if read == "get_xarray":
        positional = list(args)
        geometries = positional.pop(0) if positional else kwargs.pop("geometries", None)
        if is_cube_read(geometries, kwargs):
            if "geometries" in kwargs:
                raise InvalidReadArgumentError("get_xarray: got multiple values for argument 'geometries'")
            bands = positional.pop(0) if positional else kwargs.pop("bands", None)
            return _cube_plan(read, collection, bands, geometries, positional, kwargs)
        args = (geometries, *positional)
    if read in ("get_xarray", "get_gdf"):
        bound = _bind(read_module.read_geometries, collection, *args, **kwargs)
        options = ReadOptions.resolve(bound.pop("options", None), bound.pop("option_keywords", {}), read)
        bound.update(options.keywords())
        bound.pop("resampling", None)
        bound.pop("reader", None)
        planned = read_module.plan_read(collection, **bound)
        out = _geometries_plan(read, planned, bound.get("values", "float"))
        out.planned = _Planned(read, collection, complete_arguments(read_module.plan_read, bound), planned)
        return out
    if read in ("zonal_stats", "sample_points"):
        function = getattr(zonal, read)
        bound = _bind(function, collection, *args, **kwargs)
        points = read == "sample_points"
        if not points:
            zonal.parse_stats(bound.pop("stats", zonal.DEFAULT_STATS))
        for name in ("reader", "output"):
            bound.pop(name, None)
        arguments = {"fields": bound.pop("points" if points else "fields"), **bound}
        plan = zonal.plan_fields(collection, points=points, **arguments)
        out = _fields_plan(read, plan)
        out.planned = _Planned(read, collection, complete_arguments(zonal.plan_fields, arguments), plan)
        return out
    raise InvalidReadArgumentError(f"explain knows the reads {', '.join(READS)}, not {read!r}")


def _bind(function, collection, *args, **kwargs) -> dict:
    try:
        bound = inspect.signature(function).bind(collection, *args, **kwargs)
    except TypeError as exc:
        raise InvalidReadArgumentError(f"{function.__name__}: {exc}") from None
    out = dict(bound.arguments)
    out.pop("collection", None)
    if "planned" in out:
        raise InvalidReadArgumentError(f"explain plans {function.__name__} itself: planned= is an argument of the read")
    return out


class _Rows:
    """Rows keyed by (href, level): (scene, date, band, level) and the counters."""

    def __init__(self):
        self.rows: dict[tuple[str, int], dict] = {}

    def add(self, href: str, level: int, scene: str, date, band: str, **counts) -> None:
        row = self.rows.get((href, level))
        if row is None:
            row = self.rows[href, level] = {
                "scene": scene,
                "date": str(np.datetime64(date, "D")),
                "band": band,
                "level": level,
                **{k: 0 for k in _COUNTS},
            }
        for k, v in counts.items():
            row[k] += v

    def add_batch(self, requests, names, config, overview: int = 0) -> set:
        """Tiles, GETs and bytes of one batch (one ``fetch_windows`` call, of one level) as the
        engine will fetch it; returns the batch's tiles."""
        from rasteret_pipelines.cog.header import validate_window
        from rasteret_pipelines.cog.read import plan_spans

        checked = [(h, validate_window(h, w, overview)) for h, w in requests]
        spans, _ = plan_spans(checked, overview, config)
        headers = {h.href: h for h, _ in checked}
        for h, _ in checked:
            self.add(h.href, overview, *names[h.href], windows=1)
        fetched = set()
        for href, href_spans in spans.items():
            level = headers[href].levels[overview]
            itemsize = max(level.bits_per_sample // 8, 1) * level.samples_per_pixel
            tiles = sum(len(span.blocks) for span in href_spans)
            fetched.update(block for span in href_spans for block, _, _ in span.blocks)
            self.add(
                href,
                overview,
                *names[href],
                tiles=tiles,
                gets=len(href_spans),
                bytes=sum(span.end - span.start for span in href_spans),
                decoded_bytes=tiles * level.tile_width * level.tile_height * itemsize,
            )
        return fetched


def _cube_plan(read: str, collection, bands, geometries, positional: list, kwargs: dict) -> ReadPlan:
    """The dry run of :func:`~rasteret_pipelines.reading.cube.read_cube`: every block as its
    read (or its dask task) will fetch it, one batch per level."""
    from rasteret_pipelines.reading import cube

    bound = _bind(cube.read_cube, collection, bands, *positional, geometries=geometries, **kwargs)
    options = CubeOptions.resolve(bound.pop("options", None), bound.pop("option_keywords", {}), read)
    chunks = options.chunks
    bands = bound.pop("bands")
    planned = cube.plan_cube(collection, bands, options, **bound)
    kept = _Planned(
        cube.CUBE_READ,
        collection,
        complete_arguments(cube.plan_cube, cube.plan_arguments(bands, options, bound)),
        planned,
    )
    plan = planned[0]
    if chunks is not None:
        try:
            import dask  # noqa: F401 (the read needs it: refuse the same way)
        except ImportError:
            raise DaskMissingError("chunks= needs dask: pip install 'rasteret-pipelines[dask]'") from None
    t_edges, y_edges, x_edges = cube.block_edges(plan, chunks)
    rows, counted = _Rows(), Counter()
    peak = 0
    for t0, t1 in zip(t_edges, t_edges[1:]):
        for r0, r1 in zip(y_edges, y_edges[1:]):
            for c0, c1 in zip(x_edges, x_edges[1:]):
                counted.update(_cube_block(rows, plan, (t0, t1, r0, r1, c0, c1)))
                peak = max(peak, cube.estimate_block(plan, t0, t1, (r1 - r0) * (c1 - c0)).total)
    out = ReadPlan(read, list(rows.rows.values()), int(peak), planned=kept)
    if chunks is None:
        return out
    out.tasks = (len(t_edges) - 1) * (len(y_edges) - 1) * (len(x_edges) - 1)
    eager = _Rows()
    _cube_block(eager, plan, (0, len(plan.steps), 0, plan.grid.height, 0, plan.grid.width))
    eager_plan = ReadPlan(read, list(eager.rows.values()))
    shared = sum(1 for n in counted.values() if n > 1)
    out.notes.append(
        f"chunks=: {out.tasks} dask tasks, one block each; the counts are for one compute of the whole "
        "Dataset, and peak_bytes is one task's (a worker running k tasks at once holds about k times it)"
    )
    if shared:
        out.notes.append(
            f"{shared} of {len(counted)} tiles are needed by more than one block and fetched by each "
            f"({out.tiles - eager_plan.tiles} tile fetches more than the eager read): the chunk edges do not "
            "fall on the tiles' edges; chunk sizes that are multiples of the tile size on the scenes' own "
            "grid avoid it"
        )
    else:
        out.notes.append("no tile is needed by more than one block: each is fetched once, as in the eager read")
    if (out.gets, out.bytes) != (eager_plan.gets, eager_plan.bytes):
        out.notes.append(
            f"the eager read would make {eager_plan.gets} GETs for {eager_plan.bytes} bytes; chunking "
            f"makes {out.gets - eager_plan.gets:+d} GETs and {out.bytes - eager_plan.bytes:+d} bytes "
            "(each block coalesces its own ranges)"
        )
    return out


def _cube_block(rows: _Rows, plan, bounds: tuple[int, ...]) -> set:
    """Add one block's batches to ``rows``; returns its tiles."""
    from rasteret_pipelines.reading.cube import block_requests

    tiles = set()
    for level, entries in block_requests(plan, *bounds).items():
        names = {h.href: (scene.id, scene.datetime, key) for scene, key, h, _ in entries}
        tiles |= rows.add_batch([(h, w) for _, _, h, w in entries], names, plan.config, level)
    return tiles


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
