"""SVG charts of an NDVI time series (no plotting library needed).

The Dagster UI shows a Markdown metadata value in place only when it is shorter than 1000
characters (longer ones hide behind ``[Show Markdown]``). So the asset's ``plot`` entry is a
compact chart (:func:`ndvi_sparkline_markdown`, mean NDVI on a fixed [-0.2, 1] axis) that fits,
and the full chart (:func:`ndvi_timeseries_svg`: axes, dates, median, valid fraction) is
stored beside the table and linked as ``plot_file``.
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


def ndvi_sparkline_markdown(dates: Sequence[dt.date], values: Sequence[float | None], alt: str = "NDVI") -> str:
    """Markdown of a compact mean-NDVI chart, always shorter than :data:`INLINE_MARKDOWN_LIMIT`.

    The line runs over the dates on a fixed [-0.2, 1] axis with a grey zero line; when the
    series has more points than fit, consecutive dates are averaged (the caption says so).
    """
    points = [(d, v) for d, v in zip(dates, values) if v is not None and v == v]
    caption = _sparkline_caption(points, 1)
    merge = 1
    while True:
        binned = _bin(points, merge)
        text = f"{svg_markdown(_sparkline_svg(binned), alt)}\n\n{_sparkline_caption(points, merge) or caption}"
        if len(text) < INLINE_MARKDOWN_LIMIT or len(binned) <= 2:
            return text
        merge *= 2


def _bin(points, merge: int):
    if merge == 1:
        return points
    out = []
    for i in range(0, len(points), merge):
        chunk = points[i:i + merge]
        out.append((chunk[len(chunk) // 2][0], sum(v for _, v in chunk) / len(chunk)))
    return out


def _sparkline_svg(points) -> str:
    w, h, lo, hi = 240, 60, -0.2, 1.0

    def y(v: float) -> int:
        return round((hi - min(max(v, lo), hi)) / (hi - lo) * h)

    if points:
        t0 = points[0][0].toordinal()
        span = max(points[-1][0].toordinal() - t0, 1)
        xs = [round((d.toordinal() - t0) / span * w) if len(points) > 1 else w // 2 for d, _ in points]
        path = "M" + "L".join(f"{x} {y(v)}" for x, (_, v) in zip(xs, points))
        dots = "".join(f'<circle cx="{x}" cy="{y(v)}" r="2"/>' for x, (_, v) in zip(xs, points)) if len(points) <= 12 else ""
    else:
        path, dots = "", ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="-3 -3 {w + 6} {h + 6}" width="{w + 6}" '
            f'height="{h + 6}"><path d="M0 {y(0)}H{w}" stroke="#bbb"/><g fill="#1b7837">'
            f'<path d="{path}" fill="none" stroke="#1b7837" stroke-width="2"/>{dots}</g></svg>')


def _sparkline_caption(points, merge: int) -> str:
    if not points:
        return "no valid NDVI"
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    binned = f", {merge} dates averaged per point" if merge > 1 else ""
    return (f"mean NDVI {points[0][0].isoformat()} to {points[-1][0].isoformat()}: {lo:.2f} to {hi:.2f} "
            f"({len(points)} dates{binned}; axis -0.2 to 1, grey line at 0)")
