"""Self-contained HTML page for a diff run: the ranked region table and effect plots.

Inline SVG only (no JavaScript, no network). One forest plot per behavior statistic: each
tested region's effect (B − A) with its 95% interval, flagged regions in red. Also the
screening scores, the cost, exploratory contrastive samples and LoRA ΔW norms when present.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from selfimprove.diff.detect import DiffResult
from selfimprove.store import atomic_write_text

_UNITS = {
    "accuracy": "rate",
    "refusal": "rate",
    "format": "rate",
    "length": "tokens",
    "logprob": "nats/token",
}


def forest_plot(
    title: str, rows: list[tuple[str, float, float, float, bool]], width: int = 680
) -> str:
    """SVG forest plot: rows = (label, effect, lo, hi, flagged)."""
    row_h, pad_l = 20, 260
    height = 34 + row_h * max(1, len(rows))
    w = width - pad_l - 60
    vals = [v for r in rows for v in r[1:4] if math.isfinite(v)] + [0.0]
    lo_all, hi_all = min(vals), max(vals)
    span = (hi_all - lo_all) or 1.0
    lo_all -= 0.05 * span
    hi_all += 0.05 * span
    span = hi_all - lo_all

    def x(v: float) -> float:
        return pad_l + w * (v - lo_all) / span

    e = html.escape
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{e(title)}">']
    parts.append(f'<text x="4" y="14" font-size="12" font-weight="bold">{e(title)}</text>')
    parts.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="20" y2="{height}" stroke="#999"/>')
    for i, (label, d, lo, hi, flagged) in enumerate(rows):
        y = 28 + i * row_h
        color = "#d62728" if flagged else "#1f77b4"
        parts.append(f'<text x="4" y="{y + 4}" font-size="11">{e(label)}</text>')
        parts.append(
            f'<line x1="{x(lo):.1f}" x2="{x(hi):.1f}" y1="{y}" y2="{y}" stroke="{color}"/>'
        )
        parts.append(f'<circle cx="{x(d):.1f}" cy="{y}" r="4" fill="{color}"/>')
        parts.append(f'<text x="{width - 56}" y="{y + 4}" font-size="10">{d:+.3g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def diff_section(result: DiffResult) -> str:
    """The diff as an HTML fragment (table + plots), for this page or a loop report."""
    e = html.escape
    out = []
    flagged = result.flagged
    if flagged:
        out.append(f"<p><b>{len(flagged)} region(s) changed</b> at FDR q = {result.config.q}.</p>")
    else:
        out.append(f"<p><b>No behavior change detected</b> at FDR q = {result.config.q}.</p>")
    c = result.cost
    out.append(
        f"<p>Samples per model: {c.samples_per_model}; screening prefills per model: "
        f"{c.screen_prefills_per_model}; greedy screen tokens: {c.screen_greedy_tokens}; "
        f"wall time {c.seconds:.0f} s.</p>"
    )
    out.append(
        "<table><tr><th>region</th><th>screen KL</th><th>rank</th><th>n</th><th>top statistic</th>"
        "<th>effect [95% CI]</th><th>p</th><th>q</th><th>label (held-out check)</th></tr>"
    )
    for r in sorted(result.regions, key=lambda r: (r.q_value, r.screen_rank)):
        t = r.test(r.top_stat) if r.top_stat else None
        eff = f"{t.effect:+.3g} [{t.ci[0]:+.3g}, {t.ci[1]:+.3g}]" if t else "–"
        lab = ""
        if r.label:
            chk = (
                f" (acc {r.label.heldout_accuracy:.0%}, p={r.label.heldout_p:.2g})"
                if r.label.heldout_accuracy is not None and r.label.heldout_p is not None
                else ""
            )
            lab = e(r.label.text) + chk
        style = ' style="background:#fde0e0"' if r.flagged else ""
        out.append(
            f"<tr{style}><td>{e(r.region)}</td><td>{r.screen.score:.4f}</td><td>{r.screen_rank}</td>"
            f"<td>{r.allocated}</td><td>{e(r.top_stat or '–')}</td><td>{eff}</td>"
            f"<td>{r.p_value:.3g}</td><td>{r.q_value:.3g}</td><td>{lab}</td></tr>"
        )
    out.append("</table>")
    for stat, unit in _UNITS.items():
        rows = []
        for r in result.regions:
            t = r.test(stat)
            if t is not None and t.n > 0:
                rows.append((r.region, t.effect, t.ci[0], t.ci[1], r.flagged))
        if rows:
            out.append(forest_plot(f"{stat}: effect B − A ({unit}), 95% CI", rows))
    for r in flagged:
        if r.examples:
            out.append(f"<h3>{e(r.region)}: contrasting outputs</h3>")
            for ex in r.examples:
                out.append(
                    f"<div class='ex'><div><b>prompt</b> {e(ex.prompt)}</div>"
                    f"<div><b>A</b> <pre>{e(ex.a_output)}</pre></div>"
                    f"<div><b>B</b> <pre>{e(ex.b_output)}</pre></div></div>"
                )
    return "\n".join(out)


def render_diff_report(
    result: DiffResult,
    out_path: str | Path,
    *,
    exploration: list[Any] | None = None,
    weights: list[Any] | None = None,
) -> Path:
    """Write the diff's HTML page to ``out_path`` and return it."""
    e = html.escape
    body = [
        f"<h1>selfimprove diff</h1><p>A = {e(result.base)}<br>B = {e(result.candidate)}</p>",
        diff_section(result),
    ]
    # the screen itself, all regions
    rows = [
        (r.region, r.screen.score, r.screen.score, r.screen.score, r.flagged)
        for r in result.regions
    ]
    body.append(forest_plot("screen: symmetric KL over the first k tokens (nats)", rows))
    if weights:
        body.append(
            "<h2>Weights: largest LoRA ΔW (Frobenius)</h2><table><tr><th>module</th><th>‖ΔW‖</th><th>‖ΔW‖/‖W‖</th><th>top σ</th><th>eff. rank</th></tr>"
        )
        for d in weights[:15]:
            body.append(
                f"<tr><td>{e(d.module)}</td><td>{d.norm:.4g}</td><td>{d.relative_norm:.3g}</td>"
                f"<td>{', '.join(f'{s:.3g}' for s in d.singular_values)}</td><td>{d.effective_rank:.2f}</td></tr>"
            )
        body.append("</table>")
    if exploration:
        body.append(
            "<h2>Exploratory (contrastive decoding; not tested, outside the FDR family)</h2>"
        )
        for s in exploration:
            body.append(f"<div class='ex'><b>prompt</b> {e(s.prompt)}<pre>{e(s.text)}</pre></div>")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>selfimprove diff</title>"
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px}"
        "pre{white-space:pre-wrap;margin:2px 0;background:#f6f6f6}.ex{margin:8px 0}</style>"
        "</head><body>" + "\n".join(body) + "</body></html>"
    )
    path = Path(out_path)
    atomic_write_text(path, page)
    return path
