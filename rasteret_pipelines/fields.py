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
coordinates that do not land on the globe in EPSG:4326 (metres in a GeoJSON, a wrong CRS) or
outside the area of use of the file's CRS, or an unsafe ``group`` is left out, and :attr:`FieldSet.skipped` names it with the reason. Only
file-level faults raise :class:`~rasteret_pipelines.errors.AoiFileError`: an unreadable file,
no CRS, no ``id`` column, or no usable field at all.

The rows are read and checked as the AOI file's are (:func:`~rasteret_pipelines.aois.read_rows`,
:func:`~rasteret_pipelines.aois.check_rows`), in the checker's lenient mode; the checks are
vectorised (shapely 2, pandas), so the cost grows with the rows, not with a Python loop per check.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import shapely

from rasteret_pipelines.aois import AOI_ID, FAULTS, Areas, check_rows, read_aoi_bytes, read_rows
from rasteret_pipelines.errors import AoiFileError

SAFE_NAME = AOI_ID
"""What a field id or a group name may look like (it becomes a file name or partition key)."""
DEFAULT_CELL_DEG = 0.1
"""Side of the grid cells that group fields without a ``group`` column, in degrees."""


@dataclass(frozen=True)
class FieldSet(Areas):
    """The usable fields of one version of the field file, each in a group."""

    uri: str
    fingerprint: str
    """SHA-256 of the file's bytes."""
    frame: object
    """GeoDataFrame indexed by ``id`` (str), columns ``name``, ``group`` and ``geometry`` (EPSG:4326)."""
    skipped: dict = field(default_factory=dict)
    """``{row label: reason}`` of every row left out (``"row 7 (id 'x')"``)."""
    cell_deg: float = DEFAULT_CELL_DEG

    # AoiSet's interface (the rest comes from Areas), so code written for areas of interest takes fields too
    @property
    def invalid(self) -> dict:
        return self.skipped

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
    return parse_fields(read_aoi_bytes(uri), uri, cell_deg=cell_deg)


def parse_fields(data: bytes, uri: str = "<bytes>", *, cell_deg: float = DEFAULT_CELL_DEG) -> FieldSet:
    """Check field file bytes (GeoParquet when they start with ``PAR1``, else GeoJSON).

    The rows are checked by :func:`~rasteret_pipelines.aois.check_rows` in its lenient mode:
    every bad row is left out and named in :attr:`FieldSet.skipped`.
    """
    fingerprint = hashlib.sha256(data).hexdigest()
    rows = read_rows(data, uri)
    if not rows.ids:
        raise AoiFileError(f"AOI file {uri} contains no fields")
    checked = check_rows(rows, uri, skip=FAULTS)
    skipped, frame = checked.skipped, checked.frame
    if len(frame) == 0:
        first = next(iter(skipped.items()), ("", "no rows"))
        raise AoiFileError(f"AOI file {uri} has no usable field ({len(skipped)} rows skipped; {first[0]}: {first[1]})")
    centroids = shapely.centroid(np.asarray(frame.geometry.values))
    cells = group_names(shapely.get_x(centroids), shapely.get_y(centroids), cell_deg)
    frame["group"] = [g if isinstance(g, str) else c for g, c in zip(frame["group"], cells)]
    return FieldSet(
        uri=uri, fingerprint=fingerprint, frame=frame[["name", "group", "geometry"]], skipped=skipped, cell_deg=cell_deg
    )
