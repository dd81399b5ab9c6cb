"""Areas of interest: a GeoJSON or GeoParquet file (local or ``s3://``) to checked polygons.

The file holds one feature (row) per area with

* ``id`` (required, unique): GeoJSON ``properties.id`` or the feature's own ``id``; a column
  of a GeoParquet file. It becomes a Dagster partition key and a folder name, so it must
  match ``[A-Za-z0-9][A-Za-z0-9_.-]*`` (at most 64 characters).
* a Polygon or MultiPolygon geometry: GeoJSON is longitude/latitude (RFC 7946; a legacy
  ``crs`` member is honoured), GeoParquet carries its CRS in its metadata.
* ``name`` (optional).

Every fault is an :class:`AoiFileError` naming the file and the feature (by position or id):
no features, a missing or malformed id, duplicate ids, an empty, invalid or non-polygon
geometry, a missing CRS, or coordinates that are not in the declared CRS.

The rows of the AOI file and of the field file (:mod:`rasteret_pipelines.fields`) are read by
:func:`read_rows` and checked by one checker, :func:`check_rows`, whose mode says which faults
leave a row out (named with its reason) and which raise: the AOI file is strict, or lenient
about geometries only; the field file is lenient about every row.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import shapely
import shapely.geometry

from rasteret_pipelines.errors import AoiFileError
from rasteret_pipelines.storage import Storage

AOI_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""What an AOI or field id, or a group name, may look like (it becomes a file name or partition key)."""
FAULTS = ("id", "geometry", "group", "crs")
"""The kinds of row fault :func:`check_rows` knows: a missing, unsafe or duplicate id; a missing,
malformed, empty, non-polygon or invalid geometry; an unsafe group name; coordinates that are
not where the file's CRS says (off the globe, or outside the CRS's area of use)."""


class Areas:
    """What the AOI set and the field set share: a GeoDataFrame ``frame`` indexed by id, in EPSG:4326."""

    frame: object

    @property
    def ids(self) -> list[str]:
        return [str(i) for i in self.frame.index]

    def geometry(self, aoi_id: str) -> shapely.Geometry:
        return self.frame.geometry.loc[aoi_id]

    def subset(self, ids) -> object:
        """GeoDataFrame of the given ids (in that order)."""
        return self.frame.loc[list(ids)]

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Bounds of all areas (min lon, min lat, max lon, max lat)."""
        minx, miny, maxx, maxy = self.frame.total_bounds
        return float(minx), float(miny), float(maxx), float(maxy)


@dataclass(frozen=True)
class AoiSet(Areas):
    """The checked areas of one version of the AOI file."""

    uri: str
    fingerprint: str
    """SHA-256 of the file's bytes (the AOI sensor's cursor)."""
    frame: object
    """GeoDataFrame indexed by ``id`` (str), columns ``name`` and ``geometry`` in EPSG:4326."""
    invalid: dict = field(default_factory=dict)
    """``{id: reason}`` of features left out of :attr:`frame` (lenient loading only): an
    invalid, empty or non-polygon geometry, or coordinates outside the CRS."""


def read_uri_bytes(uri: str) -> bytes:
    """The bytes of a file at a local path or ``s3://`` URI.

    Raises:
        FileNotFoundError: naming the location.
    """
    text = os.fspath(uri).rstrip("/")
    parent, name = posixpath.split(text) if text.startswith("s3://") else os.path.split(text)
    store = Storage.from_uri(parent or ".")
    if not store.exists(name):
        raise FileNotFoundError(f"{store.uri_of(name)} does not exist")
    return store.read_bytes(name)


def read_aoi_bytes(uri: str) -> bytes:
    """The bytes of the AOI file at a local path or ``s3://`` URI."""
    try:
        return read_uri_bytes(uri)
    except FileNotFoundError as exc:
        raise AoiFileError(f"AOI file {exc}") from exc
    except OSError as exc:  # S3 access errors, permissions
        raise AoiFileError(f"AOI file {uri} cannot be read: {exc}") from exc


def load_aois(uri: str, *, lenient: bool = False) -> AoiSet:
    """Read and check the AOI file (see the module docs).

    Args:
        lenient: Leave features whose geometry is unusable out of the set and name them in
            :attr:`AoiSet.invalid`, so each fails on its own partition (file-level faults, such as
            missing or duplicate ids, still raise).

    Raises:
        AoiFileError: the file is missing, unreadable, or any feature is not usable (lenient:
            no usable feature at all).
    """
    data = read_aoi_bytes(uri)
    return parse_aois(data, uri, lenient=lenient)


def parse_aois(data: bytes, uri: str = "<bytes>", *, lenient: bool = False) -> AoiSet:
    """Check AOI file bytes (GeoParquet when they start with ``PAR1``, else GeoJSON)."""
    fingerprint = hashlib.sha256(data).hexdigest()
    rows = read_rows(data, uri)
    if not rows.ids and not rows.malformed:
        raise AoiFileError(f"AOI file {uri} contains no areas of interest")
    checked = check_rows(rows, uri, skip=("geometry", "crs") if lenient else ())
    if checked.frame.empty:
        raise AoiFileError(next(iter(checked.skipped.values())) + " (and no usable AOI is left)")
    frame = checked.frame[["name", "geometry"]]
    invalid = {aoi_id: f"AOI file {uri}: {reason}" for aoi_id, reason in checked.skipped_ids.items()}
    return AoiSet(uri=uri, fingerprint=fingerprint, frame=frame, invalid=invalid)


@dataclass
class FeatureRows:
    """The rows of an AOI or field file as read, before any check."""

    ids: list
    """Raw ids (``properties.id``, the feature's ``id``, or the ``id`` column)."""
    names: list
    groups: list
    geometries: list
    """Shapely geometries, None where missing or malformed."""
    crs: object
    malformed: dict[int, str] = field(default_factory=dict)
    """``{row index: reason}`` of features whose geometry could not be parsed."""


def read_rows(data: bytes, uri: str) -> FeatureRows:
    """The rows of AOI or field file bytes (GeoParquet when they start with ``PAR1``, else GeoJSON).

    Raises:
        AoiFileError: a file-level fault (not GeoJSON or GeoParquet, no CRS, no ``id`` column).
    """
    if data[:4] == b"PAR1":
        frame, ids = geoparquet_frame(data, uri)
        n = len(ids)
        names = frame["name"].tolist() if "name" in frame.columns else [None] * n
        groups = frame["group"].tolist() if "group" in frame.columns else [None] * n
        return FeatureRows(ids, names, groups, list(frame.geometry.values), frame.crs)
    features, crs = geojson_features(data, uri)
    rows = FeatureRows([], [], [], [], crs)
    for position, feature in enumerate(features):
        feature = feature if isinstance(feature, dict) else {}
        props = feature.get("properties") or {}
        geom = None
        if feature.get("geometry"):
            try:
                geom = shapely.geometry.shape(feature["geometry"])
            except Exception as exc:  # shapely raises several types for bad coordinates
                rows.malformed[position] = f"malformed geometry: {exc}"
        rows.ids.append(props.get("id", feature.get("id")))
        rows.names.append(props.get("name"))
        rows.groups.append(props.get("group"))
        rows.geometries.append(geom)
    return rows


@dataclass
class CheckedRows:
    """What :func:`check_rows` kept and left out."""

    frame: object
    """GeoDataFrame of the usable rows in EPSG:4326, indexed by ``id`` (str), columns ``name``,
    ``group`` (None where the row has none) and ``geometry``."""
    skipped: dict[str, str]
    """``{row label: reason}`` of every row left out (``"row 7 (id 'x')"``)."""
    skipped_ids: dict[str, str]
    """The same, keyed by id, for rows left out that have a usable id."""


def check_rows(rows: FeatureRows, uri: str, *, skip: Collection[str] = FAULTS) -> CheckedRows:
    """Check every row of an AOI or field file, vectorised (shapely 2, pandas).

    Args:
        rows: The rows as read (:func:`read_rows`).
        skip: The mode: the kinds of fault (:data:`FAULTS`) that leave a row out. A fault of
            another kind raises. ``()`` is strict, :data:`FAULTS` is lenient about every row.

    Raises:
        AoiFileError: the first row (in file order) with a fault not in ``skip``, naming the
            file, the row and the fault; or a CRS that cannot be turned into EPSG:4326.
    """
    import geopandas as gpd
    import pandas as pd

    n = len(rows.ids)
    ids = pd.Series(_id_texts(rows.ids), dtype="object")
    reason = np.full(n, None, dtype="object")
    kind = np.full(n, None, dtype="object")

    def fault(mask, what: str, why) -> None:
        mask = np.asarray(mask, dtype=bool) & pd.isna(reason)
        for i in np.flatnonzero(mask):
            reason[i], kind[i] = (why(i) if callable(why) else why), what

    for i, why in rows.malformed.items():
        reason[i], kind[i] = why, "geometry"
    missing = ids.isna().to_numpy()
    fault(missing, "id", "no id")
    fault(
        ~missing & ~_safe_names(ids),
        "id",
        lambda i: f"id {ids[i]!r} is not a safe name ([A-Za-z0-9][A-Za-z0-9_.-]*, at most 64 characters)",
    )
    dup = ids.duplicated(keep=False).to_numpy() & ~missing
    if dup.any():
        positions: dict[str, list[int]] = {}
        for i in np.flatnonzero(dup):
            positions.setdefault(ids[i], []).append(int(i) + 1)
        fault(
            dup,
            "id",
            lambda i: f"duplicate id {ids[i]!r} (rows {', '.join(map(str, positions[ids[i]]))}); ids must be unique",
        )
    geoms = np.empty(n, dtype=object)
    geoms[:] = rows.geometries
    present = ~shapely.is_missing(geoms)
    fault(~present, "geometry", "no geometry")
    empty = np.zeros(n, dtype=bool)
    empty[present] = shapely.is_empty(geoms[present])
    fault(empty, "geometry", "empty geometry")
    kinds = np.full(n, -1)
    kinds[present] = shapely.get_type_id(geoms[present])
    polygonal = np.isin(kinds, (3, 6))  # Polygon, MultiPolygon
    fault(
        present & ~empty & ~polygonal,
        "geometry",
        lambda i: f"geometry is a {geoms[i].geom_type}, not a Polygon or MultiPolygon",
    )
    check = pd.isna(reason) & present
    valid = np.ones(n, dtype=bool)
    valid[check] = shapely.is_valid(geoms[check])
    fault(~valid, "geometry", lambda i: f"invalid geometry: {shapely.is_valid_reason(geoms[i])}")
    group_text = pd.Series([_text(v) for v in rows.groups], dtype="object")
    fault(
        group_text.notna().to_numpy() & ~_safe_names(group_text),
        "group",
        lambda i: f"group {group_text[i]!r} is not a safe name",
    )

    keep = pd.isna(reason)
    frame = gpd.GeoDataFrame(
        {"name": [_text(v, strip=False) for v in rows.names], "group": list(group_text)},
        geometry=list(geoms),
        crs=rows.crs,
    )
    frame.index = ids
    frame = frame[keep]
    if len(frame) and str(frame.crs).upper() not in ("EPSG:4326", "OGC:CRS84"):
        try:
            frame = frame.to_crs("EPSG:4326")
        except Exception as exc:  # pyproj raises several types for unknown or unusable CRSs
            raise AoiFileError(f"AOI file {uri}: its CRS {rows.crs!r} cannot be turned into EPSG:4326: {exc}") from exc
    if len(frame):
        kept_rows = np.flatnonzero(keep)
        bounds = frame.geometry.bounds.to_numpy()
        on_globe = np.isfinite(bounds).all(axis=1) & (bounds[:, 0] >= -180) & (bounds[:, 2] <= 180)
        on_globe &= (bounds[:, 1] >= -90) & (bounds[:, 3] <= 90)
        for j in np.flatnonzero(~on_globe):
            reason[kept_rows[j]], kind[kept_rows[j]] = (
                (
                    f"coordinates {tuple(round(float(v), 3) for v in bounds[j])} are not "
                    f"longitude/latitude in EPSG:4326: is the CRS ({rows.crs}) right?"
                ),
                "crs",
            )
        area = _area_of_use(rows.crs, uri)
        if area is not None:
            outside = on_globe & ~shapely.intersects(np.asarray(frame.geometry.values), area[0])
            for j in np.flatnonzero(outside):
                reason[kept_rows[j]], kind[kept_rows[j]] = (
                    (
                        f"lies outside the area of use of its CRS {rows.crs} ({area[1]}); are its coordinates "
                        "really in that CRS?"
                    ),
                    "crs",
                )
        frame = frame[pd.isna(reason[kept_rows])]
    skipped: dict[str, str] = {}
    skipped_ids: dict[str, str] = {}
    for i in np.flatnonzero(~pd.isna(reason)):
        label = f"row {i + 1}" + (f" (id {ids[i]!r})" if ids[i] is not None else "")
        if kind[i] not in skip:
            raise AoiFileError(f"AOI file {uri}: {label}: {reason[i]}")
        skipped[label] = str(reason[i])
        if kind[i] != "id":
            skipped_ids[ids[i]] = f"{label}: {reason[i]}"
    frame.index.name = "id"
    frame = frame.set_crs("EPSG:4326", allow_override=True)
    return CheckedRows(frame=frame, skipped=skipped, skipped_ids=skipped_ids)


def _area_of_use(crs, uri: str):
    """``(lon/lat box, name)`` of the CRS's area of use; None when it has none or spans the antimeridian."""
    from pyproj import CRS

    try:
        area = CRS.from_user_input(crs).area_of_use
    except Exception as exc:  # pyproj raises CRSError and others for unknown CRSs
        raise AoiFileError(f"AOI file {uri}: unknown CRS {crs!r}: {exc}") from exc
    if area is None or area.west > area.east:
        return None
    return shapely.geometry.box(area.west, area.south, area.east, area.north), area.name


def _safe_names(texts) -> np.ndarray:
    filled = texts.fillna("")
    return filled.str.fullmatch(AOI_ID.pattern[1:-1]).to_numpy() & ~filled.str.contains(r"\.\.").to_numpy()


def _text(value, strip: bool = True):
    """A cell as text, None for missing, NaN (and blank, when ``strip``)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip() if strip else str(value)
    return text or None


def _id_texts(raw_ids) -> list:
    out = []
    for value in raw_ids:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        out.append(_text(value))
    return out


def geojson_features(data: bytes, uri: str) -> tuple[list, str]:
    """``(features, CRS)`` of a GeoJSON Feature or FeatureCollection (the CRS from a legacy
    ``crs`` member, else EPSG:4326); shared by the AOI and the field file readers.

    Raises:
        AoiFileError: not JSON, not a Feature(Collection), or ``features`` not a list.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AoiFileError(f"AOI file {uri} is neither GeoJSON nor GeoParquet: {exc}") from exc
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    elif isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features")
    else:
        raise AoiFileError(f"AOI file {uri} is not a GeoJSON FeatureCollection")
    if not isinstance(features, list):
        raise AoiFileError(f"AOI file {uri}: 'features' is not a list")
    crs = "EPSG:4326"
    legacy = doc.get("crs")
    if isinstance(legacy, dict) and (legacy.get("properties") or {}).get("name"):
        crs = legacy["properties"]["name"]
    return features, crs


def geoparquet_frame(data: bytes, uri: str):
    """``(GeoDataFrame, raw ids)`` of a GeoParquet AOI or field file: ids from its ``id``
    column, else an index named ``id``; shared by the AOI and the field file readers.

    Raises:
        AoiFileError: not readable GeoParquet, no CRS, or no ids.
    """
    import geopandas as gpd

    try:
        frame = gpd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # not GeoParquet (no 'geo' metadata), corrupt file
        raise AoiFileError(f"AOI file {uri} is not a readable GeoParquet file: {exc}") from exc
    if frame.crs is None:
        raise AoiFileError(f"AOI file {uri} has no CRS in its GeoParquet metadata")
    if "id" in frame.columns:
        return frame, frame["id"].tolist()
    if frame.index.name == "id":
        return frame, frame.index.tolist()
    raise AoiFileError(f"AOI file {uri} has no 'id' column")


def write_aois_geojson(aois: dict, path: str | os.PathLike, names: dict | None = None) -> str:
    """Write ``{id: shapely polygon (lon/lat)}`` as an AOI GeoJSON file, atomically.

    Returns the path (or ``s3://`` URI) written.
    """
    features = [
        {
            "type": "Feature",
            "id": str(aoi_id),
            "properties": {"id": str(aoi_id), "name": (names or {}).get(aoi_id, f"AOI {aoi_id}")},
            "geometry": shapely.geometry.mapping(geom),
        }
        for aoi_id, geom in aois.items()
    ]
    doc = {"type": "FeatureCollection", "features": features}
    text = os.fspath(path)
    parent, name = (
        posixpath.split(text.rstrip("/")) if text.startswith("s3://") else os.path.split(os.path.abspath(text))
    )
    return Storage.from_uri(parent).write_bytes(json.dumps(doc, indent=1).encode(), name)
