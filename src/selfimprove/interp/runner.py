"""One entry point for every interp analysis: items in, records + run folder + HTML out.

``run_interp(analysis, loaded, suites=..., n=..., store=...)`` draws items from the suites,
runs the analysis, writes JSON records (``records.jsonl`` and ``<analysis>.json``) and an
HTML page into a run folder of kind ``interp``, and returns an :class:`InterpResult` with a
table (rows + columns) for the CLI to render. ``load_for_interp`` loads a model and an
optional adapter with clear errors (bad path, adapter for a different base).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from selfimprove.errors import ConfigError, ModelLoadError
from selfimprove.interp.common import InterpItem, items_from_pairs, pad_id_of
from selfimprove.models import LoadedModel
from selfimprove.store import RunInfo, RunStore

log = logging.getLogger(__name__)

Analysis = Literal["activations", "attention", "heads", "saliency", "causal", "lora"]
ANALYSES: tuple[str, ...] = ("activations", "attention", "heads", "saliency", "causal", "lora")
#: items per suite when ``n`` is not given (CPU minutes on the embedded model)
DEFAULT_N: dict[str, int] = {
    "activations": 60,
    "attention": 24,
    "heads": 32,
    "saliency": 12,
    "causal": 24,
    "lora": 24,
}


@dataclass
class InterpResult:
    """What an analysis produced (records are also on disk in ``run_dir``)."""

    analysis: str
    model: str
    columns: list[str]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    records: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    run_dir: Path | None = None
    report: Path | None = None
    seconds: float = 0.0


def load_for_interp(model: str | None, adapter: str | Path | None = None) -> LoadedModel:
    """Load ``model`` and attach ``adapter`` with user-facing errors.

    Raises:
        ModelLoadError: the adapter folder is missing/invalid or was trained on another base.
    """
    import json

    from selfimprove.models import attach_adapter, load_model

    loaded = load_model(model)
    if adapter is None:
        return loaded
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"Adapter {str(path)!r} is not a PEFT adapter folder (no adapter_config.json).\n"
            "Fix: pass the folder written by `selfimprove run` / train_lora (it holds "
            "adapter_config.json and adapter_model.safetensors)."
        )
    tr = path / "train_result.json"
    if tr.is_file():
        try:
            base_hash = json.loads(tr.read_text()).get("base_weights_hash", "")
        except (OSError, ValueError):
            base_hash = ""
        if base_hash and not loaded.hash_matches(base_hash):
            raise ModelLoadError(
                f"Adapter {str(path)!r} was trained on a different base model (weights hash "
                f"{base_hash}, loaded model {loaded.name} has {loaded.weights_hash}).\n"
                "Fix: pass --model with the base the adapter was trained on."
            )
    try:
        return attach_adapter(loaded, path)
    except ModelLoadError:
        raise
    except Exception as e:  # shape mismatches from peft when the base differs
        raise ModelLoadError(
            f"Adapter {str(path)!r} does not fit model {loaded.name}: {str(e)[:300]}\n"
            "Fix: pass --model with the base the adapter was trained on."
        ) from e


def build_items(loaded: LoadedModel, suites: Sequence[str], n: int, seed: int) -> list[InterpItem]:
    """``n`` items per suite (split evenly over its categories), tokenized."""
    from selfimprove.evaluate import resolve_suites

    pairs = []
    for suite in resolve_suites(list(suites)):
        per = max(1, -(-n // max(1, len(suite.tasks))))
        for task, sample in suite.samples(per, seed):
            pairs.append((suite.name, task, sample))
    return items_from_pairs(loaded, pairs)


def run_interp(
    analysis: str,
    loaded: LoadedModel,
    *,
    suites: Sequence[str],
    n: int | None = None,
    seed: int = 0,
    store: RunStore | None = None,
    control_suites: Sequence[str] = ("general_nll",),
    label_by: str | None = None,
    options: dict[str, Any] | None = None,
) -> InterpResult:
    """Run one analysis and (when ``store`` is given) persist it as an ``interp`` run.

    Args:
        analysis: one of :data:`ANALYSES`.
        loaded: the model (with the adapter attached for ``lora``).
        suites: suite names or task files; ``n`` items per suite.
        control_suites: ``lora`` only: the prompts the adapter should not change.
        label_by: ``suite`` or ``category`` (default: suite when several suites are given).
        options: analysis-specific keyword arguments (see each ``analyze_*``).

    Raises:
        ConfigError: unknown analysis, no suites, or ``lora`` on a model without an adapter.
    """
    if analysis not in ANALYSES:
        import difflib

        close = difflib.get_close_matches(analysis, ANALYSES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown analysis {analysis!r}.{hint} Choose one of: {', '.join(ANALYSES)}."
        )
    if not suites:
        raise ConfigError("no suites given. Fix: pass --suites, e.g. --suites arithmetic,word_sort")
    if analysis == "lora" and not hasattr(loaded.model, "disable_adapter"):
        raise ConfigError(
            "the lora analysis needs an adapter. Fix: pass --adapter PATH (a PEFT adapter folder)."
        )
    t0 = time.perf_counter()
    opts = dict(options or {})
    n_eff = int(n or DEFAULT_N[analysis])
    by = label_by or ("suite" if len(suites) > 1 else "category")
    torch.manual_seed(seed)
    loaded.model.eval()
    items = build_items(loaded, suites, n_eff, seed)
    control = build_items(loaded, control_suites, n_eff, seed + 1) if analysis == "lora" else []
    config = {
        "analysis": analysis,
        "suites": list(suites),
        "n": n_eff,
        "seed": seed,
        "label_by": by,
        "options": opts,
        "control_suites": list(control_suites) if analysis == "lora" else None,
    }
    from selfimprove.interp import dispatch

    # The run is open while the analysis runs, so a crash or Ctrl-C is recorded as failed /
    # interrupted with its error instead of leaving no trace.
    run_ctx: AbstractContextManager[RunInfo | None] = (
        nullcontext(None)
        if store is None
        else store.track("interp", config=config, seed=seed, model=loaded.name)
    )
    with run_ctx as run:
        out = dispatch.run_analysis(
            analysis,
            loaded.model,
            items,
            pad_id_of(loaded),
            by=by,
            seed=seed,
            opts=opts,
            loaded=loaded,
            control=control,
        )
        res = InterpResult(
            analysis=analysis,
            model=loaded.name,
            columns=out.columns,
            rows=out.rows,
            summary=out.summary,
            records=out.records,
            seconds=time.perf_counter() - t0,
        )
        if store is not None and run is not None:
            run_dir = store.run_dir(run.id)
            store.write_json(run.id, f"{analysis}.json", {"config": config, **out.records})
            store.write_records(run.id, "records.jsonl", out.rows)
            meta = {
                "model": loaded.name,
                "weights": loaded.weights_hash,
                "suites": ", ".join(suites),
                "items": len(items),
                "label": by,
                "seed": seed,
                "seconds": f"{res.seconds:.0f}",
            }
            from selfimprove.interp.report import render_interp_report

            res.report = render_interp_report(run_dir, analysis, out.sections, meta=meta)
            store.set_summary(run.id, _flat(out.summary))
            res.run_id, res.run_dir = run.id, run_dir
    return res


def _flat(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if isinstance(v, str | int | float | bool | list)}
