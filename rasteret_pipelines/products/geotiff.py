"""One Cloud-Optimized GeoTIFF per geometry and date, on the geometry's own source grid.

Layout below ``output_dir`` (a local folder or ``s3://bucket/prefix``)::

    geometry_<id>/<file_prefix>_<YYYYMMDD>.tif

Each file holds the geometry's true pixel window (the stacked model's padding is dropped)
with its CRS and window transform exactly as read (no resampling), so pixel ``(row, col)`` of
the file is pixel ``(row, col)`` of the geometry in the Dataset.

Decisions:

* **One date per file name.** The reader mosaics scenes of the same date into one layer, so
  the model's ``time`` values are unique dates (UTC midnight) and ``YYYYMMDD`` is unique. Should
  a Dataset from elsewhere hold several times on one day, those files get ``_<HHMMSS>`` appended
  (``ndvi_20240105_101502.tif``); two times within the same second are refused.
* **All-NaN layers are skipped** (logged at INFO): a geometry/date with no valid pixel in its
  window (no scene, fully clouded/masked) would only be an empty file. Such a geometry maps to
  fewer paths (possibly none) in the returned dict; every geometry is still a key.
* **COG options**: GDAL's COG driver (``LAYOUT=COG``: tiled, overviews after the IFDs, data in
  order), float32, one band named after the variable, nodata NaN, ``DEFLATE`` with
  ``PREDICTOR=3`` (floating-point predictor, accepted by GDAL 3.10's COG driver; readable by
  every GDAL build and by this project's COG engine, unlike ZSTD which needs libzstd), 256 x 256
  tiles (field windows are small: 512 tiles would be mostly padding), overviews generated
  automatically for windows larger than one tile, with ``AVERAGE`` resampling (NaN-aware mean,
  right for a continuous index).
* **Atomic writes.** A file is written under a hidden temporary name in its final folder and
  renamed (``os.replace``) into place, so a crash never leaves a partial file at the final name
  (and an existing file there stays intact). The temporary name ends in hex, not ``.tif``, so
  globbing the output folder never returns it; one left by a killed process is removed by the
  first write into that folder by a later process
  (:func:`~rasteret_pipelines.storage.sweep_once`). For ``s3://`` the COG is built in a local
  temporary folder and uploaded with :meth:`Storage.upload_file`; a completed S3 upload is atomic.
* **Tags** (GDAL metadata, ``src.tags()``): ``DATE`` (``YYYY-MM-DD``), ``DATETIME`` (ISO, UTC),
  ``GEOMETRY_ID``, ``SCENE_IDS`` (comma-joined), ``DATA_VAR``, and ``VALUES`` (the read's
  ``values`` attribute) when known.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
from affine import Affine

from rasteret_pipelines.errors import ProductError, ProductInputError, ProductWriteError

if TYPE_CHECKING:
    import xarray as xr

# rasterio (GDAL), xarray and the storage layer load with the first file written, so that
# ``from rasteret_pipelines import save_per_geometry`` stays cheap.

__all__ = ["COG_OPTIONS", "save_per_geometry", "write_cog"]

log = logging.getLogger(__name__)

BLOCKSIZE = 256
COG_OPTIONS: dict[str, object] = {
    "compress": "DEFLATE",
    "predictor": 3,
    "level": 6,
    "blocksize": BLOCKSIZE,
    "overview_resampling": "AVERAGE",
    "bigtiff": "IF_SAFER",
}
"""Creation options of GDAL's COG driver used by :func:`write_cog`."""


def _as_affine(transform) -> Affine:
    if isinstance(transform, Affine):
        return transform
    values = tuple(float(v) for v in np.asarray(transform, dtype=float).ravel())
    if len(values) == 9:
        values = values[:6]
    if len(values) != 6:
        raise ProductInputError(f"transform must be an Affine or 6 numbers (a, b, c, d, e, f), got {transform!r}")
    return Affine(*values)


def _write_band(dst, array: np.ndarray, tags: Mapping[str, object], description: str | None) -> None:
    """Fill an open COG writer (a separate function so tests can inject a crash mid-write)."""
    dst.write(array, 1)
    if description:
        dst.set_band_description(1, description)
    if tags:
        dst.update_tags(**{str(k): str(v) for k, v in tags.items()})


def write_cog(
    array2d,
    path: str | os.PathLike,
    crs,
    transform,
    tags: Mapping[str, object] | None = None,
    *,
    description: str | None = None,
    dtype: str | None = "float32",
    nodata: float | None = np.nan,
    **creation_options: object,
) -> str:
    """Write one band as a Cloud-Optimized GeoTIFF at a local ``path``, atomically.

    Products are float32 with NaN as nodata (the defaults). The tests and benchmarks write
    their integer scenes with the same function (``dtype=None, nodata=0``).

    Args:
        array2d: 2-D array (height, width), cast to ``dtype``.
        path: Local destination; parent folders are created.
        crs: Anything :meth:`rasterio.crs.CRS.from_user_input` takes (``"EPSG:32643"``, WKT).
        transform: :class:`affine.Affine` or its 6 coefficients ``(a, b, c, d, e, f)``
            (the model's ``transform`` coordinate) of the array's top-left pixel corner.
        tags: GDAL metadata items (values are stored as strings).
        description: Band description (e.g. the variable name).
        dtype: Data type of the file; ``None`` keeps the array's.
        nodata: Nodata value of the band (``None``: none).
        **creation_options: GDAL COG driver options over :data:`COG_OPTIONS` (``blocksize=512``,
            ``overview_resampling="NEAREST"``, ...). Integer data get horizontal differencing
            (``predictor=2``) unless told otherwise: the floating-point predictor of
            :data:`COG_OPTIONS` applies to floats only.

    Returns:
        ``path`` as a string. The file only appears under that name once complete: it is
        written to a hidden temporary name in the same folder and renamed with ``os.replace``;
        on any error the temporary file is removed and an existing file at ``path`` is kept.
    """
    array = np.asarray(array2d)
    if array.ndim != 2 or 0 in array.shape:
        raise ProductInputError(f"write_cog needs a non-empty 2-D array, got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=array.dtype if dtype is None else np.dtype(dtype))
    options = {**COG_OPTIONS, **({} if array.dtype.kind == "f" else {"predictor": 2}), **creation_options}
    target = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    from rasteret_pipelines.storage import sweep_once, temp_path

    sweep_once(folder)
    tmp = temp_path(target)
    height, width = array.shape
    import rasterio
    from rasterio.crs import CRS

    try:
        with rasterio.open(
            tmp,
            "w",
            driver="COG",
            height=height,
            width=width,
            count=1,
            dtype=array.dtype.name,
            crs=CRS.from_user_input(crs),
            transform=_as_affine(transform),
            nodata=nodata,
            **options,
        ) as dst:
            _write_band(dst, array, tags or {}, description)
        os.replace(tmp, target)
    except BaseException:
        for leftover in (tmp, tmp + ".aux.xml"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise
    return target


def _file_stems(times: np.ndarray, file_prefix: str) -> list[str]:
    """``<prefix>_<YYYYMMDD>`` per time, with ``_<HHMMSS>`` on days holding several times."""
    seconds = times.astype("datetime64[s]")
    if len(set(seconds.tolist())) != len(seconds):
        raise ProductInputError(f"time coordinate has duplicate values (to the second): {seconds}")
    days = [str(t)[:10].replace("-", "") for t in seconds.astype("datetime64[D]")]
    per_day = Counter(days)
    stems = []
    for day, t in zip(days, seconds):
        stem = f"{file_prefix}_{day}"
        if per_day[day] > 1:
            stem += "_" + str(t)[11:19].replace(":", "")
        stems.append(stem)
    return stems


def _geometry_folder(geometry_id) -> str:
    text = str(geometry_id)
    if not text or text in (".", "..") or "/" in text or "\\" in text:
        raise ProductInputError(f"geometry id {geometry_id!r} cannot be used in a folder name")
    return f"geometry_{text}"


def _as_model_dataset(data: xr.Dataset | xr.DataArray, data_var: str) -> xr.Dataset:
    import xarray as xr

    if isinstance(data, xr.DataArray):
        if data.name is not None and str(data.name) != data_var:
            raise ProductInputError(
                f"the DataArray is named {data.name!r} but data_var is {data_var!r}: pass data_var={data.name!r} "
                "(or rename the array) so the files are tagged with the right variable"
            )
        ds = data.to_dataset(name=data_var)
    elif isinstance(data, xr.Dataset):
        if data_var not in data.data_vars:
            raise ProductInputError(
                f"variable {data_var!r} not in the Dataset; its variables are {sorted(map(str, data.data_vars))}"
            )
        ds = data.drop_vars([v for v in data.data_vars if v != data_var])
    else:
        raise ProductInputError(f"expected an xarray Dataset or DataArray, got {type(data).__name__}")
    required = ("geometry", "time", "x", "y", "crs", "transform", "height", "width")
    missing = [c for c in required if c not in ds.coords]
    if missing or set(ds[data_var].dims) != {"geometry", "time", "row", "col"}:
        raise ProductInputError(
            f"not a stacked read (dims geometry, time, row, col with coords {', '.join(required)}): "
            f"dims {ds[data_var].dims}, missing coords {missing}"
        )
    if "scene_id" not in ds.coords:
        ds = ds.assign_coords(
            scene_id=(("geometry", "time"), np.full((ds.sizes["geometry"], ds.sizes["time"]), "", dtype=object))
        )
    return ds


def save_per_geometry(
    ds: xr.Dataset | xr.DataArray,
    output_dir: str | os.PathLike,
    file_prefix: str = "ndvi",
    data_var: str = "NDVI",
) -> dict[object, list[str]]:
    """Write one COG per geometry and date: ``output_dir/geometry_<id>/<file_prefix>_<YYYYMMDD>.tif``.

    Args:
        ds: The stacked read model (dims ``geometry, time, row, col``) holding ``data_var``,
            e.g. from :func:`~rasteret_pipelines.products.ndvi_dataset`; or a DataArray of that
            shape (such as ``ds.B5 - ds.B4``) named ``data_var`` or unnamed.
        output_dir: Local folder or ``s3://bucket/prefix``.
        file_prefix: File name prefix.
        data_var: The variable to write (one float32 band; NaN is nodata).

    Returns:
        ``{geometry_id: [path or s3:// URI, ...]}`` in time order, one key per geometry
        (an empty list when all of its layers were entirely NaN and skipped).

    Raises:
        ProductInputError: missing variable, not a stacked read, unusable ids or times.
        ProductError: a file could not be written or uploaded (wraps the cause).
    """
    if not file_prefix or "/" in file_prefix or "\\" in file_prefix:
        raise ProductInputError(f"file_prefix {file_prefix!r} must be a non-empty file name part")
    from rasteret_pipelines.reading.model import geometry_dataset
    from rasteret_pipelines.storage import Storage

    model = _as_model_dataset(ds, data_var)
    storage = Storage.from_uri(output_dir)
    times = model["time"].values
    stems = _file_stems(times, file_prefix)
    values = model.attrs.get("values")
    result: dict[object, list[str]] = {}
    staging_dir = nullcontext(None) if storage.is_local else tempfile.TemporaryDirectory(prefix="rasteret-cog-")
    with staging_dir as staging:
        for gid in model["geometry"].values.tolist():
            folder = _geometry_folder(gid)
            one = geometry_dataset(model, gid)
            crs, transform = one.attrs["crs"], one.attrs["transform"]
            layers = one[data_var].values
            scenes = one["scene_id"].values
            written: list[str] = []
            for ti, stem in enumerate(stems):
                layer = layers[ti]
                date = np.datetime64(times[ti], "s")
                if np.isnan(layer.astype(np.float32, copy=False)).all():
                    log.info("skipping geometry %r on %s: every pixel of %s is NaN", gid, str(date)[:10], data_var)
                    continue
                name = f"{stem}.tif"
                tags = {
                    "DATE": str(date)[:10],
                    "DATETIME": f"{date}Z",
                    "GEOMETRY_ID": str(gid),
                    "SCENE_IDS": str(scenes[ti] or ""),
                    "DATA_VAR": data_var,
                }
                if values:
                    tags["VALUES"] = str(values)
                try:
                    if storage.is_local:
                        written.append(
                            write_cog(layer, storage.path(folder, name), crs, transform, tags, description=data_var)
                        )
                    else:
                        local = write_cog(
                            layer, os.path.join(staging, folder, name), crs, transform, tags, description=data_var
                        )
                        written.append(storage.upload_file(local, folder, name))
                        os.unlink(local)
                except ProductError:
                    raise
                except Exception as exc:
                    target = storage.uri_of(folder, name)
                    raise ProductWriteError(
                        f"could not write {target} (geometry {gid!r}, {str(date)[:10]}): {exc}"
                    ) from exc
            result[gid] = written
    return result
