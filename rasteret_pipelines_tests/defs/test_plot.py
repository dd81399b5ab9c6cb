"""The time-series chart the UI shows in place: labelled axes, dates, valid fraction, any length."""

import base64
import datetime as dt
import re

import pytest

from rasteret_pipelines.defs.plot import INLINE_MARKDOWN_LIMIT, ndvi_sparkline_markdown, spark_y


def _svg(markdown: str) -> str:
    return base64.b64decode(re.search(r"base64,([^)]+)\)", markdown).group(1)).decode()


def test_the_chart_has_axis_labels_dates_and_the_valid_fraction():
    dates = [dt.date(2024, 1, 5), dt.date(2024, 1, 10), dt.date(2024, 2, 5), dt.date(2024, 2, 10)]
    ndvi = [0.21, None, 0.55, 0.48]
    valid = [0.9, 0.0, 0.4, 1.0]
    text = ndvi_sparkline_markdown(dates, ndvi, "NDVI of AOI 1", valid)
    svg = _svg(text)
    assert re.search(r">1</text>", svg) and re.search(r">0</text>", svg) and ">NDVI</text>" in svg
    assert ">2024-01-05</text>" in svg and ">2024-02-10</text>" in svg
    assert [int(y) for y in re.findall(r"M\d+ (\d+)h0", svg)] == [spark_y(v) for v in (0.21, 0.55, 0.48)]
    bars = re.search(r'd="([^"]+)" stroke="#ccc"', svg).group(1)
    assert [int(y) for y in re.findall(r"M\d+ \d+V(\d+)", bars)] == [spark_y(f) for f in (0.9, 0.4, 1.0)]
    caption = text.split("\n\n", 1)[1]
    assert caption == "Mean NDVI 0.21 to 0.55, 3 dates; grey bars: valid pixels (0 to 1)"
    assert len(text) < INLINE_MARKDOWN_LIMIT


@pytest.mark.parametrize("n", [1, 2, 6, 30, 365, 5000])
def test_any_length_fits_in_place(n):
    dates = [dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(n)]
    text = ndvi_sparkline_markdown(dates, [0.5] * n, "NDVI", [0.8] * n)
    assert len(text) < INLINE_MARKDOWN_LIMIT
    svg = _svg(text)
    assert f">{dates[0].isoformat()}</text>" in svg
    if n > 1:
        assert f">{dates[-1].isoformat()}</text>" in svg
    if n > 30:
        assert "dates averaged per point" in text


def test_without_valid_pixels_says_so():
    text = ndvi_sparkline_markdown([dt.date(2024, 1, 5)], [None], "NDVI", [0.0])
    assert text.endswith("no valid NDVI") and len(text) < INLINE_MARKDOWN_LIMIT
