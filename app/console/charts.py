"""Bar charts as plain SVG markup, drawn on the server: no script, no library, readable without JavaScript."""

from __future__ import annotations

from html import escape

from markupsafe import Markup

WIDTH, HEIGHT, AXIS = 600, 160, 18  # viewBox units; the SVG scales to its container


def _label(value: float) -> str:
    return f"{value:.4g}" if value < 1000 else f"{value:,.0f}"


def bars(points: list[tuple[str, float]], title: str = "") -> Markup:
    """One bar per (label, value), scaled to the largest; each bar has a tooltip and the chart a text summary."""
    if not points:
        return Markup('<p class="empty">No data in this period.</p>')
    top = max(v for _, v in points) or 1.0
    step = WIDTH / len(points)
    width = max(step * 0.8, 1.0)
    shapes = []
    for i, (label, value) in enumerate(points):
        h = (HEIGHT - AXIS) * value / top
        x = i * step + (step - width) / 2
        shapes.append(
            f'<rect x="{x:.1f}" y="{HEIGHT - AXIS - h:.1f}" width="{width:.1f}" height="{h:.1f}" class="bar">'
            f"<title>{escape(label)}: {_label(value)}</title></rect>"
        )
    ticks = {0, len(points) - 1, len(points) // 2}
    for i in sorted(ticks):
        x = i * step + step / 2
        shapes.append(f'<text x="{x:.1f}" y="{HEIGHT - 4}" text-anchor="middle">{escape(points[i][0])}</text>')
    summary = f"{title or 'chart'}: {len(points)} bars, largest {_label(top)}"
    return Markup(
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(summary)}" class="chart">'
        f'<text x="2" y="12" class="max">max {_label(top)}</text>{"".join(shapes)}</svg>'
    )
