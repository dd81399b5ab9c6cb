"""Composite mosaic methods: per-pixel reductions over the scenes of one time step.

These are the rest of rio-tiler's (and lazycogs') mosaic methods, beside
:class:`~rasteret_pipelines.reading.mosaic.FirstValid` and
:class:`~rasteret_pipelines.reading.mosaic.LastValid`: :class:`Highest`, :class:`Lowest`,
:class:`Mean`, :class:`Median`, :class:`Stdev` (population, ``ddof=0`` as ``numpy.std``) and
:class:`Count` (how many scenes are valid at the pixel). Each is a
:class:`~rasteret_pipelines.reading.mosaic.MosaicMethod`: fed every scene's values with the
pixels valid there (not nodata, inside the geometries, clear when cloud masking, so the cloud
mask applies before the reduction) in any order, and equal to the numpy reduction over the
valid values whatever that order. ``get_xarray(..., groupby="month", mosaic="median")`` is a
monthly median composite.

Where no scene is valid a pixel gets the output's fill value (NaN, or nodata for native
values), except :class:`Count`, which writes 0. Integer outputs (``values="native"``) round
the mean, median and deviation to the nearest integer.
"""

from __future__ import annotations

import warnings

import numpy as np

from rasteret_pipelines.reading.mosaic import MosaicMethod


def _zeros(shape, dtype) -> np.ndarray:
    """Zeros in ordinary pages (see :func:`~rasteret_pipelines.reading.assemble.empty_in_small_pages`:
    working arrays of a cube are tens of MB, written once)."""
    out = _empty(shape, dtype)
    out.fill(0)
    return out


def _empty(shape, dtype) -> np.ndarray:
    from rasteret_pipelines.reading.assemble import empty_in_small_pages  # assemble imports mosaic

    return empty_in_small_pages(tuple(shape), dtype)


def _write(out: np.ndarray, values: np.ndarray, where: np.ndarray, fill) -> None:
    """``out`` = ``values`` where ``where``, else ``fill`` (rounded for integer outputs)."""
    if out.dtype.kind in "iu" and values.dtype.kind == "f":
        values = np.rint(values)
    np.copyto(out, values, casting="unsafe")
    out[~where] = fill


class _Reduction(MosaicMethod):
    """Counts valid scenes per pixel and remembers which scenes gave any pixel."""

    _empty_is_fill = True
    """Pixels no scene is valid at get the fill value (False: the result, e.g. a count of 0)."""

    def __init__(self, out: np.ndarray, scenes: int, fill):
        super().__init__(out, scenes, fill)
        self._count: np.ndarray | None = None
        self._used: set[int] = set()
        self._done = False

    def feed(self, values: np.ndarray, valid: np.ndarray, rank: int) -> None:
        if self._count is None:
            self._count = _zeros(self.out.shape, np.int32)
            self._start()
        if valid.any():
            self._used.add(rank)
            self._count += valid
            self._add(values, valid, rank)

    def _start(self) -> None:
        """Allocate the working arrays (at the first feed)."""

    def _add(self, values: np.ndarray, valid: np.ndarray, rank: int) -> None:
        raise NotImplementedError

    def _result(self, count: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def contributors(self) -> list[int]:
        return sorted(self._used)

    def finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self._count is None:
            self.out.fill(self._empty())
            return
        count = self._count
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
            result = self._result(count)
        where = count > 0 if self._empty_is_fill else np.ones(count.shape, bool)
        _write(self.out, result, where, self._empty())
        self._count = None
        self._release()

    def _empty(self):
        return self.fill

    def _release(self) -> None:
        """Drop the working arrays."""


class _Extreme(_Reduction):
    _better = staticmethod(np.greater)

    def _start(self) -> None:
        self._best = _zeros(self.out.shape, np.float64)

    def _add(self, values, valid, rank):
        seen = self._count > valid  # valid in an earlier scene
        take = valid & (~seen | self._better(values, self._best))
        np.copyto(self._best, values, where=take, casting="unsafe")

    def _result(self, count):
        return self._best

    def _release(self):
        self._best = None


class Highest(_Extreme):
    """The largest valid value of the step's scenes at each pixel."""

    _better = staticmethod(np.greater)


class Lowest(_Extreme):
    """The smallest valid value of the step's scenes at each pixel."""

    _better = staticmethod(np.less)


class Mean(_Reduction):
    """The mean of the valid values (summed in float64)."""

    def _start(self):
        self._sum = _zeros(self.out.shape, np.float64)

    def _add(self, values, valid, rank):
        np.add(self._sum, values, out=self._sum, where=valid, casting="unsafe")

    def _result(self, count):
        return self._sum / count

    def _release(self):
        self._sum = None


class Stdev(_Reduction):
    """The population standard deviation (``ddof=0``) of the valid values, in float64."""

    def _start(self):
        self._sum = _zeros(self.out.shape, np.float64)
        self._sq = _zeros(self.out.shape, np.float64)

    def _add(self, values, valid, rank):
        v = values.astype(np.float64)
        np.add(self._sum, v, out=self._sum, where=valid)
        np.add(self._sq, v * v, out=self._sq, where=valid)

    def _result(self, count):
        mean = self._sum / count
        return np.sqrt(np.maximum(self._sq / count - mean * mean, 0.0))

    def _release(self):
        self._sum = self._sq = None


class Median(_Reduction):
    """The median of the valid values (numpy's ``nanmedian`` over the scenes)."""

    def _start(self):
        self._stack = None
        self._fed: set[int] = set()

    def feed(self, values, valid, rank):
        super().feed(values, valid, rank)
        if self._stack is None:
            # Integer values (the files' own, for values="float" and "native") stack in their
            # dtype with its largest value marking "no value": it sorts after every valid
            # value or ties with it, so the order statistics below are unchanged, and the
            # sort moves half the bytes of float32. Other values stack as float32 with NaN.
            kind = values.dtype.kind
            dtype = values.dtype if kind in "ui" else np.dtype(np.float32)
            self._none = np.iinfo(dtype).max if kind in "ui" else np.nan
            # Not pre-filled: each fed layer is written whole, the others at the end.
            self._stack = _empty((max(self.scenes, 1), *self.out.shape), dtype)
        if rank not in self._fed:  # a scene with no valid pixel still takes its layer
            self._fed.add(rank)
            layer = self._stack[rank]
            np.copyto(layer, values, casting="unsafe")
            layer[~valid] = self._none

    def _add(self, values, valid, rank):
        pass  # written by feed, valid or not

    def _result(self, count):
        for rank in range(len(self._stack)):
            if rank not in self._fed:
                self._stack[rank] = self._none
        # numpy's nanmedian over a short first axis goes through masked arrays (seconds per
        # megapixel stack); one sort puts the missing values last, so the median of the k
        # valid values sits at ranks (k - 1) // 2 and k // 2.
        ordered = self._stack
        ordered.sort(axis=0)  # in place: no second stack
        k = count.astype(np.intp)
        lo = np.take_along_axis(ordered, np.maximum((k - 1) // 2, 0)[None], axis=0)[0]
        hi = np.take_along_axis(ordered, (k // 2)[None].clip(max=len(ordered) - 1), axis=0)[0]
        # float32 is exact for 8- and 16-bit values (and is nanmedian's own type for float32)
        exact = np.float64 if ordered.dtype.itemsize > 2 and ordered.dtype.kind in "ui" else np.float32
        return (lo.astype(exact) + hi) / exact(2)

    def _release(self):
        self._stack = None


class Count(_Reduction):
    """How many of the step's scenes are valid at each pixel (0 where none is)."""

    def _add(self, values, valid, rank):
        pass

    def _result(self, count):
        return count

    _empty_is_fill = False

    def _empty(self):
        return 0


COMPOSITE_METHODS: dict[str, type[MosaicMethod]] = {
    "highest": Highest,
    "lowest": Lowest,
    "mean": Mean,
    "median": Median,
    "stdev": Stdev,
    "count": Count,
}
"""The composite methods by name (``mosaic="median"``)."""
