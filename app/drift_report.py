"""``ragops drift report --html FILE``: one self-contained page, an inline SVG chart per signal, no JavaScript.

Each chart plots the window's p-value on a log scale (lower = further from the reference) with the
drift threshold as a dashed line; windows without enough data are grey ticks, alarms red dots.
Numbers only: no question or answer text reaches the page.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict

from core.config import DriftSettings
from core.drift.signals import SIGNALS, group_size
from core.drift.store import WindowRow

_W, _H, _PAD = 640, 160, 36
_P_FLOOR = 1e-6


def _y(p: float) -> float:
    """Vertical position of a p-value: 1 at the top, 1e-6 at the bottom (log scale)."""
    share = -math.log10(max(p, _P_FLOOR)) / -math.log10(_P_FLOOR)
    return _PAD / 2 + share * (_H - _PAD)


def signal_chart(rows: list[WindowRow], threshold: float | None) -> str:
    """An inline SVG of one signal's windows over time."""
    if not rows:
        return ""
    t0, t1 = rows[0].window_start.timestamp(), rows[-1].window_start.timestamp()
    span = max(t1 - t0, 1.0)

    def x(row: WindowRow) -> float:
        return _PAD + (row.window_start.timestamp() - t0) / span * (_W - 2 * _PAD)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img">']
    parts.append(f'<rect x="0" y="0" width="{_W}" height="{_H}" fill="#fafafa" stroke="#ddd"/>')
    for p in (1.0, 1e-2, 1e-4, 1e-6):
        parts.append(f'<text x="2" y="{_y(p) + 4:.1f}" font-size="10" fill="#666">{p:g}</text>')
    if threshold is not None:
        y = _y(threshold)
        parts.append(
            f'<line x1="{_PAD}" x2="{_W - _PAD}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c00" stroke-dasharray="4 3"/>'
        )
    judged = [r for r in rows if r.p_value is not None]
    if judged:
        points = " ".join(f"{x(r):.1f},{_y(r.p_value or 1.0):.1f}" for r in judged)
        parts.append(f'<polyline points="{points}" fill="none" stroke="#1f5fa8" stroke-width="1.5"/>')
    for r in rows:
        if r.p_value is None:
            parts.append(f'<line x1="{x(r):.1f}" x2="{x(r):.1f}" y1="{_H - 14}" y2="{_H - 4}" stroke="#aaa"/>')
        else:
            color = "#c00" if r.alarm else ("#e08a00" if r.state == "drift" else "#1f5fa8")
            parts.append(f'<circle cx="{x(r):.1f}" cy="{_y(r.p_value):.1f}" r="3" fill="{color}">'
                         f"<title>{html.escape(_tooltip(r))}</title></circle>")  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def _tooltip(r: WindowRow) -> str:
    psi = f", PSI {r.psi:.3f}" if r.psi is not None else ""
    return f"{r.window_start:%Y-%m-%d %H:%M} n={r.n} p={r.p_value:.2g}{psi} {r.state}{' ALARM' if r.alarm else ''}"


def threshold_of(signal: str, settings: DriftSettings | None) -> float | None:
    """The p-value below which a window of ``signal`` counts as drift."""
    if settings is None or signal not in SIGNALS:
        return None
    return settings.alpha / group_size(SIGNALS[signal].group)


def render_html(rows: list[WindowRow], settings: dict[str, DriftSettings]) -> str:
    """The whole report: per (collection, config), the newest verdicts and a chart per signal."""
    groups: dict[tuple[str, str], dict[str, list[WindowRow]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[(r.collection, r.config)][r.signal].append(r)
    body = ["<h1>ragops drift report</h1>"]
    if not groups:
        body.append("<p>No judged windows yet.</p>")
    for (collection, config), signals in sorted(groups.items()):
        body.append(f"<h2>{html.escape(collection)} / {html.escape(config)}</h2>")
        for name, series in sorted(signals.items()):
            last = series[-1]
            description = SIGNALS[name].description if name in SIGNALS else name
            state = "ALARM" if last.alarm else last.state.replace("_", " ")
            body.append(
                f"<h3>{html.escape(name)} <small>({html.escape(description)}): {html.escape(state)}, "
                f"{len(series)} windows</small></h3>"
            )
            body.append(signal_chart(series, threshold_of(name, settings.get(config))))
    style = "body{font-family:sans-serif;margin:2em;color:#222}h3 small{font-weight:normal;color:#555}"
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>ragops drift</title><style>{style}</style>'
        f"</head><body>{''.join(body)}</body></html>\n"
    )
