"""SVG charts of an NDVI time series (no plotting library needed).

The Dagster UI shows a Markdown metadata value in place only when it is shorter than 1000
characters (longer ones hide behind ``[Show Markdown]``). So the asset's ``plot`` entry is a
compact chart that fits (:func:`ndvi_sparkline_markdown`: mean NDVI on a labelled fixed
[-0.2, 1] axis, the valid-pixel fraction as bars, the first and last dates, a caption with the
range), and the full chart (:func:`ndvi_timeseries_svg`: axes, every date, median, valid
fraction) is stored beside the table and linked as ``plot_file``.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 720, 340
LEFT, RIGHT, TOP, BOTTOM = 56, 44, 56, 40
PAD = 18
"""Pixels kept free inside the plot area on each side of the first and last date."""
SERIES_STYLE = {
    "mean_ndvi": ("#1b7837", "mean NDVI"),
    "median_ndvi": ("#5aae61", "median NDVI"),
}


def ndvi_timeseries_svg(
    dates: Sequence[dt.date],
    series: dict[str, Sequence[float | None]],
    valid_fraction: Sequence[float] | None = None,
    title: str = "NDVI",
) -> str:
    """An SVG chart: one line per series on [-0.2, 1] (or wider), valid fraction as bars.

    Args:
        dates: One date per observation (sorted).
        series: ``{name: values}``; None or NaN values leave a gap.
        valid_fraction: Fraction (0..1) of valid pixels per date, drawn as grey bars from 0
            on the same axis.
        title: Chart title.
    """
    values = [v for vs in series.values() for v in vs if v is not None and v == v]
    lo = min([-0.2] + values)
    hi = max([1.0] + values)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    if dates:
        t0 = dates[0].toordinal()
        span = max(dates[-1].toordinal() - t0, 1)
    else:
        t0, span = 0, 1

    def x(d: dt.date) -> float:
        if len(dates) == 1:
            return LEFT + plot_w / 2
        return LEFT + PAD + (d.toordinal() - t0) / span * (plot_w - 2 * PAD)

    def y(v: float) -> float:
        return TOP + (hi - v) / (hi - lo) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    tick = 0.2
    v = round(lo / tick) * tick
    while v <= hi + 1e-9:
        yy = y(v)
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e0e0e0"/>')
        out.append(f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{v:.1f}</text>')
        v += tick
    out.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#555"/>')
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" stroke="#555"/>')
    if valid_fraction is not None:
        bar = max(2.0, min(14.0, plot_w / max(len(dates), 1) * 0.4))
        for d, f in zip(dates, valid_fraction):
            if f is None:
                continue
            top, base = y(f), y(0.0)  # on the NDVI axis: a fraction of 0.9 reaches 0.9
            out.append(
                f'<rect x="{x(d) - bar / 2:.1f}" y="{top:.1f}" width="{bar:.1f}" '
                f'height="{max(base - top, 0):.1f}" fill="#bdbdbd" fill-opacity="0.6"/>'
            )
    last_label = -1e9
    for d in dates:
        if x(d) - last_label < 72:  # a date label is about 62 px wide
            continue
        last_label = x(d)
        out.append(f'<line x1="{x(d):.1f}" x2="{x(d):.1f}" y1="{TOP + plot_h}" y2="{TOP + plot_h + 4}" stroke="#555"/>')
        out.append(f'<text x="{x(d):.1f}" y="{TOP + plot_h + 17}" text-anchor="middle">{d.isoformat()}</text>')
    for name, vs in series.items():
        color, _ = SERIES_STYLE.get(name, ("#2166ac", name))
        segment: list[str] = []
        segments = []
        for d, v in zip(dates, vs):
            if v is None or v != v:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{x(d):.1f},{y(v):.1f}")
            out.append(f'<circle cx="{x(d):.1f}" cy="{y(v):.1f}" r="3" fill="{color}"/>')
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) > 1:
                out.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" stroke-width="2"/>')
    legend = [(SERIES_STYLE.get(n, ("#2166ac", n))) for n in series]
    if valid_fraction is not None:
        legend.append(("#bdbdbd", "valid pixel fraction (same axis)"))
    lx = LEFT
    for color, label in legend:
        out.append(f'<rect x="{lx}" y="30" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{lx + 16}" y="40">{escape(label)}</text>')
        lx += 28 + 6.2 * len(label)
    out.append("</svg>")
    return "\n".join(out)


def svg_markdown(svg: str, alt: str = "NDVI time series") -> str:
    """Markdown embedding ``svg`` as a data URI (what the Dagster UI renders)."""
    encoded = base64.b64encode(svg.encode()).decode()
    return f"![{alt}](data:image/svg+xml;base64,{encoded})"


INLINE_MARKDOWN_LIMIT = 1000
"""Markdown metadata shorter than this is rendered in place by the Dagster UI."""


def ndvi_sparkline_markdown(
    dates: Sequence[dt.date],
    values: Sequence[float | None],
    alt: str = "NDVI",
    valid_fraction: Sequence[float | None] | None = None,
) -> str:
    """Markdown of a compact chart readable at a glance, always shorter than
    :data:`INLINE_MARKDOWN_LIMIT`.

    Mean NDVI is a green line (with dots) on a fixed [-0.2, 1] axis labelled 1 and 0, with a
    grey zero line; the valid-pixel fraction of each date is a grey bar from 0 on the same
    axis; the first and last dates label the time axis. When the series has more points than
    fit, consecutive dates are averaged (the caption says so).
    """
    fractions = list(valid_fraction) if valid_fraction is not None else [None] * len(dates)
    points = [(d, v, f) for d, v, f in zip(dates, values, fractions) if v is not None and v == v]
    merge = 1
    while True:
        binned = _bin(points, merge)
        text = (
            f"{svg_markdown(_sparkline_svg(binned, points), alt)}\n\n"
            f"{_sparkline_caption(points, merge, valid_fraction is not None)}"
        )
        if len(text) < INLINE_MARKDOWN_LIMIT or len(binned) <= 2:
            return text
        merge *= 2


def _bin(points, merge: int):
    if merge == 1:
        return points
    out = []
    for i in range(0, len(points), merge):
        chunk = points[i : i + merge]
        fractions = [f for _, _, f in chunk if f is not None]
        out.append(
            (
                chunk[len(chunk) // 2][0],
                sum(v for _, v, _ in chunk) / len(chunk),
                sum(fractions) / len(fractions) if fractions else None,
            )
        )
    return out


SPARK_W, SPARK_LEFT, SPARK_TOP, SPARK_H = 300, 28, 6, 72
"""Compact chart geometry: the NDVI axis runs from 1 (``SPARK_TOP``) down to -0.2 over
``SPARK_H`` pixels (60 px per NDVI unit); dates run from ``SPARK_LEFT`` to ``SPARK_W - 6``."""


def spark_y(v: float) -> int:
    """Pixel row of NDVI (or fraction) ``v`` on the compact chart (clipped to [-0.2, 1])."""
    return round(SPARK_TOP + (1.0 - min(max(v, -0.2), 1.0)) / 1.2 * SPARK_H)


def _sparkline_svg(points, unbinned=None) -> str:
    """The compact chart of ``points`` ((date, NDVI, fraction), maybe binned); the time axis is
    labelled with the first and last dates of ``unbinned`` (default ``points``)."""
    x0, x1, base = SPARK_LEFT + 6, SPARK_W - 6, spark_y(0.0)
    bottom = SPARK_TOP + SPARK_H
    if points:
        t0 = points[0][0].toordinal()
        span = max(points[-1][0].toordinal() - t0, 1)
        xs = [
            round(x0 + (d.toordinal() - t0) / span * (x1 - x0)) if len(points) > 1 else (x0 + x1) // 2
            for d, _, _ in points
        ]
        line = "M" + "L".join(f"{x} {spark_y(v)}" for x, (_, v, _) in zip(xs, points))
        dots = "".join(f"M{x} {spark_y(v)}h0" for x, (_, v, _) in zip(xs, points)) if len(points) <= 24 else ""
        bars = "".join(f"M{x} {base}V{spark_y(f)}" for x, (_, _, f) in zip(xs, points) if f is not None and f > 0)
        ends = unbinned or points
        first, last = ends[0][0].isoformat(), ends[-1][0].isoformat()
        dates = f'<text x="{x0}" y="{bottom + 11}">{first}</text>' + (
            f'<text x="{x1}" y="{bottom + 11}" text-anchor="end">{last}</text>' if last != first else ""
        )
    else:
        line = dots = bars = dates = ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {SPARK_W} {bottom + 14}" width="{SPARK_W}" font-size="9">'
        f'<path d="M{SPARK_LEFT} {SPARK_TOP}V{bottom}M{SPARK_LEFT} {base}H{x1}" stroke="#aaa"/>'
        + (f'<path d="{bars}" stroke="#ccc" stroke-width="6"/>' if bars else "")
        + (
            f'<path d="{line}{dots}" fill="none" stroke="green" stroke-width="2" stroke-linecap="round"/>'
            if line
            else ""
        )
        + f'<g text-anchor="end"><text x="{SPARK_LEFT - 3}" y="{SPARK_TOP + 3}">1</text>'
        f'<text x="{SPARK_LEFT - 3}" y="{base + 3}">0</text></g>'
        f'<text x="{x0}" y="{SPARK_TOP + 8}" fill="green">NDVI</text>' + dates + "</svg>"
    )


def _sparkline_caption(points, merge: int, with_fraction: bool) -> str:
    if not points:
        return "no valid NDVI"
    lo, hi = min(v for _, v, _ in points), max(v for _, v, _ in points)
    binned = f", {merge} dates averaged per point" if merge > 1 else ""
    bars = "; grey bars: valid pixels (0 to 1)" if with_fraction else ""
    return f"Mean NDVI {lo:.2f} to {hi:.2f}, {len(points)} dates{binned}{bars}"
