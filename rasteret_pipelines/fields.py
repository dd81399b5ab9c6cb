"""Fields and their groups: a GeoJSON or GeoParquet field file (local or ``s3://``) to checked
polygons, each in a group of neighbours.

The file holds one feature (row) per field:

* ``id`` (required, unique): GeoJSON ``properties.id`` or the feature's own ``id``; a column
  (or the index) of a GeoParquet file. It must match ``[A-Za-z0-9][A-Za-z0-9_.-]*`` (at most 64
  characters), since it names rows, files and plots.
* a Polygon or MultiPolygon geometry: GeoJSON is longitude/latitude (RFC 7946; a legacy ``crs``
  member is honoured), GeoParquet carries its CRS in its metadata.
* ``name`` (optional).
* ``group`` (optional): the group the field belongs to, a safe name like the id.

**The grouping rule.** A field without a ``group`` goes to the cell of a fixed grid of
``cell_deg`` x ``cell_deg`` degrees (default :data:`DEFAULT_CELL_DEG`, 0.1 degrees, about 11 km
north-south) that holds its centroid (longitude/latitude, EPSG:4326). The cell is named after its
south-west corner: ``g_<lat>_<lon>`` with as many decimals as ``cell_deg`` has, e.g.
``g_13.0_77.5`` for the cell 13.0..13.1 N, 77.5..77.6 E, ``g_-13.1_-77.6`` south and west of
Greenwich. The rule depends on nothing but the field's own geometry and ``cell_deg``, so it is
deterministic: the same field is always in the same group, whatever else the file holds and in
whatever order. Neighbours share a group, so a group's fields share the source's tiles.

**Bad rows are skipped, not fatal.** A row with a missing or unsafe id, an id that occurs more
than once (every row holding it is skipped), a missing, empty, non-polygon or invalid geometry,
coordinates that do not land on the globe in EPSG:4326 (metres in a GeoJSON, a wrong CRS) or an
unsafe ``group`` is left out, and :attr:`FieldSet.skipped` names it with the reason. Only
file-level faults raise :class:`~rasteret_pipelines.errors.AoiFileError`: an unreadable file,
no CRS, no ``id`` column, or no usable field at all.

Everything is vectorised (shapely 2, pandas), so a 100,000-row GeoParquet file is checked and
grouped in seconds.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

import numpy as np
import shapely
import shapely.geometry

from rasteret_pipelines.errors import AoiFileError

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""What a field id or a group name may look like (it becomes a file name or partition key)."""
DEFAULT_CELL_DEG = 0.1
"""Side of the grid cells that group fields without a ``group`` column, in degrees."""


@dataclass(frozen=True)
class FieldSet:
    """The usable fields of one version of the field file, each in a group."""

    uri: str
    fingerprint: str
    """SHA-256 of the file's bytes."""
    frame: object
    """GeoDataFrame indexed by ``id`` (str), columns ``name``, ``group`` and ``geometry`` (EPSG:4326)."""
    skipped: dict = field(default_factory=dict)
    """``{row label: reason}`` of every row left out (``"row 7 (id 'x')"``)."""
    cell_deg: float = DEFAULT_CELL_DEG

    # AoiSet's interface, so code written for areas of interest takes fields too
    @property
    def invalid(self) -> dict:
        return self.skipped

    @property
    def ids(self) -> list[str]:
        return [str(i) for i in self.frame.index]

    def geometry(self, field_id: str):
        return self.frame.geometry.loc[field_id]

    def subset(self, ids):
        """GeoDataFrame of the given ids (in that order)."""
        return self.frame.loc[list(ids)]

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Bounds of all fields (min lon, min lat, max lon, max lat)."""
        minx, miny, maxx, maxy = self.frame.total_bounds
        return float(minx), float(miny), float(maxx), float(maxy)

    # groups
    @property
    def groups(self) -> list[str]:
        """The group names, sorted."""
        return sorted(set(self.frame["group"]))

    def group_ids(self) -> dict[str, list[str]]:
        """``{group: [field id, ...]}`` (ids in file order)."""
        out: dict[str, list[str]] = {}
        for fid, group in zip(self.frame.index, self.frame["group"]):
            out.setdefault(group, []).append(str(fid))
        return out

    def fields_of(self, groups) -> object:
        """GeoDataFrame of the fields of ``groups``."""
        wanted = set(groups)
        return self.frame[self.frame["group"].isin(wanted)]

    def group_bounds(self) -> dict[str, tuple[float, float, float, float]]:
        """``{group: (min lon, min lat, max lon, max lat)}`` of its fields."""
        b = self.frame.geometry.bounds
        agg = b.groupby(self.frame["group"]).agg({"minx": "min", "miny": "min", "maxx": "max", "maxy": "max"})
        return {g: tuple(float(v) for v in row) for g, row in zip(agg.index, agg.itertuples(index=False))}

    def group_digests(self) -> dict[str, str]:
        """``{group: digest}`` of its fields' ids, geometries and names: a group whose digest
        changed between two versions of the file has new, removed or changed fields."""
        wkb = shapely.to_wkb(np.asarray(self.frame.geometry.values), hex=True)
        names = ["" if n is None else str(n) for n in self.frame["name"]]
        rows = sorted(zip(self.frame["group"], self.frame.index, wkb, names))
        out: dict[str, str] = {}
        current, digest = None, None
        for group, fid, geom, name in rows:
            if group != current:
                if current is not None:
                    out[current] = digest.hexdigest()[:16]
                current, digest = group, hashlib.sha256()
            digest.update(f"{fid}\0{geom}\0{name}\n".encode())
        if current is not None:
            out[current] = digest.hexdigest()[:16]
        return out


def cell_decimals(cell_deg: float) -> int:
    """Decimals of a cell corner in a group name (those of ``cell_deg``: 0.1 -> 1, 0.05 -> 2)."""
    text = f"{cell_deg:.10f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def group_names(lon, lat, cell_deg: float = DEFAULT_CELL_DEG) -> list[str]:
    """``g_<lat>_<lon>`` of the grid cells holding the points (see the module docs).

    Raises:
        ValueError: ``cell_deg`` is not a positive number of degrees up to 90.
    """
    if not (isinstance(cell_deg, (int, float)) and 0 < cell_deg <= 90) or math.isnan(cell_deg):
        raise ValueError(f"cell_deg={cell_deg!r} must be a positive number of degrees (at most 90)")
    decimals = cell_decimals(cell_deg)
    lon, lat = np.asarray(lon, dtype="float64"), np.asarray(lat, dtype="float64")
    # a small tolerance so that a centroid exactly on a cell edge lands in the same cell on every machine
    ix = np.floor(lon / cell_deg + 1e-9).astype("int64")
    iy = np.floor(lat / cell_deg + 1e-9).astype("int64")
    return [f"g_{y * cell_deg:.{decimals}f}_{x * cell_deg:.{decimals}f}" for x, y in zip(ix.tolist(), iy.tolist())]


def load_fields(uri: str, *, cell_deg: float = DEFAULT_CELL_DEG) -> FieldSet:
    """Read, check and group the field file at ``uri`` (see the module docs).

    Raises:
        AoiFileError: the file is missing or unreadable, has no CRS or no ``id``, or no usable field.
    """
    from rasteret_pipelines.aois import read_aoi_bytes

    return parse_fields(read_aoi_bytes(uri), uri, cell_deg=cell_deg)


def parse_fields(data: bytes, uri: str = "<bytes>", *, cell_deg: float = DEFAULT_CELL_DEG) -> FieldSet:
    """Check field file bytes (GeoParquet when they start with ``PAR1``, else GeoJSON)."""
    import geopandas as gpd
    import pandas as pd

    fingerprint = hashlib.sha256(data).hexdigest()
    if data[:4] == b"PAR1":
        raw_ids, names, groups, geoms, crs = _from_geoparquet(data, uri)
        skipped: dict[str, str] = {}
    else:
        raw_ids, names, groups, geoms, crs, skipped = _from_geojson(data, uri)
    n = len(raw_ids)
    if n == 0 and not skipped:
        raise AoiFileError(f"AOI file {uri} contains no fields")
    ids = pd.Series(_id_texts(raw_ids), dtype="object")
    rows = np.arange(1, n + 1)
    reason = np.full(n, None, dtype="object")

    def skip(mask, why):
        mask = np.asarray(mask, dtype=bool) & pd.isna(reason)
        for i in np.flatnonzero(mask):
            reason[i] = why(i) if callable(why) else why

    missing = ids.isna().to_numpy()
    skip(missing, "no id")
    safe = (
        ids.fillna("").str.fullmatch(SAFE_NAME.pattern[1:-1]).to_numpy()
        & ~ids.fillna("").str.contains(r"\.\.").to_numpy()
    )
    skip(
        ~missing & ~safe,
        lambda i: f"id {ids[i]!r} is not a safe name ([A-Za-z0-9][A-Za-z0-9_.-]*, at most 64 characters)",
    )
    dup = ids.duplicated(keep=False).to_numpy() & ~missing
    if dup.any():
        positions: dict[str, list[int]] = {}
        for i in np.flatnonzero(dup):
            positions.setdefault(ids[i], []).append(int(rows[i]))
        skip(
            dup,
            lambda i: f"duplicate id {ids[i]!r} (rows {', '.join(map(str, positions[ids[i]]))}); ids must be unique",
        )
    geoms = np.asarray(geoms, dtype=object)
    present = ~shapely.is_missing(geoms)
    skip(~present, "no geometry")
    empty = np.zeros(n, dtype=bool)
    empty[present] = shapely.is_empty(geoms[present])
    skip(empty, "empty geometry")
    kinds = np.full(n, -1)
    kinds[present] = shapely.get_type_id(geoms[present])
    polygonal = np.isin(kinds, (3, 6))  # Polygon, MultiPolygon
    skip(present & ~empty & ~polygonal, lambda i: f"geometry is a {geoms[i].geom_type}, not a Polygon or MultiPolygon")
    check = pd.isna(reason)
    valid = np.ones(n, dtype=bool)
    valid[check] = shapely.is_valid(geoms[check])
    skip(~valid, lambda i: f"invalid geometry: {shapely.is_valid_reason(geoms[i])}")
    group_text = pd.Series(
        [
            None if v is None or (isinstance(v, float) and v != v) or not str(v).strip() else str(v).strip()
            for v in groups
        ],
        dtype="object",
    )
    has_group = group_text.notna().to_numpy()
    group_safe = (
        group_text.fillna("x").str.fullmatch(SAFE_NAME.pattern[1:-1]).to_numpy()
        & ~group_text.fillna("").str.contains(r"\.\.").to_numpy()
    )
    skip(has_group & ~group_safe, lambda i: f"group {group_text[i]!r} is not a safe name")

    keep = pd.isna(reason)
    frame = gpd.GeoDataFrame({"name": list(names), "group": list(group_text)}, geometry=list(geoms), crs=crs)
    frame.index = ids
    frame = frame[keep]
    if len(frame) and str(frame.crs).upper() not in ("EPSG:4326", "OGC:CRS84"):
        try:
            frame = frame.to_crs("EPSG:4326")
        except Exception as exc:  # pyproj raises several types for unknown or unusable CRSs
            raise AoiFileError(f"AOI file {uri}: its CRS {crs!r} cannot be turned into EPSG:4326: {exc}") from exc
    if len(frame):
        b = frame.geometry.bounds
        on_globe = (
            np.isfinite(b.to_numpy()).all(axis=1)
            & (b["minx"] >= -180)
            & (b["maxx"] <= 180)
            & (b["miny"] >= -90)
            & (b["maxy"] <= 90)
        ).to_numpy()
        kept_rows = np.flatnonzero(keep)
        bounds = b.to_numpy()
        for j in np.flatnonzero(~on_globe):
            reason[kept_rows[j]] = (
                f"coordinates {tuple(round(float(v), 3) for v in bounds[j])} are not "
                f"longitude/latitude in EPSG:4326: is the CRS ({crs}) right?"
            )
        frame = frame[on_globe]
    for i in np.flatnonzero(~pd.isna(reason)):
        label = f"row {rows[i]}" + (f" (id {ids[i]!r})" if ids[i] is not None else "")
        skipped[label] = str(reason[i])
    if len(frame) == 0:
        first = next(iter(skipped.items()), ("", "no rows"))
        raise AoiFileError(f"AOI file {uri} has no usable field ({len(skipped)} rows skipped; {first[0]}: {first[1]})")
    frame.index.name = "id"
    frame = frame.set_crs("EPSG:4326", allow_override=True)
    centroids = shapely.centroid(np.asarray(frame.geometry.values))
    cells = group_names(shapely.get_x(centroids), shapely.get_y(centroids), cell_deg)
    frame["group"] = [g if isinstance(g, str) else c for g, c in zip(frame["group"], cells)]
    frame["name"] = [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in frame["name"]]
    return FieldSet(
        uri=uri, fingerprint=fingerprint, frame=frame[["name", "group", "geometry"]], skipped=skipped, cell_deg=cell_deg
    )


def _id_texts(raw_ids) -> list:
    out = []
    for value in raw_ids:
        if value is None or (isinstance(value, float) and (value != value)):
            out.append(None)
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        text = str(value).strip()
        out.append(text or None)
    return out


def _from_geoparquet(data: bytes, uri: str):
    from rasteret_pipelines.aois import geoparquet_frame

    frame, ids = geoparquet_frame(data, uri)
    n = len(ids)
    names = frame["name"].tolist() if "name" in frame.columns else [None] * n
    groups = frame["group"].tolist() if "group" in frame.columns else [None] * n
    return ids, names, groups, np.asarray(frame.geometry.values, dtype=object), frame.crs


def _from_geojson(data: bytes, uri: str):
    from rasteret_pipelines.aois import geojson_features

    features, crs = geojson_features(data, uri)
    ids, names, groups, geoms, skipped = [], [], [], [], {}
    for position, feature in enumerate(features, start=1):
        props = (feature.get("properties") or {}) if isinstance(feature, dict) else {}
        raw_id = props.get("id", feature.get("id") if isinstance(feature, dict) else None)
        geom = None
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        if geometry:
            try:
                geom = shapely.geometry.shape(geometry)
            except Exception as exc:  # shapely raises several types for bad coordinates
                skipped[f"feature {position}" + (f" (id {raw_id!r})" if raw_id is not None else "")] = (
                    f"malformed geometry: {exc}"
                )
                continue
        ids.append(raw_id)
        names.append(props.get("name"))
        groups.append(props.get("group"))
        geoms.append(geom)
    return ids, names, groups, geoms, crs, skipped
