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

from selfimprove.evaluate import EvalRecord, Metric, aggregate
from selfimprove.loop.records import ArmRound, LoopSummary
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


def _acc(records: list[EvalRecord], metric: Metric) -> dict[tuple[str, str], float]:
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


bar_chart = _bar_chart  # shared with the curriculum report


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


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _headline(s: LoopSummary | None) -> list[str]:
    """The summary's headline as list items (empty for a run without a summary)."""
    if s is None:
        return []
    out = [
        f"targets ({len(s.targets)}): {', '.join(s.targets) or '–'}",
        f"target accuracy ({s.metric}) before: {_pct(s.target_acc_before)}; after: "
        + ", ".join(f"{arm} {_pct(v)}" for arm, v in s.target_acc_after.items()),
        "accepted rounds: " + ", ".join(f"{a} {n}" for a, n in s.accepted_rounds.items()),
    ]
    e = s.efficiency
    if e is not None and e.n_items:
        out.append(e.describe())
    if s.split:
        out.append(f"evaluation items: {s.split}")
    out += [f"retired {k}: {why}" for k, why in s.retired_targets.items()]
    out.append(
        f"replay: {s.replay.kept_correct} of {s.replay.drawn} base answers kept; baseline "
        f"evaluation {s.baseline_eval_seconds:.0f} s"
    )
    return out


def _round_row(r: ArmRound) -> str:
    def cell(v: Any) -> str:
        return html.escape(str(v))

    f, loss = r.funnel, (r.train.final_loss if r.train is not None else 0.0)
    return (
        "<tr>"
        f"<td>{r.round}</td><td>{cell(r.arm)}</td>"
        f"<td>{cell(', '.join(f'{s}/{c}' for s, c in r.targets))}"
        + "".join(
            f"<br><span class='small bad'>{cell(k)}: {cell(v)}</span>" for k, v in r.stalled.items()
        )
        + "</td>"
        f"<td>{f.drawn} → {f.kept} (eval overlap −{f.dropped_eval_overlap}, "
        f"dup −{f.dropped_duplicate}, unverified −{f.dropped_unverified})"
        f"<br><span class='small'>self-generated: {_self_funnel(r.self_funnel)}</span></td>"
        f"<td>{r.n_train}</td><td>{cell(round(loss, 4))}</td>"
        f"<td class='{'ok' if r.accepted else 'bad'}'>{'accepted' if r.accepted else 'rejected'}</td>"
        f"<td class='small'>{'<br>'.join(cell(x) for x in r.reasons)}</td>"
        f"<td>{cell(r.seconds)}</td></tr>"
    )


def render_run_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` for a loop run folder and return its path."""
    run_dir = Path(run_dir)
    rounds = [
        ArmRound.model_validate(r)
        for r in json.loads((run_dir / "summary_rounds.json").read_text())
    ]
    summary: LoopSummary | None = None
    if (run_dir / "summary.json").is_file():
        try:
            summary = LoopSummary.model_validate_json((run_dir / "summary.json").read_text())
        except ValueError:  # a summary written by an older version: no headline
            summary = None
    metric: Metric = "strict" if summary is None else summary.metric  # type: ignore[assignment]
    base_acc = _acc(_records(run_dir / "eval_r0_base.jsonl"), metric)
    arms = sorted({r.arm for r in rounds}, key=lambda a: (a != "targeted", a))
    n_rounds = max((r.round for r in rounds), default=0)
    acc_by = {
        (r.arm, r.round): _acc(_records(run_dir / f"eval_{r.tag}.jsonl"), metric) for r in rounds
    }
    targets = sorted({tuple(t) for r in rounds if r.arm == "targeted" for t in r.targets})

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
        for sr in r.gate.sentinels if r.gate is not None else []:
            if sr.test is None or sr.kind != "binary":
                continue
            est, (lo, hi) = sr.test.estimate, sr.test.ci
            sent_rows.append((f"r{r.round} {r.arm}: {sr.suite}", est, lo, hi))

    def cell(v: Any) -> str:
        return html.escape(str(v))

    table_rows = [_round_row(r) for r in rounds]
    headline = "".join(f"<li>{cell(x)}</li>" for x in _headline(summary))
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
