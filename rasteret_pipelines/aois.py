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
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
from dataclasses import dataclass, field

import shapely
import shapely.geometry

from rasteret_pipelines.errors import AoiFileError, InvalidGeometryError
from rasteret_pipelines.storage import Storage

AOI_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class AoiSet:
    """The checked areas of one version of the AOI file."""

    uri: str
    fingerprint: str
    """SHA-256 of the file's bytes (the AOI sensor's cursor)."""
    frame: object
    """GeoDataFrame indexed by ``id`` (str), columns ``name`` and ``geometry`` in EPSG:4326."""
    invalid: dict = field(default_factory=dict)
    """``{id: reason}`` of features left out of :attr:`frame` (lenient loading only): an
    invalid, empty or non-polygon geometry, or coordinates outside the CRS."""

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
    import geopandas as gpd

    fingerprint = hashlib.sha256(data).hexdigest()
    if data[:4] == b"PAR1":
        ids, names, geoms, crs = _from_geoparquet(data, uri)
    else:
        ids, names, geoms, crs = _from_geojson(data, uri)
    if not ids:
        raise AoiFileError(f"AOI file {uri} contains no areas of interest")
    seen: dict[str, int] = {}
    for position, aoi_id in enumerate(ids, start=1):
        if aoi_id in seen:
            raise AoiFileError(
                f"AOI file {uri}: duplicate id {aoi_id!r} (features {seen[aoi_id]} and {position}); ids must be unique"
            )
        seen[aoi_id] = position
    frame = gpd.GeoDataFrame({"name": names}, geometry=geoms, index=ids, crs=crs)
    frame.index.name = "id"
    from rasteret_pipelines.reading import normalize_geometries

    invalid: dict[str, str] = {}
    try:
        checked = normalize_geometries(frame)
    except InvalidGeometryError as exc:
        if not lenient:
            raise AoiFileError(f"AOI file {uri}: {exc}") from exc
        checked = []
        for position in range(len(ids)):  # find the bad ones, one by one
            try:
                checked += normalize_geometries(frame.iloc[[position]])
            except InvalidGeometryError as one:
                invalid[ids[position]] = f"AOI file {uri}: {one}"
    if lenient:
        for aoi_id, geom in checked:
            try:
                _check_area_of_use(crs, [(aoi_id, geom)], uri)
            except AoiFileError as exc:
                invalid[str(aoi_id)] = str(exc)
        checked = [(i, g) for i, g in checked if str(i) not in invalid]
        if not checked:
            raise AoiFileError(next(iter(invalid.values())) + " (and no usable AOI is left)")
    else:
        _check_area_of_use(crs, checked, uri)
    name_of = dict(zip(ids, names))
    kept = [str(i) for i, _ in checked]
    frame = gpd.GeoDataFrame(
        {"name": [name_of[i] for i in kept]}, geometry=[g for _, g in checked], index=kept, crs="EPSG:4326"
    )
    frame.index.name = "id"
    return AoiSet(uri=uri, fingerprint=fingerprint, frame=frame, invalid=invalid)


def _check_area_of_use(crs, checked, uri: str) -> None:
    """Coordinates given in the wrong CRS usually land outside the CRS's area of use."""
    from pyproj import CRS

    try:
        area = CRS.from_user_input(crs).area_of_use
    except Exception as exc:  # pyproj raises CRSError and others for unknown CRSs
        raise AoiFileError(f"AOI file {uri}: unknown CRS {crs!r}: {exc}") from exc
    if area is None or area.west > area.east:
        return
    valid = shapely.geometry.box(area.west, area.south, area.east, area.north)
    for aoi_id, geom in checked:
        if not geom.intersects(valid):
            raise AoiFileError(
                f"AOI file {uri}: AOI {aoi_id} lies outside the area of use of its CRS {crs} "
                f"({area.name}); are its coordinates really in that CRS?"
            )


def _check_id(value, position: int, uri: str) -> str:
    if value is None or (isinstance(value, float) and value != value) or str(value).strip() == "":
        raise AoiFileError(f"AOI file {uri}: feature {position} has no id (set properties.id)")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not AOI_ID.match(text):
        raise AoiFileError(
            f"AOI file {uri}: feature {position} has id {text!r}; ids must match "
            "[A-Za-z0-9][A-Za-z0-9_.-]* (at most 64 characters)"
        )
    return text


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


def _from_geojson(data: bytes, uri: str):
    features, crs = geojson_features(data, uri)
    ids, names, geoms = [], [], []
    for position, feature in enumerate(features, start=1):
        if not isinstance(feature, dict):
            raise AoiFileError(f"AOI file {uri}: feature {position} is not a GeoJSON feature")
        props = feature.get("properties") or {}
        raw_id = props.get("id", feature.get("id"))
        aoi_id = _check_id(raw_id, position, uri)
        geometry = feature.get("geometry")
        if not geometry:
            raise AoiFileError(f"AOI file {uri}: AOI {aoi_id} (feature {position}) has no geometry")
        try:
            geom = shapely.geometry.shape(geometry)
        except Exception as exc:  # shapely raises several types for bad coordinates
            raise AoiFileError(f"AOI file {uri}: AOI {aoi_id} has a malformed geometry: {exc}") from exc
        ids.append(aoi_id)
        names.append(str(props["name"]) if props.get("name") is not None else None)
        geoms.append(geom)
    return ids, names, geoms, crs


def _from_geoparquet(data: bytes, uri: str):
    frame, raw_ids = geoparquet_frame(data, uri)
    ids = [_check_id(v, i, uri) for i, v in enumerate(raw_ids, start=1)]
    names = (
        [None if v is None or v != v else str(v) for v in frame["name"]]
        if "name" in frame.columns
        else [None] * len(ids)
    )
    return ids, names, list(frame.geometry), frame.crs


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
