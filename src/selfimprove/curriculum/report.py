"""Self-contained HTML report of a curriculum run (``report.html``; inline SVG, no JS).

Per stage: the in-context baseline, the previous model and the trained stage on the held-out
items (accuracy with 95% Wilson intervals, replies ended), the paired tests against both
references, the data funnel, the gate's reasons and a few sample replies.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from selfimprove.curriculum.records import StageResult
from selfimprove.report import bar_chart
from selfimprove.store import atomic_write_text


def _e(v: object) -> str:
    return html.escape(str(v))


def _stage_html(s: StageResult) -> str:
    score_rows = "".join(
        f"<tr><td>{_e(m.name)}</td><td>{m.accuracy:.1%}</td><td>[{m.ci[0]:.1%}, {m.ci[1]:.1%}]</td>"
        f"<td>{m.ended:.0%}</td><td>{m.n}</td></tr>"
        for m in s.scores
    )
    bars = [
        (label, t.delta, t.delta_ci[0], t.delta_ci[1])
        for label, t in (("vs previous", s.vs_previous), ("vs in-context baseline", s.vs_baseline))
        if t is not None
    ]
    f = s.funnel
    funnel = (
        f"{f.pool_items} pool items → {f.sampled} sampled → {f.ended} ended → {f.verified} "
        f"verified → {f.distinct} distinct → <b>{f.kept} rows</b> ({f.items_with_a_row} items)"
    )
    cats = sorted({n for v in s.per_category.values() for n in v})
    cat_rows = "".join(
        f"<tr><td>{_e(c)}</td>"
        + "".join(f"<td>{v.get(n, float('nan')):.0%}</td>" for n in cats)
        + "</tr>"
        for c, v in s.per_category.items()
    )
    samples = "".join(
        f"<tr><td>{_e(x['category'])}</td><td><pre>{_e(x['baseline'])}</pre>{_e(x['baseline_ok'])}</td>"
        f"<td><pre>{_e(x['stage'])}</pre>{_e(x['stage_ok'])}</td></tr>"
        for x in s.samples
    )
    verdict = {True: '<span class="ok">ACCEPTED</span>', False: '<span class="bad">REJECTED</span>'}
    return f"""<h2>Stage {s.number}: {_e(s.name)} — {verdict.get(s.accepted, "unfinished")}</h2>
<p>Writer: {_e(s.writer)}. Data: {funnel}.</p>
<table><tr><th>model (prompt)</th><th>held-out accuracy</th><th>95% CI</th><th>ended</th><th>n</th></tr>{score_rows}</table>
{bar_chart("stage minus reference (Newcombe 95% CI)", bars) if bars else ""}
<ul>{"".join(f"<li>{_e(r)}</li>" for r in s.reasons)}</ul>
<details><summary>per category</summary><table><tr><th>category</th>{"".join(f"<th>{_e(n)}</th>" for n in cats)}</tr>{cat_rows}</table></details>
<details><summary>sample replies (held-out)</summary><table><tr><th>category</th><th>in-context baseline</th><th>stage</th></tr>{samples}</table></details>
"""


def render_curriculum_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` of the curriculum run in ``run_dir`` (from ``stages.json``)."""
    run_dir = Path(run_dir)
    stages = [
        StageResult.model_validate(x)
        for x in json.loads((run_dir / "stages.json").read_text(encoding="utf-8"))
    ]
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>selfimprove curriculum {_e(run_dir.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 6px 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; }}
pre {{ white-space: pre-wrap; margin: 0; max-width: 420px; }}
.ok {{ color: #2ca02c; font-weight: bold; }} .bad {{ color: #d62728; font-weight: bold; }}
</style></head><body>
<h1>selfimprove curriculum {_e(run_dir.name)}</h1>
<p>Every number is on held-out items no stage trained on; each stage must beat both the model
before it and the base model's in-context baseline (one-sided exact McNemar).</p>
{"".join(_stage_html(s) for s in stages)}
</body></html>
"""
    out = run_dir / "report.html"
    atomic_write_text(out, doc)
    return out
