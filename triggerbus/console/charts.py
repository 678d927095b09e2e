"""Inline SVG line charts rendered on the server (no JavaScript); every label is escaped."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 26


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    css: str  # a class of console.css: s1 ... s3
    values: list[float | None]


def _tick(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2g}" if value < 1 else f"{value:.1f}"


def _time_label(ts: float, span: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%m-%d %H:%M" if span > 86400 else "%H:%M")


def _segments(xs: list[float], values: list[float | None]) -> list[list[tuple[float, float]]]:
    segments: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, values, strict=True):
        if y is None:
            if segments[-1]:
                segments.append([])
        else:
            segments[-1].append((x, y))
    return [s for s in segments if s]


def has_data(series: list[Series]) -> bool:
    return any(v is not None for s in series for v in s.values)


def line_chart(title: str, xs: list[float], series: list[Series], unit: str = "") -> Markup:
    """An SVG chart of ``series`` over the times ``xs`` (epoch seconds), with a legend."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    values = [v for s in series for v in s.values if v is not None]
    top = max(values, default=0.0) or 1.0
    x0, x1 = (xs[0], xs[-1]) if xs else (0.0, 1.0)
    span = (x1 - x0) or 1.0

    def px(x: float) -> float:
        return LEFT + (x - x0) / span * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - y / top * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    for i in range(5):
        y = top * i / 4
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(y):.1f}" y2="{py(y):.1f}"/>'
            f'<text class="tick" x="{LEFT - 4}" y="{py(y) + 4:.1f}" text-anchor="end">{escape(_tick(y) + unit)}</text>'
        )
    if xs:
        for x in (x0, x0 + span / 2, x1):
            parts.append(
                f'<text class="tick" x="{px(x):.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
                f"{escape(_time_label(x, span))}</text>"
            )
    for s in series:
        for segment in _segments(xs, s.values):
            points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in segment)
            if len(segment) == 1:
                x, y = segment[0]
                parts.append(f'<circle class="{escape(s.css)}" cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5"/>')
            else:
                parts.append(f'<polyline class="line {escape(s.css)}" points="{points}"/>')
    parts.append("</svg>")
    legend = "".join(f'<span class="key {escape(s.css)}">{escape(s.label)}</span>' for s in series)
    return Markup(f'<figure class="chart"><figcaption>{escape(title)} {legend}</figcaption>{"".join(parts)}</figure>')
