"""Georeferencing from GeoTIFF tags: CRS from GeoKeys, affine transform from the model tags.

Follows GDAL's reading rules, so that results equal what rasterio reports for the same file:
PixelIsPoint rasters have their origin shifted by half a pixel, and a raster without
georeferencing gets the identity transform.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from ..errors import GeoreferenceWarning
from .geocrs import KEY_DIRECTORY_VERSION, crs_from_geokeys

# GeoKey ids.
GT_MODEL_TYPE = 1024
GT_RASTER_TYPE = 1025

RASTER_PIXEL_IS_POINT = 2

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class Georeference:
    """CRS, full-resolution transform and raster type read from one IFD's GeoTIFF tags."""

    crs: str | None
    """``"EPSG:<code>"``, a WKT string for user-defined CRSs, or None when the file has none."""
    transform: tuple[float, float, float, float, float, float]
    """Affine coefficients (a, b, c, d, e, f) of the full-resolution grid, GDAL's convention."""
    pixel_is_point: bool
    """True when GTRasterTypeGeoKey says PixelIsPoint (the transform is already shifted)."""
    warnings: tuple[str, ...] = ()
    """The text of every :class:`~rasteret_pipelines.errors.GeoreferenceWarning` emitted."""


def parse_geokeys(directory, doubles, ascii_params) -> dict[int, object]:
    """GeoKeyDirectory (tag 34735) and its parameter tags as ``{key id: value}``.

    Key 0 holds the directory header (version, revision, minor revision). Entries that point
    outside their parameter tag, or into a tag of the wrong type, are left out (libgeotiff
    cannot read them either); the CRS code then treats the key as absent.
    """
    keys: dict[int, object] = {}
    if directory is None or isinstance(directory, (str, bytes)):
        return keys
    try:
        directory = [int(v) for v in directory]
    except (TypeError, ValueError, OverflowError):
        return keys
    if len(directory) < 4:
        return keys
    if isinstance(doubles, (int, float)):
        doubles = (doubles,)
    if doubles is not None and (
        isinstance(doubles, (str, bytes)) or not all(isinstance(v, (int, float)) for v in doubles)
    ):
        doubles = None
    if isinstance(ascii_params, bytes):
        ascii_params = ascii_params.decode("latin-1")
    if not isinstance(ascii_params, str):
        ascii_params = None
    keys[KEY_DIRECTORY_VERSION] = tuple(directory[:3])
    for i in range(max(directory[3], 0)):
        base = 4 + 4 * i
        if base + 4 > len(directory):
            break
        key, location, count, value = directory[base : base + 4]
        if count < 0 or value < 0:
            continue
        if location == 0:
            keys[key] = value
        elif location == 34736 and doubles is not None and value + count <= len(doubles):
            vals = tuple(float(v) for v in doubles[value : value + count])
            keys[key] = vals[0] if count == 1 else vals
        elif location == 34737 and ascii_params is not None and value < len(ascii_params):
            keys[key] = ascii_params[value : value + count].rstrip("|\x00")
        elif location == 34735 and value + count <= len(directory):
            keys[key] = tuple(directory[value : value + count])
    return keys


def georeference(
    geokeys: dict[int, object],
    pixel_scale,
    tiepoint,
    model_transformation,
    href: str | None = None,
) -> Georeference:
    """Build the CRS and GDAL-convention transform of the full-resolution image.

    The model tags are read in GDAL's order: a non-zero ModelPixelScale with the first tiepoint
    (even when ModelTransformation is present too), else ModelTransformation, else tiepoints
    alone, which are ground control points. A GCP file has no geotransform and no dataset CRS
    in GDAL (the CRS belongs to the GCPs), so the identity transform and ``crs=None`` are
    returned, with a :class:`~rasteret_pipelines.errors.GeoreferenceWarning`.
    """
    pixel_is_point = geokeys.get(GT_RASTER_TYPE) == RASTER_PIXEL_IS_POINT
    transform, shifts = _transform(pixel_scale, tiepoint, model_transformation)
    if transform is None and tiepoint is not None and len(tiepoint) >= 6:
        message = (
            f"{_shown(href)}: georeferenced by {len(tiepoint) // 6} ground control "
            "point(s) (tiepoints without a pixel scale), which this engine does not use: "
            "no transform and no CRS, as GDAL reports for the dataset"
        )
        warnings.warn(GeoreferenceWarning(message), stacklevel=3)
        return Georeference(crs=None, transform=IDENTITY, pixel_is_point=pixel_is_point, warnings=(message,))
    if transform is not None and pixel_is_point and shifts:
        a, b, c, d, e, f = transform
        transform = (a, b, c - 0.5 * a - 0.5 * b, d, e, f - 0.5 * d - 0.5 * e)
    crs, problem = _crs(geokeys, href)
    return Georeference(
        crs=crs,
        transform=transform if transform is not None else IDENTITY,
        pixel_is_point=pixel_is_point,
        warnings=(problem,) if problem else (),
    )


def _shown(href: str | None) -> str:
    """The href for a warning, without its query string (a presigned URL's signature)."""
    if not href:
        return "GeoTIFF"
    return href.split("?", 1)[0].split("#", 1)[0]


def _transform(pixel_scale, tiepoint, model_transformation):
    """(affine or None, whether GDAL shifts it for PixelIsPoint: not for a scale alone)."""
    if pixel_scale is not None and len(pixel_scale) >= 2:
        sx, sy = float(pixel_scale[0]), float(pixel_scale[1])
        if sx != 0.0 and sy != 0.0:
            if tiepoint is None or len(tiepoint) < 6:
                return (sx, 0.0, 0.0, 0.0, -sy, 0.0), False
            i, j, _, x, y, _ = (float(v) for v in tiepoint[:6])
            return (sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy), True
    if model_transformation is not None and len(model_transformation) >= 16:
        m = [float(v) for v in model_transformation]
        return (m[0], m[1], m[3], m[4], m[5], m[7]), True
    return None, False


def _crs(geokeys: dict[int, object], href: str | None) -> tuple[str | None, str | None]:
    """The CRS GDAL reports for these GeoKeys, and the text of the
    :class:`GeoreferenceWarning` emitted when it is not reproduced exactly (else None)."""
    result = crs_from_geokeys(geokeys)
    if result.problem is None:
        return result.crs, None
    what = "CRS left unset: " if result.crs is None else ""
    message = f"{_shown(href)}: {what}{result.problem}"
    warnings.warn(GeoreferenceWarning(message), stacklevel=4)
    return result.crs, message
