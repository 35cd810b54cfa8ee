"""Self-contained HTML report of a ``selfimprove run`` (inline SVG plots, no network, no JS).

Reads the run folder's artifacts (``summary_rounds.json``, ``eval_*.jsonl``) and writes
``report.html`` next to them: the headline, the per-round table with the gate's reasons,
per-category accuracy across rounds for both arms (target categories), sentinel accuracy
deltas with their confidence intervals, and the data funnel.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from selfimprove.evaluate import EvalRecord, aggregate
from selfimprove.store import atomic_write_text

_COLORS = {"targeted": "#1f77b4", "random": "#ff7f0e", "base": "#555555"}


def _records(path: Path) -> list[EvalRecord]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(EvalRecord.model_validate_json(line))
            except ValueError:
                continue  # a truncated last line of a killed writer
    return out


def _acc(records: list[EvalRecord], metric: str) -> dict[tuple[str, str], float]:
    out = {}
    for m in aggregate(records):
        v = m.strict_accuracy if metric == "strict" else m.accuracy
        if v is not None:
            out[(m.suite, m.category)] = v
    return out


def _line_chart(
    title: str, series: dict[str, list[float | None]], width: int = 320, height: int = 180
) -> str:
    """A small SVG line chart: x = round (0 = baseline), y = accuracy in [0, 1]."""
    pad_l, pad_b, pad_t = 34, 24, 20
    n = max((len(v) for v in series.values()), default=1)
    w, h = width - pad_l - 10, height - pad_b - pad_t

    def xy(i: int, v: float) -> tuple[float, float]:
        x = pad_l + (w * i / max(1, n - 1))
        y = pad_t + h * (1 - v)
        return x, y

    parts = [
        f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">'
    ]
    parts.append(
        f'<text x="{pad_l}" y="13" font-size="12" font-weight="bold">{html.escape(title)}</text>'
    )
    for g in (0, 0.5, 1.0):
        _, y = xy(0, g)
        parts.append(f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{y}" y2="{y}" stroke="#ddd"/>')
        parts.append(f'<text x="2" y="{y + 4}" font-size="10">{g:.0%}</text>')
    for i in range(n):
        x, _ = xy(i, 0)
        parts.append(f'<text x="{x - 4}" y="{height - 6}" font-size="10">r{i}</text>')
    for name, vals in series.items():
        color = _COLORS.get(name, "#2ca02c")
        pts = [xy(i, v) for i, v in enumerate(vals) if v is not None]
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>'
            )
        for x, y in pts:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _bar_chart(title: str, rows: list[tuple[str, float, float, float]], width: int = 640) -> str:
    """Horizontal bars of deltas with CI whiskers: rows = (label, delta, lo, hi) in [-1, 1]."""
    row_h, pad_l = 22, 230
    height = 30 + row_h * len(rows)
    w = width - pad_l - 20
    lo_all = min([r[2] for r in rows] + [-0.2])
    hi_all = max([r[3] for r in rows] + [0.2])
    span = hi_all - lo_all

    def x(v: float) -> float:
        return pad_l + w * (v - lo_all) / span

    parts = [
        f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">'
    ]
    parts.append(
        f'<text x="4" y="14" font-size="12" font-weight="bold">{html.escape(title)}</text>'
    )
    parts.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="20" y2="{height}" stroke="#999"/>')
    for i, (label, d, lo, hi) in enumerate(rows):
        y = 24 + i * row_h
        color = "#2ca02c" if d >= 0 else "#d62728"
        x0, x1 = sorted((x(0), x(d)))
        parts.append(f'<text x="4" y="{y + 13}" font-size="11">{html.escape(label)}</text>')
        parts.append(
            f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(1.0, x1 - x0):.1f}" height="12" fill="{color}" opacity="0.7"/>'
        )
        parts.append(
            f'<line x1="{x(lo):.1f}" x2="{x(hi):.1f}" y1="{y + 9}" y2="{y + 9}" stroke="#333"/>'
        )
        parts.append(f'<text x="{x(hi) + 4:.1f}" y="{y + 13}" font-size="10">{d:+.1%}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _self_funnel(f: dict[str, int]) -> str:
    if not f:
        return "none"
    parts = [
        ("pool", "items"),
        ("star_sampled", "STaR samples"),
        ("star_verified", "verified"),
        ("rationalize_verified", "rationalized"),
        ("critique_verified", "critique revisions"),
        ("variation_written", "variations written"),
        ("variation_parsed_verified", "parsed+solved"),
        ("dropped_perplexity", "−perplexity"),
        ("dropped_duplicate", "−dup"),
        ("dropped_eval_overlap", "−eval overlap"),
        ("kept", "kept"),
    ]
    return html.escape(", ".join(f"{label} {f[k]}" for k, label in parts if k in f))


def render_run_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` for a loop run folder and return its path."""
    run_dir = Path(run_dir)
    rounds: list[dict[str, Any]] = json.loads((run_dir / "summary_rounds.json").read_text())
    summary = (
        json.loads((run_dir / "summary.json").read_text())
        if (run_dir / "summary.json").is_file()
        else {}
    )
    metric = summary.get("metric", "strict")
    base = _records(run_dir / "eval_r0_base.jsonl")
    base_acc = _acc(base, metric)
    arms = sorted({r["arm"] for r in rounds}, key=lambda a: (a != "targeted", a))
    n_rounds = max((r["round"] for r in rounds), default=0)
    acc_by: dict[tuple[str, int], dict[tuple[str, str], float]] = {}
    for r in rounds:
        acc_by[(r["arm"], r["round"])] = _acc(
            _records(run_dir / f"eval_r{r['round']}_{r['arm']}.jsonl"), metric
        )
    targets = sorted(
        {tuple(t) for r in rounds if r["arm"] == "targeted" for t in r.get("targets", [])}
    )

    charts = []
    for suite, cat in targets:
        series: dict[str, list[float | None]] = {}
        for arm in arms:
            series[arm] = [base_acc.get((suite, cat))] + [
                acc_by.get((arm, k), {}).get((suite, cat)) for k in range(1, n_rounds + 1)
            ]
        charts.append(_line_chart(f"{suite}/{cat} ({metric} acc.)", series))

    sent_rows: list[tuple[str, float, float, float]] = []
    for r in rounds:
        for s in (r.get("gate") or {}).get("sentinels", []):
            test = s.get("test") or {}
            est, ci = test.get("estimate"), test.get("ci")
            if est is None or not ci or s.get("kind") != "binary":
                continue
            sent_rows.append((f"r{r['round']} {r['arm']}: {s.get('suite')}", est, ci[0], ci[1]))

    def cell(v: Any) -> str:
        return html.escape(str(v))

    table_rows = []
    for r in rounds:
        gate = r.get("gate") or {}
        reasons = "<br>".join(cell(x) for x in gate.get("reasons", []))
        f = r.get("funnel", {})
        tr = r.get("train", {})
        table_rows.append(
            "<tr>"
            f"<td>{r['round']}</td><td>{cell(r['arm'])}</td>"
            f"<td>{cell(', '.join(f'{s}/{c}' for s, c in r.get('targets', [])))}"
            + "".join(
                f"<br><span class='small bad'>{cell(k)}: {cell(v)}</span>"
                for k, v in (r.get("stalled") or {}).items()
            )
            + "</td>"
            f"<td>{f.get('drawn', 0)} → {f.get('kept', 0)} (eval overlap −{f.get('dropped_eval_overlap', 0)}, "
            f"dup −{f.get('dropped_duplicate', 0)}, unverified −{f.get('dropped_unverified', 0)})"
            f"<br><span class='small'>self-generated: {_self_funnel(r.get('self_funnel') or {})}</span></td>"
            f"<td>{r.get('n_train', 0)}</td><td>{cell(round(tr.get('final_loss') or 0, 4))}</td>"
            f"<td class='{'ok' if r.get('accepted') else 'bad'}'>{'accepted' if r.get('accepted') else 'rejected'}</td>"
            f"<td class='small'>{reasons}</td>"
            f"<td>{cell(r.get('seconds', {}))}</td></tr>"
        )
    headline = "".join(f"<li><b>{cell(k)}</b>: {cell(v)}</li>" for k, v in summary.items())
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>selfimprove run {cell(run_dir.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; }}
.ok {{ color: #2ca02c; font-weight: bold; }} .bad {{ color: #d62728; font-weight: bold; }} .small {{ font-size: 11px; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.legend span {{ display: inline-block; margin-right: 12px; }}
</style></head><body>
<h1>selfimprove run {cell(run_dir.name)}</h1>
<ul>{headline}</ul>
<h2>Target categories across rounds</h2>
<p class="legend">{"".join(f'<span style="color:{_COLORS.get(a, "#2ca02c")}">■ {cell(a)}</span>' for a in arms)} (r0 = baseline; a rejected round's candidate is still plotted)</p>
<div class="charts">{"".join(charts) or "<p>No target categories.</p>"}</div>
<h2>Sentinels: accuracy change of each candidate (estimate and 1−2α CI)</h2>
{_bar_chart("sentinel deltas", sent_rows) if sent_rows else "<p>No binary sentinel results.</p>"}
<h2>Rounds, data funnel and gate decisions</h2>
<table><tr><th>round</th><th>arm</th><th>targets</th><th>funnel: drawn → kept</th><th>train examples (accumulated)</th>
<th>final loss</th><th>gate</th><th>reasons</th><th>seconds</th></tr>{"".join(table_rows)}</table>
</body></html>
"""
    out = run_dir / "report.html"
    atomic_write_text(out, doc)
    return out
