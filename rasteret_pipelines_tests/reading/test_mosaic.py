"""Mosaic methods: same result whatever order the scenes arrive in, and the right scene wins."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rasteret_pipelines.errors import InvalidReadArgumentError
from rasteret_pipelines.reading.mosaic import FirstValid, LastValid, MosaicMethod, mosaic_method


def scenes(n=3, shape=(6, 7), seed=3):
    rng = np.random.default_rng(seed)
    return [(rng.integers(1, 1000, shape).astype(np.float32), rng.random(shape) < 0.5, rank) for rank in range(n)]


def sequential(stack, *, first: bool):
    """The reference: walk the scenes in rank order (first) or reverse (last), keep the first valid."""
    values0 = stack[0][0]
    out = np.full(values0.shape, np.nan, np.float32)
    filled = np.zeros(values0.shape, bool)
    used = set()
    for values, valid, rank in stack if first else stack[::-1]:
        take = valid & ~filled
        out[take] = values[take]
        filled |= take
        if take.any():
            used.add(rank)
    return out, sorted(used)


@pytest.mark.parametrize("method, first", [(FirstValid, True), (LastValid, False)])
def test_every_arrival_order_gives_the_sequential_result(method, first):
    stack = scenes()
    expected, used = sequential(stack, first=first)
    for order in itertools.permutations(stack):
        out = np.full(expected.shape, 7.0, np.float32)  # not initialised: the method fills
        m = method(out, len(stack), np.nan)
        for values, valid, rank in order:
            m.feed(values, valid, rank)
        m.finish()
        np.testing.assert_array_equal(out, expected)
        assert m.contributors() == used


def test_one_scene_writes_where_valid_and_reports_itself_only_when_it_gave_pixels():
    values = np.arange(12, dtype=np.uint16).reshape(3, 4)
    out = np.full((3, 4), 99, np.uint16)
    valid = values % 2 == 0
    m = FirstValid(out, 1, 0)
    m.feed(values, valid, 0)
    m.finish()
    np.testing.assert_array_equal(out, np.where(valid, values, 0))
    assert m.contributors() == [0]
    empty = FirstValid(np.full((3, 4), 99, np.uint16), 1, 0)
    empty.feed(values, np.zeros((3, 4), bool), 0)
    assert empty.contributors() == [] and (empty.out == 0).all()


@pytest.mark.parametrize("scenes", [1, 3])
def test_a_layer_no_scene_reached_is_fill_after_finish(scenes):
    out = np.full((2, 3), 5.0, np.float32)
    m = FirstValid(out, scenes, np.nan)
    m.finish()
    assert np.isnan(out).all() and m.contributors() == []


def test_a_scene_fully_covered_by_an_earlier_one_is_not_a_contributor():
    shape = (4, 4)
    out = np.full(shape, np.nan, np.float32)
    m = FirstValid(out, 2, np.nan)
    m.feed(np.full(shape, 2.0, np.float32), np.ones(shape, bool), 1)  # the later scene lands first
    m.feed(np.full(shape, 1.0, np.float32), np.ones(shape, bool), 0)
    m.finish()
    assert (out == 1.0).all() and m.contributors() == [0]


def test_methods_by_name_or_class():
    assert mosaic_method("first") is FirstValid and mosaic_method("last") is LastValid

    class Custom(FirstValid):
        pass

    assert mosaic_method(Custom) is Custom
    from rasteret_pipelines.reading.composite import Median

    assert mosaic_method("median") is Median  # the composites are named too
    for bad in ("mode", MosaicMethod.__init__, 3):
        with pytest.raises(InvalidReadArgumentError, match="mosaic must be one of"):
            mosaic_method(bad)
