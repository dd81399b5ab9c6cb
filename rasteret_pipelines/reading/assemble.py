"""Assembly: the output stack, allocated once, filled scene by scene as windows land.

:class:`Assembly` owns one numpy array per band (``geometry x time x row x col``, the layout of
:mod:`rasteret_pipelines.reading.model`) and one :class:`~rasteret_pipelines.reading.mosaic.MosaicMethod`
per (geometry, date, band) writing into its slice. :meth:`Assembly.add_scene` takes one scene's
windows for one geometry: puts them on the reference grid (warping the few that are not on it),
masks them (geometry, nodata, clouds), converts the values and feeds the mosaics, after which
the windows can go. :meth:`Assembly.dataset` wraps the arrays, without a copy, as the model's
Dataset.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence

import numpy as np

from rasteret_pipelines.errors import InvalidReadArgumentError
from rasteret_pipelines.reading.mosaic import MosaicMethod
from rasteret_pipelines.reading.plan import GeometryPlan, Grid, SceneReads, WindowRead, crs_of, crs_text


def output_type(plans: list[GeometryPlan], keys: dict[str, str], bands: Sequence[str], values: str):
    """(dtype, fill) of the output: float32 and NaN, or for ``native`` the files' own."""
    if values != "native":
        return np.dtype("float32"), np.nan
    first = next(iter(plans[0].layers.values()))[0].reads
    headers = [first[keys[b]].header for b in bands]
    kinds = {(h.dtype, h.nodata_text) for h in headers}
    if len(kinds) > 1:
        raise InvalidReadArgumentError(
            "values='native' needs bands of one dtype and nodata, got "
            + ", ".join(f"{b}: {h.dtype} nodata {h.nodata_text}" for b, h in zip(bands, headers))
            + "; read them separately or use values='float'"
        )
    return np.dtype(headers[0].dtype), headers[0].fill_value


HUGE_PAGE_THRESHOLD = 4 << 20
"""numpy asks Linux for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on arrays of this
many bytes and more."""


def empty_in_small_pages(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised array whose memory comes in ordinary 4 KiB pages.

    numpy's ``np.empty`` of 4 MiB or more asks for transparent huge pages. A fresh process that
    writes its output once pays for that at the first touch: where THP is in ``madvise`` mode
    each 2 MiB fault zeroes (and may first compact) a whole huge page, which costs more than the
    4 KiB faults of an array written once (figures in ``benchmarks/README.md``; numpy's own
    switch is ``NUMPY_MADVISE_HUGEPAGE=0``). A private anonymous ``mmap`` the size of the
    array is never advised, so it gets ordinary pages, without changing numpy's process-wide setting.
    The array owns the mapping (its ``base``) and releases it when collected.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < HUGE_PAGE_THRESHOLD:
        return np.empty(shape, dtype=dtype)
    private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS  # not shared with a forked child
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=private), dtype=dtype).reshape(shape)


class Assembly:
    """The output of one read, filled in place.

    Args:
        plans: The geometries' plans (their dates make the time axis).
        keys: Band name -> asset key.
        bands: Band names, in output order.
        quality: The source's cloud-mask rule when cloud masking, else None.
        values: ``float``, ``native`` or ``reflectance``.
        resampling: Used where a window must be warped onto the reference grid.
        mosaic: The :class:`MosaicMethod` subclass combining the scenes of a date.
    """

    def __init__(self, plans, keys, bands, quality, values, resampling, mosaic: type[MosaicMethod]):
        self.plans = plans
        self.keys = keys
        self.bands = list(bands)
        self.quality = quality
        self.values = values
        self.resampling = resampling
        self.dtype, self.fill = output_type(plans, keys, bands, values)
        self.times = sorted({day for p in plans for day in p.layers})
        t_index = {t: i for i, t in enumerate(self.times)}
        n, nt = len(plans), len(self.times)
        max_h = max(p.grid.height for p in plans)
        max_w = max(p.grid.width for p in plans)
        # Allocated, not written: a layer's memory is first touched when its data arrives (the
        # mosaic methods write every pixel, the padding is filled as the layer completes), so
        # page faults overlap the network instead of delaying the first request.
        self.data = {b: empty_in_small_pages((n, nt, max_h, max_w), self.dtype) for b in self.bands}
        self.scene_ids = np.full((n, nt), "", dtype=object)
        self._mosaics: dict[tuple[int, int], dict[str, MosaicMethod]] = {}
        self._left: dict[tuple[int, int], int] = {}
        self._t_index = t_index
        self._nodata: dict[str, object] = {}
        """href -> nodata (a header parses its nodata text on every access)."""
        for gi, plan in enumerate(plans):
            h, w = plan.grid.height, plan.grid.width
            for day, layer in plan.layers.items():
                ti = t_index[day]
                self._mosaics[gi, ti] = {
                    b: mosaic(self.data[b][gi, ti, :h, :w], len(layer), self.fill) for b in self.bands
                }
                self._left[gi, ti] = len(layer)

    def add_scene(self, gi: int, sr: SceneReads, arrays: dict[str, np.ndarray]) -> None:
        """Mask, convert and mosaic one scene's windows for geometry ``gi``."""
        plan = self.plans[gi]
        grid = plan.grid
        ti = self._t_index[sr.day]
        clear = plan.inside
        if self.quality is not None:
            band = self.quality.band
            read = sr.reads[band]
            qa, qa_valid = on_grid(read, arrays[band], grid, None, self._nodata_of(read.header))
            clear = clear & qa_valid & self.quality.clear(qa)
        mosaics = self._mosaics[gi, ti]
        for band in self.bands:
            key = self.keys[band]
            read = sr.reads[key]
            data, valid = on_grid(read, arrays[key], grid, self.resampling, self._nodata_of(read.header))
            valid &= clear
            mosaics[band].feed(convert(data, self.values, sr.scene.reflectance), valid, sr.rank)
        self._left[gi, ti] -= 1
        if self._left[gi, ti] == 0:
            self._finish(gi, ti)

    def _nodata_of(self, header):
        try:
            return self._nodata[header.href]
        except KeyError:
            value = self._nodata[header.href] = header.nodata
            return value

    def _finish(self, gi: int, ti: int) -> None:
        mosaics = self._mosaics.pop((gi, ti))
        used: set[int] = set()
        for m in mosaics.values():
            m.finish()
            used.update(m.contributors())
        grid = self.plans[gi].grid
        for b in self.bands:  # padding beyond this geometry's window
            layer_array = self.data[b][gi, ti]
            layer_array[grid.height :, :] = self.fill
            layer_array[: grid.height, grid.width :] = self.fill
        layer = self.plans[gi].layers[self.times[ti]]
        self.scene_ids[gi, ti] = ",".join(sr.scene.id for sr in layer if sr.rank in used)

    def dataset(self, attrs: dict):
        """The filled arrays as the model's Dataset (no copy)."""
        from rasteret_pipelines.reading.model import GeometryGrid, dataset_from_arrays

        for key in list(self._mosaics):  # a scene that never arrived cannot happen; be safe
            self._finish(*key)
        for gi, plan in enumerate(self.plans):  # dates with no scene of this geometry
            fed = {self._t_index[day] for day in plan.layers}
            for ti in range(len(self.times)):
                if ti not in fed:
                    for b in self.bands:
                        self.data[b][gi, ti] = self.fill
        grids = [
            GeometryGrid(p.gid, crs_text(p.grid.crs_key), tuple(p.grid.transform)[:6], p.grid.height, p.grid.width)
            for p in self.plans
        ]
        return dataset_from_arrays(grids, self.times, self.data, self.scene_ids, attrs)


def nodata_valid(data: np.ndarray, nodata) -> np.ndarray:
    """True where ``data`` is not nodata (and not NaN for floats)."""
    if nodata is None:
        valid = np.ones(data.shape, bool)
    elif math.isnan(nodata):
        valid = ~np.isnan(data)
    else:
        valid = data != nodata
    if data.dtype.kind == "f" and (nodata is None or not math.isnan(nodata)):
        valid &= ~np.isnan(data)
    return valid


def on_grid(read: WindowRead, data: np.ndarray, grid: Grid, resampling, nodata) -> tuple[np.ndarray, np.ndarray]:
    """(values, valid) of one read on the reference window; warped unless ``read.direct``.

    ``resampling``: a ``rasterio.enums.Resampling`` (or its name) for the warp; None is nearest.
    ``nodata``: ``read.header.nodata`` (parsed once per file by the caller).
    """
    header = read.header
    valid = nodata_valid(data, nodata)
    if read.direct:
        return data, valid
    import rasterio.warp
    from affine import Affine
    from rasterio.enums import Resampling

    if resampling is None:
        resampling = Resampling.nearest
    elif isinstance(resampling, str):
        resampling = Resampling[resampling]
    col0, row0, _, _ = read.window
    src_transform = Affine(*header.transform) @ Affine.translation(col0, row0)
    src_crs = crs_of(header.crs)
    out = np.zeros((grid.height, grid.width), dtype=data.dtype)
    rasterio.warp.reproject(
        data,
        out,
        src_transform=src_transform,
        src_crs=src_crs,
        dst_transform=grid.transform,
        dst_crs=grid.crs,
        resampling=resampling,
    )
    out_valid = np.zeros((grid.height, grid.width), dtype=np.uint8)
    rasterio.warp.reproject(
        valid.astype(np.uint8),
        out_valid,
        src_transform=src_transform,
        src_crs=src_crs,
        dst_transform=grid.transform,
        dst_crs=grid.crs,
        resampling=Resampling.nearest,
        src_nodata=None,
        dst_nodata=0,
        init_dest_nodata=True,
    )
    return out, out_valid.astype(bool)


def convert(raw: np.ndarray, mode: str, reflectance: tuple[float, float]) -> np.ndarray:
    """Stored values as the output wants them (float32 reflectance, or unchanged)."""
    if mode == "reflectance":
        scale, offset = reflectance
        return (raw.astype(np.float64) * scale + offset).astype(np.float32)  # rounded once
    return raw
