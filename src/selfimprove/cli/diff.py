"""``selfimprove diff``: behavior-change detection between two models (see selfimprove.diff).

``selfimprove diff BASE CANDIDATE`` (or ``diff BASE --adapter DIR``) prints the ranked table
of changed regions and where the run was saved; ``diff --null MODEL`` runs the A-vs-A
calibration; ``selfimprove bench planted`` runs the planted-change benchmark.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table

from selfimprove.cli.app import (
    ConfigOpt,
    StoreOpt,
    _verbosity,
    app,
    console,
    split_csv,
    store_root,
)

if TYPE_CHECKING:
    from selfimprove.config import Config
    from selfimprove.runtime import Runtime

bench_app = typer.Typer(help="Benchmarks of the behavior-change detector.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

SuitesOpt = Annotated[
    str | None,
    typer.Option(
        "--suites",
        "-s",
        help="Comma-separated suites (one region per suite/category); groups all / skills / sentinels.",
    ),
]


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _region_table(res: object) -> Table:
    """Regions ranked by q-value, laid out to stay readable at 80 columns and in a log file:
    four narrow numeric columns and one wrapping column that states the statistic in counts."""
    from selfimprove.diff.detect import DiffResult
    from selfimprove.diff.naming import describe_test

    assert isinstance(res, DiffResult)
    t = Table(
        title=f"{res.candidate} vs {res.base}: regions by q-value",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    t.add_column("region", overflow="fold", max_width=30)
    t.add_column("KL", justify="right", no_wrap=True)
    t.add_column("n", justify="right", no_wrap=True)
    t.add_column("q", justify="right", no_wrap=True)
    t.add_column("statistic (B vs A)", overflow="fold", ratio=1, min_width=24)
    shown = sorted(res.regions, key=lambda r: (r.q_value, r.screen_rank))
    for r in shown[: max(10, len(res.flagged))]:
        stat = (r.changed_stats or [r.top_stat])[0] if r.flagged else r.top_stat
        test = r.test(stat) if stat else None
        what = describe_test(test) if test is not None and test.n else "not sampled"
        t.add_row(
            ("* " if r.flagged else "") + r.region,
            f"{r.screen.score:.3g}",
            str(r.allocated),
            f"{r.q_value:.2g}",
            what,
            style="bold red" if r.flagged else None,
        )
    if len(shown) > 10 and len(shown) > len(res.flagged):
        t.caption = f"{len(shown) - max(10, len(res.flagged))} more regions, none flagged (--json)"
    return t


def _print_result(run: object, *, as_json: bool = False) -> None:
    from selfimprove.diff.run import DiffRun, describe

    assert isinstance(run, DiffRun)
    if as_json:
        console.print_json(json.dumps(describe(run.result)))
        console.print(f"Run {run.run_id} saved to {run.run_dir}")
        return
    from selfimprove.diff.naming import describe_test

    res = run.result
    console.print(_region_table(res))
    if res.changed:
        console.print(f"[bold red]{len(res.flagged)} region(s) changed[/] at FDR q={res.config.q}:")
        for r in res.flagged:
            console.print(f"\n[bold]{r.region}[/] (q={r.q_value:.2g})", highlight=False)
            for stat in r.changed_stats or [r.top_stat]:
                test = r.test(stat)
                if test is None or not test.n:
                    continue
                console.print(
                    f"  {describe_test(test)}; B − A {test.effect:+.3g} "
                    f"[{test.ci[0]:+.3g}, {test.ci[1]:+.3g}]",
                    highlight=False,
                    markup=False,
                )
            if r.label and (r.label.b_terms or r.label.a_terms):
                terms = "; ".join(
                    f"{who} says " + ", ".join(repr(w) for w in ws)
                    for who, ws in (("B", r.label.b_terms), ("A", r.label.a_terms))
                    if ws
                )
                check = (
                    f"{r.label.heldout_accuracy:.0%} of {r.label.heldout_n} held-out pairs, "
                    f"p={r.label.heldout_p:.2g}"
                    if r.label.heldout_accuracy is not None and r.label.heldout_p is not None
                    else "no held-out pairs"
                )
                verdict = "validated" if r.label.validated else "not validated"
                console.print(
                    f"  words: {terms} ({verdict}: {check})", highlight=False, markup=False
                )
            for ex in r.examples[:1]:
                console.print(f"  e.g. {_clip(ex.prompt, 70)!r}", highlight=False, markup=False)
                console.print(f"    A: {_clip(ex.a_output, 90)!r}", highlight=False, markup=False)
                console.print(f"    B: {_clip(ex.b_output, 90)!r}", highlight=False, markup=False)
    else:
        console.print(f"[bold green]No behavior change detected[/] at FDR q={res.config.q}.")
    if run.weights:
        top = ", ".join(f"{w.module} ({w.norm:.3g})" for w in run.weights[:3])
        console.print(f"Largest LoRA ΔW: {top}")
    for x in run.exploration[:3]:
        console.print(f"[dim]exploratory (contrastive, not tested):[/] {x.text[:100]!r}")
    c = res.cost
    console.print(
        f"Spent {c.samples_per_model} samples per model (+{c.screen_prefills_per_model} screening "
        f"prefills per model) in {c.seconds:.0f}s."
    )
    console.print(f"Run [bold]{run.run_id}[/] saved to {run.run_dir}; report: {run.report}")


def _phase(text: str) -> None:
    console.print(f"[bold cyan]▶[/] {text}")


def _null_calibration(
    model: str, adapters: str | None, settings: Config, runtime: Runtime, *, as_json: bool
) -> None:
    """``diff --null MODEL``: MODEL vs itself (or MODEL+ADAPTER1 vs MODEL+ADAPTER2) per seed."""
    from selfimprove.diff.run import build_regions, load_pair, null_calibration
    from selfimprove.engine import Engine
    from selfimprove.errors import ConfigError
    from selfimprove.models import load_model

    d = settings.diff
    _phase(f"Loading {model}")
    other = None
    if adapters:
        dirs = [x.strip() for x in adapters.split(",") if x.strip()]
        if len(dirs) != 2:
            raise ConfigError(
                f"--null-adapters needs two adapter folders separated by a comma, got {dirs}."
            )
        _, m = load_pair(model, None, dirs[0])
        _, m2 = load_pair(model, None, dirs[1])
        other = Engine(m2, runtime=runtime)
    else:
        m = load_model(model)
    cfg = d.detect_config()
    cal, _ = null_calibration(
        Engine(m, runtime=runtime),
        lambda s: build_regions(
            d.region_suites(), d.prompts, d.n_per_region, s, d.regions, d.cluster
        ),
        cfg.model_copy(update={"min_per_region": cfg.min_per_region or 6}),
        list(range(cfg.seed, cfg.seed + d.null_seeds)),
        other=other,
        phase=_phase,
    )
    if as_json:
        console.print_json(cal.model_dump_json())
    else:
        console.print(
            f"Null calibration of {cal.model}: {sum(1 for n in cal.n_flagged_regions if n)} of "
            f"{len(cal.seeds)} seeds flagged anything (fraction {cal.fraction_with_any_flag:.2f}; "
            f"target ≤ q = {cal.q}). Flags per seed: {cal.n_flagged_regions}."
        )


@app.command("diff")
def diff_cmd(
    base: Annotated[
        str | None, typer.Argument(help="Model A: 'embedded', a folder, a hub id.")
    ] = None,
    candidate: Annotated[
        str | None, typer.Argument(help="Model B (default: BASE, with --adapter on top).")
    ] = None,
    adapter: Annotated[
        str | None, typer.Option(help="PEFT adapter applied on BASE to make B.")
    ] = None,
    null: Annotated[
        str | None,
        typer.Option("--null", help="Calibrate: compare MODEL with itself over --seeds seeds."),
    ] = None,
    null_adapters: Annotated[
        str | None,
        typer.Option(
            help="--null: compare MODEL+ADAPTER1 with MODEL+ADAPTER2 (comma-separated; e.g. two "
            "fine-tunes on the same data with different seeds) instead of MODEL with itself."
        ),
    ] = None,
    config: ConfigOpt = None,
    suites: SuitesOpt = None,
    prompts: Annotated[
        str | None, typer.Option(help="JSONL prompt bank: {prompt, region?, target?} per line.")
    ] = None,
    n_per_region: Annotated[
        int | None, typer.Option(help="Prompts per region (half screen, half test).")
    ] = None,
    regions: Annotated[
        str | None,
        typer.Option(help="Regions from suites: 'category' (suite/category) or 'suite'."),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="How --prompts rows without a region are grouped: 'embedding' (all-MiniLM-L6-v2, "
            "offline), 'tfidf', or 'auto' (embedding if installed)."
        ),
    ] = None,
    budget: Annotated[
        int | None, typer.Option(help="Sampled outputs per model for the tests.")
    ] = None,
    q: Annotated[float | None, typer.Option("--q", help="False discovery rate.")] = None,
    fdr: Annotated[str | None, typer.Option(help="bh | saffron | addis")] = None,
    k: Annotated[int | None, typer.Option(help="Screen positions.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Length of sampled outputs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (prompts, split, sampling).")] = None,
    seeds: Annotated[int | None, typer.Option(help="--null: number of seeds.")] = None,
    min_per_region: Annotated[
        int | None, typer.Option(help="Samples every region gets (--null: at least 6).")
    ] = None,
    explore: Annotated[
        int | None, typer.Option(help="Contrastive-decoding samples (exploratory).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads.")] = None,
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Where does CANDIDATE behave differently from BASE? Ranked regions with FDR control.

    Options not given come from the diff: section of the config file, then the defaults
    (`selfimprove config --defaults` lists them).
    """
    _verbosity(verbose)
    from selfimprove.config import load_config
    from selfimprove.diff.run import build_regions, load_pair, run_diff
    from selfimprove.errors import ConfigError
    from selfimprove.runtime import resolve_runtime

    overrides = {
        "diff": {
            "suites": split_csv(suites),
            "prompts": prompts,
            "n_per_region": n_per_region,
            "regions": regions,
            "cluster": cluster,
            "budget": budget,
            "q": q,
            "fdr": fdr,
            "k": k,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
            "null_seeds": seeds,
            "min_per_region": min_per_region,
            "explore": explore,
        },
        "runtime": {"threads": threads},
        "store": {"root": store},
    }
    settings = load_config(config, overrides)
    d = settings.diff
    cfg = d.detect_config()
    runtime = resolve_runtime(settings.runtime.threads)

    if null:
        _null_calibration(null, null_adapters, settings, runtime, as_json=as_json)
        return
    if base is None:
        raise ConfigError("Give BASE and CANDIDATE (or BASE --adapter DIR), or --null MODEL.")
    if candidate is None and adapter is None:
        raise ConfigError("Give a CANDIDATE model or --adapter DIR to compare with BASE.")
    _phase("Loading models")
    a, b = load_pair(base, candidate, adapter)
    run = run_diff(
        a,
        b,
        build_regions(d.region_suites(), d.prompts, d.n_per_region, cfg.seed, d.regions, d.cluster),
        cfg,
        store_root=settings.store.root,
        runtime=runtime,
        explore=d.explore,
        explore_lambda=d.explore_lambda,
        phase=_phase,
    )
    _print_result(run, as_json=as_json)


@bench_app.command("planted")
def planted_cmd(
    seeds: Annotated[int, typer.Option(help="Number of seeds (a LoRA is trained per seed).")] = 5,
    seed: Annotated[int, typer.Option(help="First seed.")] = 0,
    model: Annotated[str, typer.Option("--model", "-m", help="Base model.")] = "embedded",
    budget: Annotated[int, typer.Option(help="Samples per model for the adaptive design.")] = 24,
    n_per_region: Annotated[int, typer.Option(help="Prompts per region.")] = 24,
    region: Annotated[
        str,
        typer.Option(
            help="Planted region: a suite ('letters'), or suite/category with --regions category."
        ),
    ] = "letters",
    regions: Annotated[str, typer.Option(help="'suite' or 'category' regions.")] = "suite",
    keep_loss: Annotated[
        str,
        typer.Option(
            help="Loss on the keep examples while planting: 'kl' (KL to the base model: pins "
            "the rest) or 'nll' (imitate the base's greedy reply)."
        ),
    ] = "kl",
    q: Annotated[float, typer.Option("--q")] = 0.1,
    threads: Annotated[int | None, typer.Option(help="torch threads.")] = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Plant a one-region behavior change with a LoRA, then check the detector finds it."""
    _verbosity(verbose)
    from selfimprove.diff.planted import PlantedConfig, run_planted_benchmark
    from selfimprove.errors import ConfigError
    from selfimprove.runtime import resolve_runtime

    if regions not in ("category", "suite"):
        raise ConfigError(f"--regions must be category or suite, not {regions!r}.")
    if keep_loss not in ("kl", "nll"):
        raise ConfigError(f"--keep-loss must be kl or nll, not {keep_loss!r}.")
    cfg = PlantedConfig(
        model=model,
        budget=budget,
        n_per_region=n_per_region,
        q=q,
        planted_region=region,
        region_by=regions,  # type: ignore[arg-type]
        keep_loss=keep_loss,  # type: ignore[arg-type]
    )

    bench = run_planted_benchmark(
        cfg,
        list(range(seed, seed + seeds)),
        store_root=store_root(config, store),
        runtime=resolve_runtime(threads),
        phase=_phase,
    )
    t = Table(title=f"Planted change: {bench.planted_region} ({bench.behavior})")
    for col in (
        "seed",
        "found",
        "false regions",
        "replicated leaks",
        "samples/model",
        "uniform design",
        "ratio",
        "wall s",
    ):
        t.add_column(col)
    for r in bench.rows:
        t.add_row(
            str(r.seed),
            "yes" if r.found else "NO",
            str(r.false_regions),
            ", ".join(r.leaks) or "-",
            str(r.samples_per_model),
            str(r.uniform_samples_per_model),
            f"{r.ratio:.1f}x",
            f"{r.seconds:.0f}",
        )
    console.print(t)
    console.print(bench.summary)
    console.print(f"Saved to {bench.run_dir}")
