"""Write small, deterministic (Cloud-Optimized) GeoTIFFs with rasterio/GDAL for the test matrix.

:func:`write_cog` covers the layouts a COG reader meets in the wild: every GDAL TIFF codec that
this GDAL writes (:data:`CODECS`), integer and float dtypes, predictors 2 and 3, tile sizes,
pixel and band interleave, BigTIFF, big-endian byte order, overviews, nodata, internal masks,
sparse (omitted) tiles, PixelIsPoint, strips. Pixel data come from a seeded
``numpy.random.RandomState`` (smooth gradients plus noise, so they compress like imagery).

Each file is checked after writing (codec, predictor, block shape, interleave, byte order,
BigTIFF, overviews, mask, sparse tiles, ``AREA_OR_POINT``) and any GDAL warning during creation
is an error, so a case never silently degrades into something else (GDAL ignores unknown
creation options with only a warning).

GDAL applies PREDICTOR only with LZW, DEFLATE and ZSTD: with LZMA it is silently dropped
(no Predictor tag), so ``compress="LZMA", predictor=...`` raises :class:`FactoryError`.

Driver choice: GDAL's COG driver writes the canonical COG layout but has no byte-order,
interleave (before GDAL 3.11), PACKBITS or PHOTOMETRIC option, nor non-square tiles. Those
cases are written with the GTiff driver instead: an uncompressed tiled source with internal
overviews (``build_overviews``), copied with ``COPY_SRC_OVERVIEWS=YES`` so the result has the
overviews too, with the IFDs and tile data laid out COG-style.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import rasterio.shutil
from affine import Affine
from rasterio.enums import MaskFlags, Resampling
from rasterio.env import GDALVersion

__all__ = [
    "CODECS",
    "COG_DRIVER_CODECS",
    "GDAL_VERSION",
    "FactoryError",
    "DEFAULT_TRANSFORM",
    "make_data",
    "supports_float16",
    "write_cog",
]

GDAL_VERSION = GDALVersion.runtime()

COG_DRIVER_CODECS = frozenset(
    {"NONE", "LZW", "JPEG", "DEFLATE", "LZMA", "ZSTD", "WEBP", "LERC", "LERC_DEFLATE", "LERC_ZSTD"}
)
"""Codecs GDAL's COG driver writes (checked against GDAL 3.10's creation option list)."""

CODECS = COG_DRIVER_CODECS | {"PACKBITS"}
"""Codecs this factory writes. JPEG2000 is absent: GDAL's GTiff driver cannot write it."""

# rasterio's compression enum names for each COMPRESS value
_RIO_COMPRESSION = {
    "NONE": None,
    "LZW": "lzw",
    "JPEG": "jpeg",
    "DEFLATE": "deflate",
    "LZMA": "lzma",
    "ZSTD": "zstd",
    "WEBP": "webp",
    "LERC": "lerc",
    "LERC_DEFLATE": "lerc_deflate",
    "LERC_ZSTD": "lerc_zstd",
    "PACKBITS": "packbits",
}


class FactoryError(RuntimeError):
    """GDAL refused a case, warned while writing it, or wrote something other than asked."""


def supports_float16() -> bool:
    """Whether this GDAL has a Float16 data type (GDAL >= 3.11)."""
    return GDAL_VERSION >= GDALVersion(3, 11)


DEFAULT_TRANSFORM = Affine(10.0, 0.0, 399960.0, 0.0, -10.0, 2900040.0)
"""North-up UTM-like geotransform with 10 m pixels (a Sentinel-2 tile corner in zone 43N)."""


def make_data(dtype: str, count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Deterministic image-like pixels, shape (count, height, width).

    Smooth gradients and waves differ per band, with seeded noise on top; values span most of
    the dtype's range (including negative values for signed types and large values with the
    high bit set for unsigned 32-bit), and floats carry fractional digits.
    """
    rs = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    bands = []
    for b in range(count):
        fx, fy = (b + 1) * 2.1 * np.pi / max(width, 1), (b + 2) * 1.7 * np.pi / max(height, 1)
        smooth = 0.45 * (x / max(width - 1, 1)) + 0.35 * (y / max(height - 1, 1))
        smooth += 0.1 * np.sin(fx * x + b) * np.cos(fy * y)
        noise = rs.normal(0.0, 0.02, size=(height, width))
        bands.append(np.clip(smooth + noise + 0.05, 0.0, 1.0))  # in [0, 1]
    unit = np.stack(bands)
    dt = np.dtype(dtype)
    if dt.kind == "u":
        hi = {1: 255, 2: 65535, 4: 4_000_000_000}.get(dt.itemsize, 2**40)
        return np.round(unit * hi).astype(dt)
    if dt.kind == "i":
        info = np.iinfo(dt)
        lo, hi = {1: (-128, 127), 2: (-30000, 30000), 4: (-2_000_000_000, 2_000_000_000)}.get(
            dt.itemsize, (info.min // 2, info.max // 2)
        )
        return np.round(lo + unit * (hi - lo)).astype(dt)
    if dt.kind == "f":
        scale = 6000.0 if dt.itemsize >= 4 else 600.0
        return (unit * scale - 1000.0 * (dt.itemsize >= 4) + rs.uniform(0, 1, unit.shape)).astype(dt)
    raise ValueError(f"unsupported dtype {dtype}")


def write_cog(
    path: Path | str,
    *,
    dtype: str = "uint16",
    count: int = 1,
    width: int = 700,
    height: int = 530,
    blocksize: int | tuple[int, int] = 256,
    compress: str = "DEFLATE",
    predictor: int | None = None,
    interleave: str = "pixel",
    bigtiff: bool = False,
    endian: str = "little",
    overviews: bool = True,
    nodata: float | None = None,
    mask: bool = False,
    sparse: bool = False,
    pixel_is_point: bool = False,
    crs: str | None = "EPSG:32643",
    transform: Affine | None = None,
    scales: Sequence[float] | None = None,
    offsets: Sequence[float] | None = None,
    photometric: str | None = None,
    tiled: bool = True,
    driver: str | None = None,
    seed: int = 0,
    **creation_options: Any,
) -> Path:
    """Write one (Cloud-Optimized) GeoTIFF and check it is what was asked for.

    Args:
        path: Output file.
        dtype: numpy dtype name (``uint8`` .. ``float64``; ``float16`` needs GDAL >= 3.11).
        count: Number of bands.
        width, height: Full-resolution size; pick sizes that are not multiples of the block
            size so partial edge tiles are exercised.
        blocksize: Tile size, or ``(tile_width, tile_height)`` (non-square: GTiff driver). For
            ``tiled=False`` the rows per strip.
        compress: One of :data:`CODECS`.
        predictor: ``None``/1 (none), 2 (horizontal differencing) or 3 (floating point).
        interleave: ``"pixel"`` (chunky) or ``"band"`` (planar; GTiff driver).
        bigtiff: Write BigTIFF.
        endian: ``"little"`` or ``"big"`` (big: GTiff driver with ``ENDIANNESS=BIG``).
        overviews: Write internal overviews (halving until the image fits in one block).
        nodata: Nodata value (``float("nan")`` allowed for floats); some pixels are set to it.
        mask: Add an internal GDAL mask (``GDAL_TIFF_INTERNAL_MASK=YES``) hiding a disc.
        sparse: ``SPARSE_OK=TRUE``, with whole blocks equal to nodata (0 when none) so GDAL
            omits them (TileByteCounts 0). Verified after writing.
        pixel_is_point: Write ``AREA_OR_POINT=Point`` (GeoTIFF RasterPixelIsPoint).
        crs: Anything rasterio accepts, or ``None`` for no CRS.
        transform: Geotransform (default :data:`DEFAULT_TRANSFORM`).
        scales, offsets: Per-band scale/offset metadata.
        photometric: ``PHOTOMETRIC`` creation option (``"RGB"``, ``"YCBCR"``, ...; GTiff
            driver). The COG driver already writes 3-band JPEG as YCbCr.
        tiled: ``False`` writes strips (GTiff driver).
        driver: ``"COG"``, ``"GTiff"`` or ``None`` to use COG unless an option needs GTiff.
        seed: Seed of the pixel data.
        **creation_options: Passed to GDAL as they are (``quality=100``, ``max_z_error=0``,
            ``webp_lossless=True``, ``jpeg_quality=90``, ``zlevel=9``, ...).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FactoryError: GDAL refused the case, warned, or the file does not match the request.
        ValueError: Contradictory arguments (e.g. ``driver="COG"`` with ``endian="big"``).
    """
    path = Path(path)
    compress = compress.upper()
    if compress not in CODECS:
        raise ValueError(f"compress={compress!r} is not one of {sorted(CODECS)}")
    if interleave not in ("pixel", "band"):
        raise ValueError(f"interleave must be 'pixel' or 'band', got {interleave!r}")
    if endian not in ("little", "big"):
        raise ValueError(f"endian must be 'little' or 'big', got {endian!r}")
    if dtype == "float16" and not supports_float16():
        raise FactoryError(f"GDAL {GDAL_VERSION} has no Float16 data type (needs >= 3.11)")
    bx, by = (blocksize, blocksize) if isinstance(blocksize, int) else blocksize
    predictor = None if predictor in (None, 1) else int(predictor)

    needs_gtiff = [
        reason
        for reason, flag in [
            ("endian='big'", endian == "big"),
            ("interleave='band'", interleave == "band" and count > 1),
            ("compress='PACKBITS'", compress not in COG_DRIVER_CODECS),
            ("photometric", photometric is not None),
            ("non-square blocks", bx != by),
            ("tiled=False", not tiled),
        ]
        if flag
    ]
    if driver is None:
        driver = "GTiff" if needs_gtiff else "COG"
    if driver == "COG" and needs_gtiff:
        raise ValueError(f"the COG driver cannot write {', '.join(needs_gtiff)}: use driver='GTiff'")
    if driver not in ("COG", "GTiff"):
        raise ValueError(f"driver must be 'COG' or 'GTiff', got {driver!r}")

    data = make_data(dtype, count, height, width, seed)
    fill = 0 if nodata is None else nodata
    if nodata is not None:
        _paint_nodata(data, nodata)
    if sparse:
        _blank_blocks(data, fill, bx, by)
    transform = transform if transform is not None else DEFAULT_TRANSFORM

    path.parent.mkdir(parents=True, exist_ok=True)
    src_path = path.with_name(path.stem + ".src.tif")
    # strips: overviews down to what would fit in one 256x256 tile
    levels = _overview_factors(width, height, *((bx, by) if tiled else (256, 256))) if overviews else []
    try:
        with _gdal_warnings_are_errors(path):
            _write_source(
                src_path,
                data,
                dtype=dtype,
                nodata=nodata,
                mask=mask,
                crs=crs,
                transform=transform,
                scales=scales,
                offsets=offsets,
                pixel_is_point=pixel_is_point,
                sparse=sparse,
                overview_factors=levels if driver == "GTiff" else [],
            )
            options: dict[str, Any] = {"compress": compress, "bigtiff": "YES" if bigtiff else "NO"}
            if sparse:
                options["sparse_ok"] = "TRUE"
            if driver == "COG":
                options["blocksize"] = bx
                if predictor:
                    options["predictor"] = str(predictor)
                options["overviews"] = "AUTO" if overviews else "NONE"
                if overviews:
                    options.setdefault("overview_resampling", "AVERAGE")
            else:
                options.update(
                    interleave=interleave.upper(),
                    endianness="BIG" if endian == "big" else "LITTLE",
                    copy_src_overviews="YES" if levels else "NO",
                )
                if tiled:
                    options.update(tiled="YES", blockxsize=bx, blockysize=by)
                else:
                    options.update(tiled="NO", blockysize=by)
                if predictor:
                    options["predictor"] = predictor
                if photometric:
                    options["photometric"] = photometric
            options.update(creation_options)
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
                rasterio.shutil.copy(src_path, path, driver=driver, **options)
    except rasterio.errors.RasterioError as exc:
        raise FactoryError(f"GDAL could not write {path.name}: {exc}") from exc
    finally:
        src_path.unlink(missing_ok=True)
        Path(str(src_path) + ".msk").unlink(missing_ok=True)

    _verify(
        path,
        dtype=dtype,
        count=count,
        width=width,
        height=height,
        block=(bx, by),
        tiled=tiled,
        compress=compress,
        predictor=predictor,
        interleave=interleave,
        bigtiff=bigtiff,
        endian=endian,
        overviews=overviews,
        mask=mask,
        sparse=sparse,
        pixel_is_point=pixel_is_point,
        nodata=nodata,
    )
    return path


# --- helpers ------------------------------------------------------------------------------------


def _overview_factors(width: int, height: int, bx: int, by: int) -> list[int]:
    """2, 4, 8, ... until the overview fits in one block (what the COG driver does)."""
    factors, f = [], 2
    while True:
        w, h = -(-width // (f // 2)), -(-height // (f // 2))
        if w <= bx and h <= by:
            break
        factors.append(f)
        f *= 2
    return factors


def _paint_nodata(data: np.ndarray, nodata: float) -> None:
    """Set a diagonal stripe and a small block of every band to ``nodata``."""
    _, h, w = data.shape
    y, x = np.mgrid[0:h, 0:w]
    stripe = np.abs((x - y) - w // 3) < max(3, w // 40)
    data[:, stripe] = nodata
    data[:, h // 2 : h // 2 + 9, 5:40] = nodata


def _blank_blocks(data: np.ndarray, fill: float, bx: int, by: int) -> None:
    """Fill whole blocks with ``fill`` so a SPARSE_OK writer omits them.

    The top-left 2x2 blocks (enough for the first overview's top-left block to be empty too)
    and one more block on the second block row, when the image is big enough.
    """
    _, h, w = data.shape
    data[:, : min(h, 2 * by), : min(w, 2 * bx)] = fill
    if w > 3 * bx and h > 2 * by:
        data[:, by : 2 * by, 3 * bx : 4 * bx] = fill


def _mask_array(height: int, width: int) -> np.ndarray:
    """uint8 mask, 255 valid / 0 invalid: a disc in the middle and the last 7 columns invalid."""
    y, x = np.mgrid[0:height, 0:width]
    r = min(height, width) / 5
    invalid = (x - width * 0.6) ** 2 + (y - height * 0.4) ** 2 < r**2
    invalid[:, -7:] = True
    return np.where(invalid, 0, 255).astype(np.uint8)


def _write_source(
    src_path: Path,
    data: np.ndarray,
    *,
    dtype: str,
    nodata: float | None,
    mask: bool,
    crs: str | None,
    transform: Affine,
    scales: Sequence[float] | None,
    offsets: Sequence[float] | None,
    pixel_is_point: bool,
    sparse: bool,
    overview_factors: list[int],
) -> None:
    count, height, width = data.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "transform": transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "interleave": "band",
    }
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    if sparse:
        profile["sparse_ok"] = True
    if count == 3 and dtype == "uint8":
        profile["photometric"] = "RGB"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(src_path, "w", **profile) as dst:
            dst.write(data)
            if mask:
                dst.write_mask(_mask_array(height, width))
            if scales is not None:
                dst.scales = tuple(scales)
            if offsets is not None:
                dst.offsets = tuple(offsets)
            if pixel_is_point:
                dst.update_tags(AREA_OR_POINT="Point")
        if overview_factors:
            with rasterio.open(src_path, "r+") as dst:
                dst.build_overviews(overview_factors, Resampling.average)


@contextlib.contextmanager
def _gdal_warnings_are_errors(path: Path) -> Iterator[None]:
    """Turn GDAL warnings logged by rasterio while writing into :class:`FactoryError`."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                records.append(record)

    logger = logging.getLogger("rasterio._env")
    handler = Collect()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if records:
        msgs = "; ".join(r.getMessage() for r in records)
        raise FactoryError(f"GDAL warned while writing {path.name}: {msgs}")


def _verify(
    path: Path,
    *,
    dtype: str,
    count: int,
    width: int,
    height: int,
    block: tuple[int, int],
    tiled: bool,
    compress: str,
    predictor: int | None,
    interleave: str,
    bigtiff: bool,
    endian: str,
    overviews: bool,
    mask: bool,
    sparse: bool,
    pixel_is_point: bool,
    nodata: float | None,
) -> None:
    problems = []
    head = path.read_bytes()[:4]
    want_order = b"MM" if endian == "big" else b"II"
    if head[:2] != want_order:
        problems.append(f"byte order {head[:2]!r}, wanted {want_order!r}")
    version = int.from_bytes(head[2:4], "big" if head[:2] == b"MM" else "little")
    if version != (43 if bigtiff else 42):
        problems.append(f"TIFF version {version}, wanted {'BigTIFF' if bigtiff else 'classic'}")
    with rasterio.open(path) as src:
        structure = src.tags(ns="IMAGE_STRUCTURE")
        if (src.count, src.height, src.width) != (count, height, width):
            problems.append(f"shape {(src.count, src.height, src.width)}")
        if dtype != "float16" and src.dtypes[0] != dtype:
            problems.append(f"dtype {src.dtypes[0]}")
        got = src.compression.name if src.compression else None
        if got != _RIO_COMPRESSION[compress]:
            problems.append(f"compression {got}, wanted {compress}")
        if int(structure.get("PREDICTOR", 1)) != (predictor or 1):
            problems.append(f"predictor {structure.get('PREDICTOR')}, wanted {predictor}")
        bh, bw = src.block_shapes[0]
        if tiled and (bw, bh) != block:
            problems.append(f"block {bw}x{bh}, wanted {block[0]}x{block[1]}")
        if not tiled and (bw != width or bh != min(block[1], height)):
            problems.append(f"strips {bw}x{bh}, wanted rows per strip {block[1]}")
        if count > 1 and structure.get("INTERLEAVE", "").lower() != interleave:
            problems.append(f"interleave {structure.get('INTERLEAVE')}, wanted {interleave}")
        n_ovr = len(src.overviews(1))
        if overviews and n_ovr == 0 and (width > block[0] or height > block[1]):
            problems.append("no overviews")
        if not overviews and n_ovr:
            problems.append(f"{n_ovr} unexpected overviews")
        has_mask = MaskFlags.per_dataset in src.mask_flag_enums[0] and MaskFlags.alpha not in src.mask_flag_enums[0]
        if mask != has_mask:
            problems.append(f"mask flags {src.mask_flag_enums[0]}")
        if (src.tags().get("AREA_OR_POINT", "Area") == "Point") != pixel_is_point:
            problems.append(f"AREA_OR_POINT={src.tags().get('AREA_OR_POINT')}")
        if nodata is None and src.nodata is not None:
            problems.append(f"unexpected nodata {src.nodata}")
        if nodata is not None and not (
            src.nodata == nodata or (np.isnan(nodata) and src.nodata is not None and np.isnan(src.nodata))
        ):
            problems.append(f"nodata {src.nodata}, wanted {nodata}")
        if sparse:
            empty = sum(_block_is_empty(src, i, j) for i in range(-(-height // bh)) for j in range(-(-width // bw)))
            if empty == 0:
                problems.append("SPARSE_OK wrote every block")
    if problems:
        raise FactoryError(f"{path.name} is not as requested: {'; '.join(problems)}")


def _block_is_empty(src: rasterio.DatasetReader, i: int, j: int) -> bool:
    """True when block (row i, col j) of band 1 has no bytes on disk (GDAL knows no size)."""
    try:
        return src.block_size(1, i, j) == 0
    except rasterio.errors.RasterBlockError:
        return True
