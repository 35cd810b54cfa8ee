"""The interp HTML page: tables and inline-SVG plots, self-contained (no JS, no network).

``render_interp_report(run_dir, analysis, payload)`` writes ``interp_report.html`` into the
run folder. Plots: layer × head heatmaps (:func:`heatmap_svg`) and per-layer curves
(:func:`layer_curve_svg`). The page renders the JSON the analysis wrote, so it can be
re-rendered from a run folder.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selfimprove.store import atomic_write_text


def _color(v: float, lo: float, hi: float) -> str:
    """White → dark blue (or white → red for negatives when lo < 0)."""
    if not math.isfinite(v):
        return "#ccc"
    span = max(abs(lo), abs(hi)) if lo < 0 else (hi - lo)
    t = 0.0 if span <= 0 else (abs(v) if lo < 0 else v - lo) / span
    t = min(1.0, max(0.0, t))
    if lo < 0 and v < 0:
        return f"rgb(255,{int(255 * (1 - t))},{int(255 * (1 - t))})"
    return f"rgb({int(255 * (1 - t))},{int(255 * (1 - 0.6 * t))},255)"


def heatmap_svg(title: str, grid: Sequence[Sequence[float]], *, cell: int = 14) -> str:
    """Rows = layers, columns = heads; hover titles give the value."""
    n_rows = len(grid)
    n_cols = max((len(r) for r in grid), default=0)
    vals = [v for r in grid for v in r if math.isfinite(v)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    pad_l, pad_t = 34, 30
    w, h = pad_l + n_cols * cell + 70, pad_t + n_rows * cell + 10
    parts = [f'<svg width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}">']
    parts.append(
        f'<text x="2" y="13" font-size="12" font-weight="bold">{html.escape(title)}</text>'
    )
    for c in range(n_cols):
        parts.append(f'<text x="{pad_l + c * cell + 3}" y="{pad_t - 4}" font-size="8">{c}</text>')
    for r, row in enumerate(grid):
        y = pad_t + r * cell
        if r % max(1, n_rows // 15) == 0:
            parts.append(f'<text x="2" y="{y + cell - 3}" font-size="8">L{r}</text>')
        for c, v in enumerate(row):
            parts.append(
                f'<rect x="{pad_l + c * cell}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                f'fill="{_color(v, lo, hi)}"><title>L{r}.H{c}: {v:.4g}</title></rect>'
            )
    parts.append(
        f'<text x="{pad_l + n_cols * cell + 6}" y="{pad_t + 10}" font-size="9">max {hi:.3g}</text>'
        f'<text x="{pad_l + n_cols * cell + 6}" y="{pad_t + 24}" font-size="9">min {lo:.3g}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def layer_curve_svg(
    title: str,
    series: Mapping[str, Sequence[float | None]],
    *,
    width: int = 520,
    height: int = 200,
    hline: float | None = None,
) -> str:
    """Per-layer curves (x = layer index) with an optional reference line (chance)."""
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    pad_l, pad_b, pad_t = 40, 22, 22
    n = max((len(v) for v in series.values()), default=1)
    vals = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    if hline is not None:
        vals.append(hline)
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if hi - lo < 1e-12:
        hi = lo + 1.0
    w, h = width - pad_l - 90, height - pad_b - pad_t

    def xy(i: int, v: float) -> tuple[float, float]:
        return pad_l + w * i / max(1, n - 1), pad_t + h * (1 - (v - lo) / (hi - lo))

    parts = [
        f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">'
    ]
    parts.append(
        f'<text x="2" y="13" font-size="12" font-weight="bold">{html.escape(title)}</text>'
    )
    for g in (lo, (lo + hi) / 2, hi):
        _, y = xy(0, g)
        parts.append(
            f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
        )
        parts.append(f'<text x="2" y="{y + 4:.1f}" font-size="9">{g:.3g}</text>')
    for i in range(0, n, max(1, n // 10)):
        x, _ = xy(i, lo)
        parts.append(f'<text x="{x - 4:.1f}" y="{height - 6}" font-size="9">{i}</text>')
    if hline is not None:
        _, y = xy(0, hline)
        parts.append(
            f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#999" stroke-dasharray="4,3"/>'
        )
    for k, (name, s) in enumerate(series.items()):
        col = colors[k % len(colors)]
        pts = [xy(i, v) for i, v in enumerate(s) if v is not None and math.isfinite(v)]
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f'<polyline fill="none" stroke="{col}" stroke-width="2" points="{path}"/>')
        parts.append(
            f'<text x="{pad_l + w + 6}" y="{pad_t + 12 * (k + 1)}" font-size="10" fill="{col}">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def table_html(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, limit: int = 200
) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "–" if not math.isfinite(v) else f"{v:.4g}"
        if isinstance(v, list):
            return html.escape(", ".join(str(x) for x in v[:8]) + (" …" if len(v) > 8 else ""))
        return html.escape("–" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>"
        for r in rows[:limit]
    )
    more = f"<p>… {len(rows) - limit} more rows in the JSON.</p>" if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px}"
    "table{border-collapse:collapse;font-size:12px;margin:8px 0}"
    "td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}"
    "th{background:#f4f4f4}.note{color:#555;font-size:13px}svg{margin:6px 12px 6px 0}"
)


def render_interp_report(
    run_dir: str | Path,
    analysis: str,
    sections: Sequence[tuple[str, str]],
    *,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``interp_report.html``: a header, then ``(heading, html)`` sections."""
    meta = meta or {}
    head = "".join(
        f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in meta.items()
    )
    body = "".join(f"<h2>{html.escape(t)}</h2>{h}" for t, h in sections)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>interp {html.escape(analysis)}"
        f"</title><style>{_CSS}</style></head><body><h1>selfimprove interp — {html.escape(analysis)}</h1>"
        f"<ul class='note'>{head}</ul>{body}</body></html>"
    )
    path = Path(run_dir) / "interp_report.html"
    atomic_write_text(path, page)
    return path
