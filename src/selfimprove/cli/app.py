"""The ``selfimprove`` app: shared options, progress rendering, core commands and ``main()``.

Each command parses options, calls one library function, and renders the result with rich
(progress bars, tables). User errors (:class:`SelfImproveError`) are shown as a message
without a traceback and exit non-zero; Ctrl-C exits 130 after the library has marked the
run interrupted.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from selfimprove.errors import ConfigError, SelfImproveError, StoreError
from selfimprove.evaluate import ProgressHook
from selfimprove.store import DEFAULT_ROOT

app = typer.Typer(
    name="selfimprove",
    help="Measured, closed-loop self-improvement of language models.\n\n"
    "Evaluate a model on verifiable suites, find its weak areas, and keep every run's "
    "records and provenance in a local store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
runs_app = typer.Typer(help="Inspect stored runs.", no_args_is_help=True)
suites_app = typer.Typer(help="List, show and export task suites.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(suites_app, name="suites")

console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root(
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Also load pickle weight files (*.bin) of models and adapters that have no "
            "safetensors. Loading pickle can run arbitrary code: only for files you trust. "
            "Same as SELFIMPROVE_ALLOW_PICKLE=1.",
        ),
    ] = False,
) -> None:
    """Measured, closed-loop self-improvement of language models."""
    if allow_pickle:
        import os

        from selfimprove.models import PICKLE_ENV

        os.environ[PICKLE_ENV] = "1"


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config file (default: ./selfimprove.yaml if present)."
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help=f"Run store folder (default: store.root in the config file, else ./{DEFAULT_ROOT}).",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="'embedded' (SmolLM2-135M-Instruct), 'gemma-base' (Gemma 3 270M pretrained "
        "base), a local model folder, a hub id, or tiny-llama.",
    ),
]
PromptFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--prompt-format",
        help="How prompts are written: auto (chat template if the tokenizer has one, else "
        "plain), chat, or a base-model format: plain, cue ('Instruction: ... Response:'), "
        "urial (3-shot in-context alignment, the baseline a base model is measured against), "
        "urial_if (URIAL with explicit-instruction demonstrations: the curriculum's baseline).",
    ),
]
ThreadsOpt = Annotated[
    int | None, typer.Option(help="torch threads (default: all CPUs available).")
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(help="auto | fp32 | bf16 (auto: bf16 only on CPUs with native bf16)."),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")]


def store_root(config: Path | None, store: str | None) -> str:
    """The run store folder as every command resolves it: ``--store``, else the config file's
    ``store.root``, else :data:`~selfimprove.store.DEFAULT_ROOT`."""
    from selfimprove.config import load_config

    return load_config(config, {"store": {"root": store}}).store.root


def split_csv(value: str | None) -> list[str] | None:
    """A comma-separated flag as a list; None when it was not given (the config's value stands)."""
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


def _verbosity(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # transformers' own progress bars clutter our output
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1") if not os.environ.get(
        "SELFIMPROVE_ONLINE"
    ) else None


class RichHook(ProgressHook):
    """Renders library progress with a rich progress bar."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.task: Any = None

    def phase(self, text: str) -> None:
        console.print(f"[bold cyan]▶[/] {text}")

    def start(self, total: int, description: str) -> None:
        self.close()
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _fmt_rate(x: float | None, ci: Any = None) -> str:
    if x is None:
        return "–"
    s = f"{100 * x:5.1f}"
    if ci:
        s += f" [{100 * ci[0]:.0f}–{100 * ci[1]:.0f}]"
    return s


def metrics_markdown(metrics: list[Any]) -> str:
    """The metrics as a GitHub Markdown table (rates in %, 95% CIs in brackets)."""

    def pct(v: Any, ci: Any) -> str:
        return "–" if v is None else _fmt_rate(v, ci).strip()

    lines = [
        "| suite | category | n | strict acc % [95% CI] | extracted acc % [95% CI] | format % | ref NLL |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for m in metrics:
        lines.append(
            f"| {m.suite} | {m.category} | {m.n} | {pct(m.strict_accuracy, m.strict_ci)} | "
            f"{pct(m.accuracy, m.accuracy_ci)} | {pct(m.format_rate, None)} | "
            f"{'–' if m.ref_nll is None else f'{m.ref_nll:.2f}'} |"
        )
    return "\n".join(lines)


def metrics_table(metrics: list[Any], title: str) -> Table:
    t = Table(title=title, show_lines=False)
    for col, just in [
        ("suite", "left"),
        ("category", "left"),
        ("n", "right"),
        ("strict acc % [95% CI]", "right"),
        ("extracted acc % [95% CI]", "right"),
        ("format %", "right"),
        ("ref NLL", "right"),
    ]:
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for m in metrics:
        t.add_row(
            m.suite,
            m.category,
            str(m.n),
            _fmt_rate(m.strict_accuracy, m.strict_ci),
            _fmt_rate(m.accuracy, m.accuracy_ci),
            _fmt_rate(m.format_rate),
            "–" if m.ref_nll is None else f"{m.ref_nll:.2f}",
        )
    return t


@app.command("eval")
def eval_cmd(
    config: ConfigOpt = None,
    model: ModelOpt = None,
    adapter: Annotated[
        str | None, typer.Option(help="PEFT adapter folder to apply on top of the model.")
    ] = None,
    prompt_format: PromptFormatOpt = None,
    suites: Annotated[
        str | None,
        typer.Option(
            "--suites",
            "-s",
            help="Comma-separated suite names, task files, or the groups all / skills / sentinels (see `selfimprove suites list`).",
        ),
    ] = None,
    n: Annotated[
        int | None,
        typer.Option("--n", "-n", help="Items per suite, split evenly over its categories."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for drawing the items.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Prompts per batch.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Generation length cap.")] = None,
    threads: ThreadsOpt = None,
    dtype: DtypeOpt = None,
    store: StoreOpt = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue an interrupted eval run (id or prefix); its stored config is used."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the metrics as JSON instead of a table.")
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Evaluate a model on task suites: per-category accuracy with 95% CIs, saved as a run."""
    _verbosity(verbose)
    from selfimprove.config import load_config
    from selfimprove.evaluate import run_evaluation

    overrides = {
        "model": {"name": model, "adapter": adapter, "prompt_format": prompt_format},
        "eval": {
            "suites": split_csv(suites),
            "n": n,
            "seed": seed,
        },
        "generation": {"batch_size": batch_size, "max_new_tokens": max_new_tokens},
        "runtime": {"threads": threads, "dtype": dtype},
        "store": {"root": store},
    }
    if resume is not None:
        _refuse_on_resume(
            {"--model": model, "--adapter": adapter, "--prompt-format": prompt_format,
             "--suites": suites, "--n": n,
             "--seed": seed, "--batch-size": batch_size, "--max-new-tokens": max_new_tokens,
             "--dtype": dtype}
        )  # fmt: skip
    cfg = load_config(config, overrides)
    hook = RichHook()
    try:
        result = run_evaluation(cfg, resume=resume, hook=hook)
    finally:
        hook.close()
    if as_json:
        console.print_json(json.dumps([m.model_dump(mode="json") for m in result.metrics]))
    else:
        fmt = cfg.model.prompt_format
        title = f"{result.model} — {result.n_records} items" + (
            f" — prompt format {fmt}" if fmt != "auto" else ""
        )
        console.print(metrics_table(result.metrics, title))
    console.print(
        f"Run [bold]{result.run_id}[/] saved to {result.run_dir}  "
        f"({result.seconds:.0f}s, {result.runtime['dtype']}, {result.runtime['threads']} threads)"
    )


def _refuse_on_resume(flags: dict[str, object]) -> None:
    """``--resume`` continues a run with its stored config: a flag that would change the
    experiment cannot apply, so it is an error rather than silently ignored."""
    given = [k for k, v in flags.items() if v is not None]
    if given:
        raise ConfigError(
            f"--resume continues the run with the config it started with, so {', '.join(given)} "
            "would be ignored. Drop them to resume, or start a new run with them "
            "(only --store, --threads and --verbose apply to a resumed run)."
        )


@app.command("run")
def run_cmd(
    config: ConfigOpt = None,
    model: ModelOpt = None,
    rounds: Annotated[
        int | None, typer.Option(help="Improvement rounds per arm (default 3).")
    ] = None,
    budget: Annotated[
        int | None, typer.Option(help="New training examples per round per arm.")
    ] = None,
    arms: Annotated[
        str | None,
        typer.Option(help="Comma-separated arms: targeted,random (random = the control)."),
    ] = None,
    eval_n: Annotated[
        int | None, typer.Option(help="Fixed evaluation items per skill suite.")
    ] = None,
    sentinel_n: Annotated[
        int | None, typer.Option(help="Fixed evaluation items per sentinel suite.")
    ] = None,
    weight_policy: Annotated[
        str | None, typer.Option(help="uniform | confidence | inverse (per-example loss weights).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for items, data and training.")] = None,
    threads: ThreadsOpt = None,
    dtype: DtypeOpt = None,
    store: StoreOpt = None,
    resume: Annotated[
        str | None,
        typer.Option(help="Continue a killed run (id or prefix) without redoing finished phases."),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """The closed loop: baseline -> weak areas -> targeted data -> LoRA -> re-evaluate -> gate, per round and arm."""
    _verbosity(verbose)
    from selfimprove.config import load_config
    from selfimprove.loop import run_loop

    overrides = {
        "model": {"name": model},
        "loop": {
            "rounds": rounds,
            "budget": budget,
            "arms": [a.strip() for a in arms.split(",")] if arms else None,
            "eval_n": eval_n,
            "sentinel_n": sentinel_n,
            "train": {"weight_policy": weight_policy},
            "seed": seed,
        },
        "runtime": {"threads": threads, "dtype": dtype},
        "store": {"root": store},
    }
    if resume is not None:
        _refuse_on_resume(
            {"--model": model, "--rounds": rounds, "--budget": budget, "--arms": arms,
             "--eval-n": eval_n, "--sentinel-n": sentinel_n, "--weight-policy": weight_policy,
             "--seed": seed, "--dtype": dtype}
        )  # fmt: skip
    cfg = load_config(config, overrides)
    hook = RichHook()
    try:
        result = run_loop(cfg, resume=resume, hook=hook)
    finally:
        hook.close()
    t = Table(title="Rounds")
    for c in ("round", "arm", "targets", "train ex", "final loss", "gate", "why", "seconds"):
        t.add_column(c)
    for r in result.rounds:
        reasons = "; ".join(r.reasons[:2])
        loss = r.train.final_loss if r.train is not None else None
        t.add_row(
            str(r.round),
            r.arm,
            ", ".join(c for _s, c in r.targets),
            str(r.n_train),
            "–" if loss is None else f"{loss:.3f}",
            "[green]accept[/]" if r.accepted else "[red]reject[/]",
            reasons[:90],
            " ".join(f"{k}={v:.0f}" for k, v in r.seconds.items()),
        )
    console.print(t)
    s = result.summary
    for k, why in s.retired_targets.items():
        console.print(f"Retired target {k} ({why}): not chosen again")
    arms_ = list(s.accepted_rounds)
    label = "strict" if s.metric == "strict" else "extracted-answer"  # metric "correct"
    ct = Table(title=f"Per-category {label} accuracy, % [95% CI] (* = targeted)")
    for c in ("suite", "category", "n", "before", *[f"after ({a})" for a in arms_]):
        ct.add_column(c, justify="right" if c not in ("suite", "category") else "left")
    for row in s.per_category:
        ct.add_row(
            row.suite,
            ("* " if row.target else "") + row.category,
            str(row.n),
            _fmt_rate(row.before, row.before_ci),
            *[_fmt_rate(row.after.get(a), row.after_ci.get(a)) for a in arms_],
        )
    console.print(ct)
    console.print(
        f"Target accuracy ({s.metric}) before {_fmt_rate(s.target_acc_before)}%  "
        + "  ".join(
            f"after[{arm}] {_fmt_rate(s.target_acc_after.get(arm))}%" for arm in s.accepted_rounds
        )
    )
    e = s.efficiency
    if e is not None and e.n_items:
        console.print(e.describe()[0].upper() + e.describe()[1:])
    if s.split:
        console.print(f"Items: {s.split}")
    console.print(f"Report: {s.report}")
    console.print(f"Run [bold]{result.run_id}[/] saved to {result.run_dir}")


@app.command()
def sweep(
    knob: Annotated[
        str,
        typer.Option(
            help="threshold (weak-area error threshold) | filtering (perplexity cap on "
            "model-written replies) | variations (share of model-generated data)."
        ),
    ],
    values: Annotated[
        str | None,
        typer.Option(help="Comma-separated values (default: a 3-point grid for the knob)."),
    ] = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    rounds: Annotated[int | None, typer.Option(help="Rounds per point (default 1).")] = 1,
    budget: Annotated[int | None, typer.Option(help="Examples per round per arm.")] = None,
    store: StoreOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run the loop once per value of one knob and tabulate the outcomes (experiment variations)."""
    _verbosity(verbose)
    from selfimprove.config import load_config
    from selfimprove.loop import run_sweep

    cfg = load_config(
        config,
        {
            "model": {"name": model},
            "loop": {"rounds": rounds, "budget": budget},
            "store": {"root": store},
        },
    )
    vals = None
    if values:
        try:
            vals = [float(v) for v in values.split(",")]
        except ValueError as err:
            raise ConfigError(f"--values must be comma-separated numbers, got {values!r}.") from err
    hook = RichHook()
    try:
        rows = run_sweep(cfg, knob, vals, hook=hook)
    finally:
        hook.close()
    t = Table(title=f"Sweep over {knob}")
    arms_ = cfg.loop.arms
    for c in (
        "value",
        "run",
        "targets",
        "before",
        *[f"after ({a})" for a in arms_],
        "accepted",
        "gain t − r (pts)",
        "ratio",
    ):
        t.add_column(c)
    for r in rows:
        e = r.efficiency
        diff, ratio = "–", "–"
        if e is not None and e.difference is not None and e.difference_ci is not None:
            lo, hi = e.difference_ci
            diff = f"{100 * e.difference:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        if e is not None and e.ratio is not None:
            ratio = f"{e.ratio:.2f}" + (
                f" [{e.ratio_ci[0]:.2f}, {e.ratio_ci[1]:.2f}]" if e.ratio_ci else " [unbounded]"
            )
        t.add_row(
            str(r.value),
            r.run_id,
            ", ".join(r.targets),
            _fmt_rate(r.target_acc_before),
            *[_fmt_rate(r.target_acc_after.get(a)) for a in arms_],
            str(r.accepted_rounds),
            diff,
            ratio,
        )
    console.print(t)
    console.print(
        "Gains: the last round's candidates against the base on the targets' confirmation "
        "items (never the items that chose the targets or accepted a model); 95% CIs."
    )


@app.command()
def curriculum(
    stages: Annotated[
        str | None,
        typer.Option(help="Stages to run: 1-2, 1 or 2 (3-6 are not built yet). Default 1-2."),
    ] = None,
    config: ConfigOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="The base model (default gemma-base: the packaged pretrained Gemma 3 270M)."
        ),
    ] = None,
    kinds: Annotated[
        str | None,
        typer.Option(help="Stage 1 instruction kinds, comma-separated (default all 11)."),
    ] = None,
    pool_n: Annotated[
        int | None, typer.Option(help="Pool items per category the writer answers.")
    ] = None,
    samples: Annotated[int | None, typer.Option(help="Sampled replies per pool item.")] = None,
    eval_n: Annotated[int | None, typer.Option(help="Held-out items per category.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for items, sampling and training.")] = None,
    threads: ThreadsOpt = None,
    dtype: DtypeOpt = None,
    store: StoreOpt = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue a killed curriculum run (id or prefix); finished phases are kept."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Staged post-training of a base model: each stage's model writes the next stage's data.

    Stage 1 teaches explicit instructions (verifiable constraints), stage 2 implicit ones
    (questions). Per stage: the writer samples replies, validators keep the right ones, LoRA
    trains on them, and a gate accepts the stage only if it beats both the previous model and
    the base model's in-context baseline (URIAL) on held-out items, with no sentinel worse.
    """
    _verbosity(verbose)
    from selfimprove.config import load_config
    from selfimprove.curriculum import parse_stages, run_curriculum

    if resume is not None:
        _refuse_on_resume(
            {"--stages": stages, "--model": model, "--kinds": kinds, "--pool-n": pool_n,
             "--samples": samples, "--eval-n": eval_n, "--seed": seed, "--dtype": dtype}
        )  # fmt: skip
    overrides = {
        "curriculum": {
            "stages": parse_stages(stages) if stages else None,
            "kinds": split_csv(kinds),
            "pool_n": pool_n,
            "samples": samples,
            "eval_n": eval_n,
            "seed": seed,
        },
        "runtime": {"threads": threads, "dtype": dtype},
        "store": {"root": store},
    }
    cfg = load_config(config, overrides)
    if model is not None or cfg.model.name == "embedded":
        cfg = cfg.model_copy(
            update={"model": cfg.model.model_copy(update={"name": model or "gemma-base"})}
        )
    hook = RichHook()
    try:
        res = run_curriculum(cfg, resume=resume, hook=hook)
    finally:
        hook.close()
    if as_json:
        console.print_json(json.dumps(res))
        return
    t = Table(title="Curriculum stages (held-out items; accuracy % [95% CI], ended %)")
    for c in (
        "stage",
        "rows",
        "in-context baseline",
        "previous",
        "stage model",
        "vs baseline",
        "gate",
    ):
        t.add_column(c, overflow="fold")
    for s in res["stages"]:
        sc = {
            i: f"{m['accuracy']:.1%} [{m['ci'][0]:.0%}, {m['ci'][1]:.0%}], {m['ended']:.0%}"
            for i, m in enumerate(s["scores"])
        }
        vb = s.get("vs_baseline")
        t.add_row(
            f"{s['number']} {s['name']}",
            str(s["n_train"]),
            sc.get(0, "–"),
            sc.get(1, "–"),
            sc.get(2, "–"),
            "–" if not vb else f"{vb['delta']:+.1%} p={vb['p_value']:.2g}",
            "[green]accept[/]" if s["accepted"] else "[red]reject[/]",
        )
    console.print(t)
    console.print(f"Report: {res['report']}")
    console.print(f"Run [bold]{res['run_id']}[/] saved to {res['run_dir']}")


@app.command()
def search(
    name: Annotated[str, typer.Option(help="Study name; rerunning a name resumes it.")] = "default",
    trials: Annotated[int, typer.Option(help="Proxy trials in total (finished ones count).")] = 12,
    knobs: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated knobs to search (default all): learning_rate, epochs, "
            "lora_r, target_modules, weight_policy, rank_by, self_data_fraction."
        ),
    ] = None,
    proxy_seeds: Annotated[str, typer.Option(help="Seeds of the proxy rung.")] = "100",
    proxy_rounds: Annotated[int, typer.Option(help="Loop rounds in a proxy trial.")] = 1,
    promote: Annotated[int, typer.Option(help="Best proxies promoted to full runs.")] = 2,
    full_seeds: Annotated[
        str, typer.Option(help="New seeds for the full rung (none of the proxy seeds).")
    ] = "200,201",
    config: ConfigOpt = None,
    model: ModelOpt = None,
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Search loop strategies with Optuna (ask/tell, TPE), judged on confirmation items.

    Proxy trials are paired against the default strategy on the same seeds, the best are
    promoted to full-size runs on new seeds, each judged by the targeted gain on confirmation
    items. Resumable; the journal file opens in optuna-dashboard (see selfimprove.search).
    """
    _verbosity(verbose)
    from selfimprove.config import load_config
    from selfimprove.search import KNOBS, SearchConfig, run_search

    def seeds(v: str, flag: str) -> list[int]:
        try:
            return [int(x) for x in split_csv(v) or []]
        except ValueError as err:
            raise ConfigError(f"{flag} must be comma-separated integers, got {v!r}.") from err

    cfg = load_config(config, {"model": {"name": model}, "store": {"root": store}})
    scfg = SearchConfig(
        name=name,
        trials=trials,
        knobs=split_csv(knobs) or list(KNOBS),
        proxy_seeds=seeds(proxy_seeds, "--proxy-seeds"),
        proxy_rounds=proxy_rounds,
        promote=promote,
        full_seeds=seeds(full_seeds, "--full-seeds"),
    )
    hook = RichHook()
    try:
        res = run_search(cfg, scfg, hook=hook)
    finally:
        hook.close()
    if as_json:
        console.print_json(res.model_dump_json())
        return
    for rows, title in ((res.proxies, "proxy rung"), (res.full, "full rung (new seeds)")):
        t = Table(title=f"Search {res.name}: {title}; points vs default, paired by seed")
        for c in ("trial", "strategy", "vs default", "per seed"):
            t.add_column(c, overflow="fold")
        for r in rows:
            ci = f" [{r.ci[0]:+.1f}, {r.ci[1]:+.1f}]" if r.ci else ""
            t.add_row(
                str(r.number),
                ", ".join(
                    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in r.params.items()
                ),
                "–" if r.objective is None else f"{r.objective:+.1f}{ci}",
                ", ".join(f"{s}: {d:+.1f}" for s, d in r.per_seed.items()),
            )
        console.print(t)
    console.print(f"{res.verdict}. Journal: {res.journal}", highlight=False)


@app.command()
def doctor(
    model: Annotated[str, typer.Option("--model", "-m", help="Model to test-load.")] = "embedded",
    smoke: Annotated[bool, typer.Option(help="Run a 3-item smoke evaluation.")] = True,
    threads: Annotated[int | None, typer.Option(help="torch threads.")] = None,
) -> None:
    """Check the setup (Python, torch, threads, bf16, model load, smoke eval) and say what to fix."""
    _verbosity(False)
    from selfimprove.doctor import run_doctor

    checks = run_doctor(model, smoke=smoke, threads=threads)
    icons = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]"}
    for c in checks:
        console.print(f"{icons[c.status]} [bold]{c.name}[/]: {c.detail}")
        if c.fix:
            console.print(f"    fix: {c.fix}")
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(1)
    console.print("[green]All checks passed.[/]")


@app.command("config")
def config_cmd(
    config: ConfigOpt = None,
    defaults: Annotated[
        bool, typer.Option("--defaults", help="Print the built-in defaults, ignoring any file.")
    ] = False,
) -> None:
    """Print the resolved configuration as YAML (write it to selfimprove.yaml to edit)."""
    from selfimprove.config import Config, dump_config, load_config

    cfg = Config() if defaults else load_config(config)
    sys.stdout.write(dump_config(cfg))


@runs_app.command("list")
def runs_list(
    config: ConfigOpt = None,
    store: StoreOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="How many runs to show.")] = 20,
    kind: Annotated[
        str | None, typer.Option(help="Only runs of this kind (eval, run, diff...).")
    ] = None,
) -> None:
    """List runs, newest first."""
    from selfimprove.store import RunStore

    st = RunStore(store_root(config, store))
    st.mark_stale_running()
    rows = st.list_runs(limit=limit, kind=kind)
    if not rows:
        console.print(f"No runs in {st.root}. Start one with `selfimprove eval`.")
        return
    t = Table(title=f"Runs in {st.root}")
    for c in ("id", "kind", "status", "created (UTC)", "model", "summary"):
        t.add_column(c)
    colors = {"completed": "green", "running": "cyan", "interrupted": "yellow", "failed": "red"}
    for r in rows:
        summ = ", ".join(
            f"{k}={v}" for k, v in (r.summary or {}).items() if not isinstance(v, dict | list)
        )
        t.add_row(
            r.id,
            r.kind,
            f"[{colors.get(r.status, 'white')}]{r.status}[/]",
            r.created_at[:19],
            r.model,
            summ[:60],
        )
    console.print(t)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix of it.")],
    config: ConfigOpt = None,
    store: StoreOpt = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print only the metrics as a Markdown table.")
    ] = False,
) -> None:
    """Show one run: status, config, provenance summary and its metrics table."""
    from selfimprove.store import RunStore

    st = RunStore(store_root(config, store))
    r = st.get_run(run_id)
    folder = Path(r.path)
    if not folder.is_dir():
        raise StoreError(
            f"Run {r.id} is in the registry but its folder {folder} is missing (moved or "
            "deleted); its records are gone.\nFix: restore the folder, or start a new run."
        )
    mpath = folder / "metrics.json"
    metrics = _read_metrics(mpath) if mpath.is_file() else None
    if markdown:
        if metrics is None:
            raise StoreError(
                f"Run {r.id} ({r.kind}) has no metrics.json: --markdown prints the per-category "
                "table of an evaluation run (`selfimprove eval`).\n"
                f"Fix: drop --markdown, or see {folder} for this run's own files."
            )
        print(metrics_markdown(metrics))
        return
    console.print(
        f"[bold]{r.id}[/]  kind={r.kind}  status={r.status}  model={r.model}  seed={r.seed}"
    )
    console.print(f"created {r.created_at}  finished {r.finished_at or '–'}  folder {r.path}")
    if r.error:
        console.print(f"[red]error:[/] {r.error}")
    prov = r.provenance or {}
    pk = prov.get("packages", {})
    console.print(
        f"git {str(prov.get('git', {}).get('revision') if isinstance(prov.get('git'), dict) else prov.get('git'))[:12]}  packages {pk}"
    )
    if r.summary:
        console.print(f"summary: {r.summary}")
    if metrics is not None:
        console.print(metrics_table(metrics, "metrics"))
    files = sorted(p.name for p in folder.iterdir())
    console.print(f"files: {', '.join(files)}")


@runs_app.command("pool")
def runs_pool(
    run_ids: Annotated[
        list[str], typer.Argument(help="Ids (or unique prefixes) of loop runs, one per seed.")
    ],
    config: ConfigOpt = None,
    store: StoreOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the pooled result as JSON.")
    ] = False,
) -> None:
    """Pool loop runs that differ only in --seed: per-seed gains on confirmation items, the
    mean difference of gains (targeted − random) with a t interval, a fixed-effect estimate,
    and a sign test across seeds (see selfimprove.loop.seeds)."""
    from rich import box

    from selfimprove.loop.seeds import pool_runs
    from selfimprove.store import RunStore

    res = pool_runs(RunStore(store_root(config, store)), run_ids)
    if as_json:
        console.print_json(res.model_dump_json())
        return

    def ci(x: float, c: tuple[float, float] | None) -> str:
        return f"{x:+.1f} [{c[0]:+.1f},{c[1]:+.1f}]" if c else f"{x:+.1f}"

    t = Table(
        title="Loop over seeds: gains in points on confirmation items",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for col, just in (("seed", "right"), ("items", "right"), ("targeted", "left"),
                      ("random", "left"), ("difference", "left"), ("acc t/r", "right")):  # fmt: skip
        t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    for r in res.rows:
        t.add_row(
            str(r.seed),
            str(r.n_items),
            ci(r.gain_targeted, r.gain_targeted_ci),
            ci(r.gain_random, r.gain_random_ci),
            ci(r.difference, r.difference_ci),
            f"{r.accepted.get('targeted', 0)}/{r.accepted.get('random', 0)}",
        )
    console.print(t)
    n = res.n_seeds
    mci = res.mean_difference_ci
    console.print(
        f"Mean difference over {n} seed(s): {res.mean_difference:+.1f} points"
        + (f", 95% t interval [{mci[0]:+.1f}, {mci[1]:+.1f}] (df {n - 1})" if mci else "")
        + ".",
        highlight=False,
    )
    if res.fixed_effect is not None and res.fixed_effect_ci is not None:
        lo, hi = res.fixed_effect_ci
        console.print(
            f"Fixed-effect estimate: {res.fixed_effect:+.1f} [{lo:+.1f}, {hi:+.1f}] (assumes one "
            "true difference for every seed; narrower than the t interval).",
            highlight=False,
        )
    if res.sign_test_p is not None:
        console.print(
            f"Sign test: {res.n_positive} of {res.n_nonzero} seeds favour targeted, one-sided "
            f"p = {res.sign_test_p:.3g}.",
            highlight=False,
        )
    worse = [f"seed {r.seed}: {', '.join(r.sentinel_worse)}" for r in res.rows if r.sentinel_worse]
    console.print(
        "Sentinels significantly worse in an accepted round: " + ("; ".join(worse) or "none") + ".",
        highlight=False,
    )
    mt, mr = res.mean_gain_targeted, res.mean_gain_random
    ratio = f"{mt / mr:.2f}×" if mr > 0 else "undefined (random gain ≤ 0)"
    goal = mt >= 15 and not worse and mr > 0 and mt >= 2 * mr
    console.print(
        f"Goal (targets +15 points, no sentinel worse, targeted ≥ 2× random): targeted "
        f"{mt:+.1f}, random {mr:+.1f}, ratio of mean gains {ratio} → "
        + ("[bold green]met[/]" if goal else "[bold red]not met[/]")
        + ".",
        highlight=False,
    )


@runs_app.command("compare")
def runs_compare(
    run_ids: Annotated[
        list[str],
        typer.Argument(help="Eval run ids (or unique prefixes); the first is the reference."),
    ],
    config: ConfigOpt = None,
    store: StoreOpt = None,
    metric: Annotated[
        str, typer.Option(help="What counts as solved: correct (any sensible answer) or strict.")
    ] = "correct",
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """Compare eval runs on their shared items, paired: per suite, accuracy of the reference
    and of each other run, the difference with a Newcombe 95% interval, the discordant counts
    and an exact McNemar p-value (Holm-adjusted over suites); e.g. a base model under the
    plain, cue and urial prompt formats (see selfimprove.compare)."""
    from rich import box

    from selfimprove.compare import compare_runs
    from selfimprove.store import RunStore

    if metric not in ("correct", "strict"):
        raise ConfigError(f"--metric {metric!r} is not a metric.\nFix: use correct or strict.")
    res = compare_runs(RunStore(store_root(config, store)), run_ids, metric)  # type: ignore[arg-type]
    if as_json:
        console.print_json(res.model_dump_json())
        return
    for r in res.runs:
        ended = "–" if r.ended_rate is None else f"{100 * r.ended_rate:.0f}%"
        console.print(
            f"{r.id}  {r.model}  prompt format {r.prompt_format}  {r.n_records} records  "
            f"replies ended before the cap: {ended}",
            highlight=False,
        )
    for c in res.comparisons:
        t = Table(
            title=f"{c.other} vs {c.reference} ({c.metric}; points)",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        for col in ("suite", "n", "ref %", "other %", "Δ [95% CI]", "+/−", "p (Holm)"):
            t.add_column(col, justify="left" if col in ("suite", "Δ [95% CI]") else "right")
        for row in [*c.suites, *([c.overall] if c.overall else [])]:
            lo, hi = row.delta_ci
            p = row.p_value if row.p_holm is None else row.p_holm
            t.add_row(
                row.suite,
                str(row.n),
                f"{100 * row.acc_a:.1f}",
                f"{100 * row.acc_b:.1f}",
                f"{100 * row.delta:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]",
                f"{row.b_wins}/{row.a_wins}",
                f"{p:.2g}",
            )
        console.print(t)
    console.print(
        "+/−: items only the other run / only the reference solved. p: exact McNemar, two-sided "
        "(Holm over suites; the 'all' row unadjusted).",
        highlight=False,
    )


@runs_app.command("export")
def runs_export(
    run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix of it.")],
    config: ConfigOpt = None,
    store: StoreOpt = None,
    to: Annotated[str, typer.Option("--to", help="Tracking backend (only mlflow for now).")] = (
        "mlflow"
    ),
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
            "sqlite:///<store>/mlflow.db with artifacts in <store>/mlflow-artifacts).",
        ),
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "selfimprove",
    adapters: Annotated[
        bool, typer.Option("--adapters/--no-adapters", help="Send the LoRA adapters too.")
    ] = True,
    replace: Annotated[
        bool, typer.Option("--replace", help="Delete an earlier export of this run first.")
    ] = False,
) -> None:
    """Mirror a stored run into MLflow: params = resolved config, metrics = summary and
    per-round/arm numbers (training-loss curves by step), artifacts = report, JSON files and
    adapters. The store stays the source of truth; nothing in it is changed."""
    from selfimprove.store import RunStore
    from selfimprove.tracking import MlflowTracker, default_tracking_uri, export_run

    if to != "mlflow":
        raise ConfigError(f"--to {to!r} is not a tracking backend.\nFix: use --to mlflow.")
    root = store_root(config, store)
    uri = tracking_uri or default_tracking_uri(root)
    res = export_run(
        RunStore(root),
        run_id,
        MlflowTracker(uri, experiment),
        adapters=adapters,
        replace=replace,
    )
    console.print(
        f"Exported run {res.run_id} to MLflow run {res.backend_id} ({uri}, experiment "
        f"{experiment!r}): {res.n_params} params, {res.n_metrics} metric values, "
        f"{len(res.artifacts)} artifacts"
        + (f"; replaced {res.replaced}" if res.replaced else "")
        + f".\nBrowse: mlflow ui --backend-store-uri {uri}",
        highlight=False,
        soft_wrap=True,
    )


def _read_metrics(path: Path) -> list[Any]:
    """A run's ``metrics.json`` as CategoryMetrics, or a StoreError naming the file."""
    from pydantic import ValidationError

    from selfimprove.evaluate import CategoryMetrics

    try:
        rows = json.loads(path.read_text("utf-8"))
        return [CategoryMetrics.model_validate(m) for m in rows]
    except (ValueError, TypeError, ValidationError) as e:  # JSONDecodeError is a ValueError
        first = str(e).splitlines()[0]
        raise StoreError(
            f"{path} is corrupt ({type(e).__name__}: {first}).\n"
            "Fix: restore the file, or re-run the evaluation (`selfimprove eval`)."
        ) from None


@suites_app.command("list")
def suites_list() -> None:
    """List built-in suites and their categories."""
    from selfimprove.tasks.suites import list_suites

    t = Table(title="Built-in suites")
    for c in ("suite", "kind", "categories", "description"):
        t.add_column(c)
    for s in list_suites():
        cats = ", ".join(task.category for task in s.tasks)
        kind = "curriculum" if s.curriculum else "sentinel" if s.sentinel else "skill"
        t.add_row(s.name, kind, cats, s.description)
    console.print(t)


@suites_app.command("show")
def suites_show(
    name: Annotated[str, typer.Argument(help="Suite name or task file.")],
    n: Annotated[int, typer.Option("--n", "-n", help="Items per category to show.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
) -> None:
    """Print example items of a suite (prompt and gold answer)."""
    from selfimprove.evaluate import resolve_suites

    (suite,) = resolve_suites([name])
    for task in suite.tasks:
        for s in task.samples(n if task.dataset is None else min(n, len(task.dataset)), seed):
            console.rule(f"{suite.name} / {task.category} / {s.id}")
            console.print(s.input_text(), markup=False)
            console.print(f"[bold]target:[/] {s.target}")


@suites_app.command("export")
def suites_export(
    name: Annotated[str, typer.Argument(help="Suite name (or task file).")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output JSONL file (--format jsonl) or folder (lm-eval, inspect)."
        ),
    ],
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Items per suite.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="jsonl: inspect-compatible Samples, one per line. lm-eval: a task folder "
            "(JSONL data, generate + loglikelihood YAML, our validator as process_results) "
            "for `lm_eval --include_path OUT --tasks selfimprove_NAME --apply_chat_template`. "
            "inspect: a folder with an inspect_ai @task file (JSONL data, our validator as "
            "scorer) for `cd OUT && inspect eval selfimprove_NAME.py --model hf/local "
            "-M model_path=MODEL_DIR -M do_sample=false`.",
        ),
    ] = "jsonl",
    config: ConfigOpt = None,
) -> None:
    """Write a suite's items for other tools: inspect-compatible JSONL, an lm-eval or inspect task."""
    from selfimprove.config import load_config
    from selfimprove.evaluate import plan_items, resolve_suites
    from selfimprove.store import atomic_write_text
    from selfimprove.tasks.base import dump_jsonl
    from selfimprove.tasks.interop import (
        export_inspect,
        export_lm_eval,
        inspect_task_name,
        lm_eval_task_names,
    )

    if fmt not in ("jsonl", "lm-eval", "inspect"):
        raise ConfigError(
            f"--format {fmt!r} is not known.\nFix: use --format jsonl, lm-eval or inspect."
        )
    suites = resolve_suites([name])
    plan = plan_items(suites, n, seed)
    samples = [s for _su, _t, xs in plan for s in xs]
    try:
        if fmt in ("lm-eval", "inspect"):
            if len(suites) != 1:
                raise ConfigError(
                    f"--format {fmt} exports one suite at a time; {name!r} is "
                    f"{len(suites)} suites.\nFix: export each suite to its own folder."
                )
            (suite,) = suites
            src = name if suite.name == name else str(Path(name).expanduser().resolve())
            cap = load_config(config).generation.max_new_tokens
            pairs = [(t, s) for _su, t, xs in plan for s in xs]
            if fmt == "inspect":
                export_inspect(suite, src, pairs, out, max_new_tokens=cap)
                py = out / f"{inspect_task_name(suite.name)}.py"
                console.print(
                    f"Wrote {len(samples)} items and task {py}. Run:\n"
                    f"  cd {out} && HF_HUB_OFFLINE=1 inspect eval {py.name} --model hf/local "
                    "-M model_path=MODEL_DIR -M do_sample=false -M device=cpu",
                    highlight=False,
                    soft_wrap=True,
                )
                return
            export_lm_eval(suite, src, pairs, out, max_new_tokens=cap)
            gen, nll = lm_eval_task_names(suite.name)
            console.print(
                f"Wrote {len(samples)} items and tasks {gen}, {nll} to {out}. Run:\n"
                f"  HF_HUB_OFFLINE=1 lm_eval --model hf --model_args pretrained=MODEL_DIR "
                f"--include_path {out} --tasks {gen} --apply_chat_template",
                highlight=False,
                soft_wrap=True,
            )
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, dump_jsonl(samples))
    except OSError as e:
        blocker = next((q for q in out.parents if q.exists() and not q.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else f"{e.strerror} ({e.filename})"
        raise StoreError(
            f"Cannot write {out}: {why}.\n"
            "Fix: choose an --out path in a folder you can write to (not under a file)."
        ) from None
    console.print(f"Wrote {len(samples)} items to {out}")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    """Entry point: run the app, turning user errors into messages and exit codes."""
    import signal

    # Ctrl-C and `kill` both end a run as "interrupted" with its finished work on disk.
    # SIGINT is reset explicitly: a process started in the background inherits it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        # Non-standalone click returns the exit code of typer.Exit, and turns Ctrl-C into 130.
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc == 130:
            raise KeyboardInterrupt
        if isinstance(rc, int) and rc != 0:
            sys.exit(rc)
    except SelfImproveError as e:
        # escape: a message may hold brackets ("selfimprove[tracking]", "items[3]") that rich
        # would otherwise read as markup and drop
        err_console.print(f"[bold red]Error:[/] {escape(str(e))}", markup=True, highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]Interrupted.[/] Finished work is saved; resume with --resume RUN_ID (see `selfimprove runs list`)."
        )
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as e:  # usage errors (bad option value, unknown option, missing argument)
        if isinstance(e, _usage_error_types()):
            e.show()  # type: ignore[attr-defined]
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        raise


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """click's and typer's usage-error classes: typer >= 0.2x raises its *bundled* click's
    exceptions (``typer._click``), which are not subclasses of the installed click's."""
    import importlib

    out = []
    for mod in ("click.exceptions", "typer._click.exceptions"):
        try:
            out.append(importlib.import_module(mod).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(out)
