"""``selfimprove interp``: interpretability analyses (see selfimprove.interp).

Thin: parse options, call :func:`selfimprove.interp.run_interp`, render the table, print the
run folder and the HTML report path.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import typer
from rich.table import Table

from selfimprove.cli.app import ConfigOpt, StoreOpt, _verbosity, app, console, split_csv


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "[green]yes[/]" if v else "no"
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(str(x) for x in v[:4])
    return "–" if v is None else str(v)


@app.command("interp")
def interp_cmd(
    analysis: Annotated[
        str,
        typer.Argument(help="activations | attention | heads | saliency | causal | lora"),
    ],
    config: ConfigOpt = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="'embedded', a local model folder, or tiny-llama."),
    ] = None,
    adapter: Annotated[
        str | None, typer.Option(help="PEFT adapter folder (required for `lora`).")
    ] = None,
    suites: Annotated[
        str | None,
        typer.Option("--suites", "-s", help="Comma-separated suites (target suites for `lora`)."),
    ] = None,
    control: Annotated[
        str | None, typer.Option(help="`lora` only: comma-separated control suites.")
    ] = None,
    n: Annotated[
        int | None, typer.Option("--n", "-n", help="Items per suite (default per analysis).")
    ] = None,
    label_by: Annotated[
        str | None, typer.Option(help="suite | category (default: suite if several suites).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for items, splits and permutations.")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads.")] = None,
    store: StoreOpt = None,
    rows: Annotated[int, typer.Option(help="Table rows to print.")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    """Interpretability: probes, attention, head importance, saliency, patching/steering, LoRA knockout.

    Options not given come from the config file (the interp: section; the model from model:),
    then the defaults (`selfimprove config --defaults` lists them).
    """
    _verbosity(verbose)
    from selfimprove.config import load_config
    from selfimprove.errors import ConfigError
    from selfimprove.evaluate import resolve_suites
    from selfimprove.interp import ANALYSES, load_for_interp, run_interp
    from selfimprove.runtime import resolve_runtime
    from selfimprove.store import RunStore

    if analysis not in ANALYSES:
        run_interp_names = ", ".join(ANALYSES)
        raise ConfigError(f"unknown analysis {analysis!r}. Choose one of: {run_interp_names}.")
    overrides = {
        "model": {"name": model, "adapter": adapter},
        "interp": {
            "suites": split_csv(suites),
            "control_suites": split_csv(control),
            "n": n,
            "label_by": label_by,
            "seed": seed,
        },
        "runtime": {"threads": threads},
        "store": {"root": store},
    }
    cfg = load_config(config, overrides)
    ic = cfg.interp
    resolve_runtime(cfg.runtime.threads, "fp32")
    resolve_suites(ic.suites)  # unknown suite -> TaskError before the model loads
    loaded = load_for_interp(cfg.model.name, cfg.model.adapter)
    console.print(f"[bold cyan]▶[/] interp {analysis} on {loaded.name} ({', '.join(ic.suites)})")
    result = run_interp(
        analysis,
        loaded,
        suites=ic.suites,
        n=ic.n,
        seed=ic.seed,
        store=RunStore(cfg.store.root),
        control_suites=ic.control_suites,
        label_by=ic.label_by,
    )
    if as_json:
        console.print_json(json.dumps(result.summary, default=str))
    else:
        t = Table(title=f"interp {analysis} — {result.model}")
        for c in result.columns:
            t.add_column(
                c,
                justify="left"
                if c in ("label", "category", "group", "module", "metric", "kind", "name")
                else "right",
            )
        for r in result.rows[:rows]:
            t.add_row(*[_cell(r.get(c)) for c in result.columns])
        console.print(t)
        if len(result.rows) > rows:
            console.print(
                f"… {len(result.rows) - rows} more rows in {result.run_dir}/records.jsonl"
            )
        console.print(f"summary: {json.dumps(result.summary, default=str)[:600]}")
    console.print(f"Report: {result.report}")
    console.print(
        f"Run [bold]{result.run_id}[/] saved to {result.run_dir}  ({result.seconds:.0f}s)"
    )
