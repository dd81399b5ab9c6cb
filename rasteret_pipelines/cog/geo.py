"""Georeferencing from GeoTIFF tags: CRS from GeoKeys, affine transform from the model tags.

Follows GDAL's reading rules, so that results equal what rasterio reports for the same file:
PixelIsPoint rasters have their origin shifted by half a pixel, and a raster without
georeferencing gets the identity transform.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from ..errors import GeoreferenceWarning
from .geocrs import KEY_DIRECTORY_VERSION, UNREADABLE_DIRECTORY, crs_from_geokeys

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

    Key 0 holds the directory header (version, revision, minor revision). Each key is read as
    libgeotiff reads it (``GTIFNew``), because GDAL's CRS is built from what libgeotiff returns:
    a key stored in GeoAsciiParams may run past the end of the text (it is cut at the end), but a
    key that starts past the end of its parameter tag, or that is stored in a parameter tag the
    file does not have (absent, or of a type libtiff cannot read, e.g. GeoAsciiParams typed
    DOUBLE), or in a tag that is not a parameter tag, makes libgeotiff refuse the whole
    directory (as it does a KeyDirectoryVersion other than 1): GDAL then reports no CRS, not a
    CRS built from the other keys. Such a directory
    is returned as its header and :data:`~rasteret_pipelines.cog.geocrs.UNREADABLE_DIRECTORY`
    (the reason), so that no key is used and the CRS is left unset with that reason.
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
    text = _ascii_params(ascii_params)
    keys[KEY_DIRECTORY_VERSION] = tuple(directory[:3])
    if directory[0] > 1:  # libgeotiff reads KeyDirectoryVersion 1 only (GvCurrentVersion)
        return _unreadable(keys, f"KeyDirectoryVersion is {directory[0]}, not 1")
    for i in range(max(directory[3], 0)):
        base = 4 + 4 * i
        if base + 4 > len(directory):
            break
        key, location, count, value = directory[base : base + 4]
        if location == 0:
            keys[key] = value
            continue
        problem = None
        if count < 0 or value < 0:
            problem = f"a negative count or offset ({count}, {value})"
        elif location == 34736:
            if doubles is None or value + count > len(doubles):
                problem = _outside(
                    "GeoDoubleParams (tag 34736)", value, count, None if doubles is None else len(doubles)
                )
            else:
                vals = tuple(float(v) for v in doubles[value : value + count])
                keys[key] = vals[0] if count == 1 else vals
        elif location == 34737:
            size = 0 if text is None else len(text)
            if value + count == size + 1 and count > 0:  # libgeotiff: a terminating NUL instead of "|"
                count -= 1
            elif value < size < value + count:  # libgeotiff: cut at the end of the text
                count = size - value
            if value + count > size:
                problem = _outside("GeoAsciiParams (tag 34737)", value, count, None if text is None else size)
            else:
                cited = (text or "")[value : value + count]
                keys[key] = cited[:-1] if cited.endswith("|") else cited  # libgeotiff drops one "|"
        elif location == 34735:
            if value + count > len(directory):
                problem = _outside("the GeoKeyDirectory (tag 34735)", value, count, len(directory))
            else:
                keys[key] = tuple(directory[value : value + count])
        else:
            problem = f"tag {location}, which is not a GeoTIFF parameter tag"
        if problem is not None:
            return _unreadable(keys, f"GeoKey {key} is stored in {problem}")
    return keys


def _unreadable(keys: dict[int, object], why: str) -> dict[int, object]:
    """The directory header and why libgeotiff refuses the directory (no key is used)."""
    return {
        KEY_DIRECTORY_VERSION: keys[KEY_DIRECTORY_VERSION],
        UNREADABLE_DIRECTORY: f"{why}; libgeotiff (GDAL) then reads none of the GeoKeys, so no CRS is reported",
    }


def _ascii_params(value) -> str | None:
    """GeoAsciiParams as libgeotiff gets it through libtiff: the text up to its first NUL, None
    when the tag is absent or of a type libtiff does not read as text (floats, rationals; byte
    values in integer types are read as bytes)."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and 0 <= v <= 255 for v in value):
        value = bytes(value)
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    return value.split("\x00", 1)[0]


def _outside(tag: str, value: int, count: int, size: int | None) -> str:
    if size is None:
        return f"{tag}, which the file does not have (or not as a type libtiff reads)"
    return f"{tag} at {value}..{value + count}, past its end ({size})"


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
