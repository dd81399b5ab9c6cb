"""Mosaic methods: how the scenes of one date become one layer of one band.

Where several scenes of a date cover a geometry, each band's layer is made by a
:class:`MosaicMethod` (the idea of lazycogs' ``MosaicMethodBase``): the reader creates one per
(geometry, date, band) over its slice of the output and ``feed``\\ s it every scene's values
with the pixels that are valid there (inside the geometry, not nodata, clear when cloud
masking) and the scene's *rank* (0 for the first scene of the date by datetime then id).
Scenes may arrive in any order (whichever tiles land first), so a method must give the same
result whatever the order; ranks say which scene is first.

:class:`FirstValid` (the default) keeps, for every pixel, the value of the lowest-ranked scene
valid there. :class:`LastValid` keeps the highest-ranked one. A new method subclasses
:class:`MosaicMethod` and is passed as ``read_geometries(..., mosaic=MyMethod)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from rasteret_pipelines.errors import InvalidReadArgumentError


class MosaicMethod(ABC):
    """One layer of one band, filled in place from the scenes of its date.

    Args:
        out: The layer's slice of the output, ``(height, width)``. It is *not* initialised
            (its memory is first touched when data arrives, so nothing sits idle waiting for
            the network): by the time :meth:`finish` returns the method must have written
            every pixel, ``fill`` where no scene gives a value.
        scenes: How many scenes will be fed (ranks are ``0 .. scenes - 1``).
        fill: The output's fill value (NaN, or the files' nodata for native values).
    """

    def __init__(self, out: np.ndarray, scenes: int, fill):
        self.out = out
        self.scenes = scenes
        self.fill = fill

    @abstractmethod
    def feed(self, values: np.ndarray, valid: np.ndarray, rank: int) -> None:
        """Take one scene: ``values`` (already in the output's units) where ``valid``."""

    @abstractmethod
    def contributors(self) -> list[int]:
        """Ranks of the scenes whose pixels are in the result, ascending."""

    def finish(self) -> None:  # noqa: B027 - an optional hook: methods without working memory keep this no-op
        """Called once every scene was fed; release working memory."""


class _ByRank(MosaicMethod):
    """Each pixel from one scene chosen by rank among those valid there (order-independent)."""

    _none: int
    """Rank-array value meaning "no scene yet"."""

    def __init__(self, out: np.ndarray, scenes: int, fill):
        super().__init__(out, scenes, fill)
        self._best: np.ndarray | None = None
        """Rank of the scene each pixel came from (several scenes only; made at the first feed)."""
        self._used: list[int] = []
        self._started = False

    @abstractmethod
    def _wins(self, rank: int, best: np.ndarray) -> np.ndarray:
        """Where a scene of ``rank`` beats the current choice ``best``."""

    def feed(self, values: np.ndarray, valid: np.ndarray, rank: int) -> None:
        if self.scenes == 1:
            # One scene (the common case): nothing to choose, one pass over the layer.
            np.copyto(self.out, values, casting="unsafe")
            self.out[~valid] = self.fill
            self._started = True
            if valid.any():
                self._used = [rank]
            return
        if not self._started:
            self.out.fill(self.fill)
            self._best = np.full(self.out.shape, self._none, dtype=np.int32)
            self._started = True
        take = valid & self._wins(rank, self._best)
        if take.any():
            np.copyto(self.out, values, where=take, casting="unsafe")
            self._best[take] = rank

    def contributors(self) -> list[int]:
        if self._best is None:
            return list(self._used)
        return [int(r) for r in np.unique(self._best) if r != self._none]

    def finish(self) -> None:
        if not self._started:
            self.out.fill(self.fill)
            self._started = True
        if self._best is not None:
            self._used = self.contributors()
            self._best = None


class FirstValid(_ByRank):
    """Each pixel from the first scene (lowest rank) with a valid value there."""

    _none = np.iinfo(np.int32).max

    def _wins(self, rank, best):
        return best > rank


class LastValid(_ByRank):
    """Each pixel from the last scene (highest rank) with a valid value there."""

    _none = -1

    def _wins(self, rank, best):
        return best < rank


MOSAIC_METHODS: dict[str, type[MosaicMethod]] = {"first": FirstValid, "last": LastValid}
"""Methods by name, for ``read_geometries(..., mosaic="first")``; the composites of
:mod:`~rasteret_pipelines.reading.composite` (highest, lowest, mean, median, stdev, count) are
added below."""

from rasteret_pipelines.reading.composite import COMPOSITE_METHODS  # noqa: E402 (needs MosaicMethod)

MOSAIC_METHODS.update(COMPOSITE_METHODS)


def mosaic_method(spec) -> type[MosaicMethod]:
    """The :class:`MosaicMethod` subclass named or given by ``spec``."""
    if isinstance(spec, str):
        try:
            return MOSAIC_METHODS[spec]
        except KeyError:
            raise InvalidReadArgumentError(
                f"mosaic must be one of {sorted(MOSAIC_METHODS)} or a MosaicMethod subclass, got {spec!r}"
            ) from None
    if isinstance(spec, type) and issubclass(spec, MosaicMethod):
        return spec
    raise InvalidReadArgumentError(
        f"mosaic must be one of {sorted(MOSAIC_METHODS)} or a MosaicMethod subclass, got {spec!r}"
    )
