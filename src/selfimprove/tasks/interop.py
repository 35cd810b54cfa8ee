"""Export suites as tasks that an unmodified ``lm_eval`` or ``inspect eval`` runs offline.

``selfimprove suites export NAME --format lm-eval -o DIR`` writes into ``DIR``:

* ``<suite>.jsonl``: one document per item: ``id``, ``input``, ``target``, ``reference`` (the
  reference completion), ``category``, ``suite``, ``source``, ``mode`` and ``sample_json``
  (the whole :class:`~selfimprove.tasks.base.Sample`, which the scorer reads);
* ``selfimprove_<suite>.yaml``: a ``generate_until`` task (greedy, ``max_gen_toks`` = the
  task's cap), scored by **our** validator through ``utils.process_results`` (metrics ``acc``
  = our ``correct``, ``format_ok``) — so a number from lm-eval means what ours means;
* ``selfimprove_<suite>_nll.yaml``: a ``loglikelihood`` task over the reference completion
  (``target_delimiter: ""``: the completion follows the prompt directly, as in our scoring);
* ``utils.py``: imports the scorer from ``selfimprove`` (it must be installed where lm-eval
  runs, and the suite must resolve there: a built-in name or the task file's path).

Run it as an instruct model is run here, with the chat template::

    HF_HUB_OFFLINE=1 lm_eval --model hf --model_args pretrained=<model folder>,dtype=float32 \\
      --include_path DIR --tasks selfimprove_<suite> --apply_chat_template --batch_size 8

What matches ours (``tests/test_interop.py`` checks both on the embedded model): per-item
loglikelihood of the reference (1e-4 nats, fp32) — once one known convention is accounted
for: lm-eval moves the context's trailing whitespace into the continuation, so its number
also includes ``log p("\\n")`` of the chat template's last newline (about −0.0006 nats on
SmolLM2) — and per-item generate-mode correctness under
the same prompt and greedy decoding, once our engine's ``stop_after_answer_line`` is off
(lm-eval stops only at ``until`` strings and EOS). Only single-turn text prompts and the
``generate`` / ``nll`` modes export; anything else is refused with a message.

``selfimprove suites export NAME --format inspect -o DIR`` writes an inspect_ai task:

* ``<suite>.jsonl``: inspect ``Sample`` fields ``id``, ``input``, ``target`` and ``metadata``
  (``sample_json``, ``category``, ``suite``, ``source``);
* ``selfimprove_<suite>.py``: a ``@task`` (``json_dataset`` → ``generate()`` → a scorer that
  calls **our** validator through :func:`score_reply`; metrics ``accuracy``, ``stderr``), with
  ``max_tokens`` = the task's cap. Run it greedily (inspect's ``hf`` provider samples unless
  told not to), from inside ``DIR`` (inspect 0.3.285 rejects an absolute task path)::

    cd DIR && HF_HUB_OFFLINE=1 inspect eval selfimprove_<suite>.py --model hf/local \\
      -M model_path=<model folder> -M do_sample=false -M device=cpu -M dtype=float32

Only ``generate``-mode, single-turn suites export (inspect has no loglikelihood scoring).
``tests/test_interop.py`` checks per-item replies and correctness against ours.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from selfimprove.errors import TaskError
from selfimprove.tasks.base import Sample, Task

if TYPE_CHECKING:
    from selfimprove.tasks.suites import Suite

UTILS_PY = '''"""Scoring for tasks written by `selfimprove suites export --format lm-eval`.

Needs `selfimprove` installed in this environment: items are scored by its validators.
"""

from selfimprove.tasks.interop import process_results  # noqa: F401
'''


def _doc(
    suite: Suite, source: str, task: Task, s: Sample, *, tool: str = "lm-eval"
) -> dict[str, Any]:
    modes = ("generate", "nll") if tool == "lm-eval" else ("generate",)
    if not isinstance(s.input, str):
        raise TaskError(
            f"{suite.name}/{s.id}: a multi-turn chat input has no {tool} export yet "
            "(the exported prompt is one user turn).\nFix: export a suite with plain-text "
            "prompts, or use --format jsonl."
        )
    if task.mode not in modes:
        raise TaskError(
            f"{suite.name}/{task.category}: mode {task.mode!r} has no {tool} export yet "
            f"({' and '.join(modes)} do).\nFix: use --format jsonl for this suite."
        )
    # the Sample travels as one JSON string: `datasets` would unify the per-category
    # metadata dicts into one Arrow struct (adding null keys, changing what validators read)
    return {
        "id": s.id,
        "input": s.input,
        "target": s.target,
        "reference": task.reference(s),
        "category": s.category,
        "suite": suite.name,
        "source": source,
        "mode": task.mode,
        "sample_json": s.model_dump_json(),
    }


def lm_eval_task_names(suite: str) -> tuple[str, str]:
    """``(generate task, loglikelihood task)`` names of an exported suite."""
    return f"selfimprove_{suite}", f"selfimprove_{suite}_nll"


def export_lm_eval(
    suite: Suite,
    source: str,
    items: Sequence[tuple[Task, Sample]],
    folder: str | Path,
    *,
    max_new_tokens: int,
) -> list[Path]:
    """Write the lm-eval task folder for one suite (see the module docstring); returns paths.

    Args:
        source: what resolves the suite where lm-eval runs (built-in name or task-file path).
        items: ``(task, sample)`` pairs to export.
        max_new_tokens: the generation cap where a task sets none.
    """
    from selfimprove.store import atomic_write_text

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    docs = [_doc(suite, source, t, s) for t, s in items]
    data = (out / f"{suite.name}.jsonl").resolve()
    atomic_write_text(data, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    caps = {t.max_new_tokens or max_new_tokens for t, _ in items if t.mode == "generate"}
    gen_name, nll_name = lm_eval_task_names(suite.name)
    common = {
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "doc_to_text": "{{input}}",
        "metadata": {"version": 1.0, "exported_by": "selfimprove"},
    }
    gen = {
        "task": gen_name,
        **common,
        "output_type": "generate_until",
        "doc_to_target": "{{target}}",
        "generation_kwargs": {
            "until": [],
            "max_gen_toks": max(caps) if caps else max_new_tokens,
            "do_sample": False,
            "temperature": 0.0,
        },
        "process_results": "__FUNCTION__",
        "metric_list": [
            {"metric": m, "aggregation": "mean", "higher_is_better": True}
            for m in ("acc", "format_ok")
        ],
    }
    nll = {
        "task": nll_name,
        **common,
        "output_type": "loglikelihood",
        "doc_to_target": "{{reference}}",
        "target_delimiter": "",
        "metric_list": [{"metric": "perplexity"}, {"metric": "acc"}],
    }
    paths = [data]
    for name, cfg in ((gen_name, gen), (nll_name, nll)):
        text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
        # lm-eval's YAML loader reads `!function utils.process_results` as a callable
        text = text.replace("'__FUNCTION__'", "!function utils.process_results")
        text = text.replace("__FUNCTION__", "!function utils.process_results")
        p = out / f"{name}.yaml"
        atomic_write_text(p, text)
        paths.append(p)
    atomic_write_text(out / "utils.py", UTILS_PY)
    paths.append(out / "utils.py")
    return paths


_TASKS: dict[tuple[str, str], Task] = {}


def _task_for(doc: dict[str, Any]) -> Task:
    key = (str(doc["source"]), str(doc["category"]))
    if key not in _TASKS:
        from selfimprove.evaluate import resolve_suites

        (suite,) = resolve_suites([key[0]])
        for t in suite.tasks:
            _TASKS[(key[0], t.category)] = t
    return _TASKS[key]


def process_results(doc: dict[str, Any], results: Sequence[Any]) -> dict[str, float]:
    """lm-eval ``process_results`` hook: score the generated reply with our validator."""
    sample = Sample.model_validate_json(doc["sample_json"])
    reply = results[0] if isinstance(results[0], str) else str(results[0][0])
    sc = _task_for(doc).score(reply, sample)
    return {"acc": float(sc.correct), "format_ok": float(sc.format_ok)}


def score_reply(metadata: dict[str, Any], reply: str) -> tuple[bool, bool]:
    """``(correct, format_ok)`` of ``reply`` under our validator; ``metadata`` as exported."""
    sample = Sample.model_validate_json(metadata["sample_json"])
    sc = _task_for(metadata).score(reply, sample)
    return bool(sc.correct), bool(sc.format_ok)


INSPECT_TASK_PY = '''"""inspect_ai task written by `selfimprove suites export --format inspect`.

Items are scored by selfimprove's own validators (it must be installed here). Run greedily,
from this folder (inspect rejects an absolute task path):

    HF_HUB_OFFLINE=1 inspect eval {file} --model hf/local \\
      -M model_path=MODEL_DIR -M do_sample=false -M device=cpu -M dtype=float32
"""

from pathlib import Path

from inspect_ai import Task, task
from inspect_ai.dataset import json_dataset
from inspect_ai.model import GenerateConfig
from inspect_ai.scorer import CORRECT, INCORRECT, Score, Target, accuracy, scorer, stderr
from inspect_ai.solver import TaskState, generate

from selfimprove.tasks.interop import score_reply

DATA = Path(__file__).with_name({data!r})


@scorer(metrics=[accuracy(), stderr()])
def selfimprove_validator():
    async def score(state: TaskState, target: Target) -> Score:
        reply = state.output.completion
        correct, format_ok = score_reply(state.metadata, reply)
        return Score(
            value=CORRECT if correct else INCORRECT,
            answer=reply,
            metadata={{"format_ok": format_ok}},
        )

    return score


@task
def {name}():
    return Task(
        dataset=json_dataset(str(DATA)),
        solver=generate(),
        scorer=selfimprove_validator(),
        config=GenerateConfig(max_tokens={cap}),
    )
'''


def inspect_task_name(suite: str) -> str:
    """Name of the ``@task`` (and its file's stem) of an exported suite."""
    return f"selfimprove_{suite}"


def export_inspect(
    suite: Suite,
    source: str,
    items: Sequence[tuple[Task, Sample]],
    folder: str | Path,
    *,
    max_new_tokens: int,
) -> list[Path]:
    """Write the inspect_ai task folder for one suite (see the module docstring); returns paths."""
    from selfimprove.store import atomic_write_text

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for t, s in items:
        d = _doc(suite, source, t, s, tool="inspect")
        meta = {k: d[k] for k in ("sample_json", "category", "suite", "source")}
        rows.append({"id": d["id"], "input": d["input"], "target": d["target"], "metadata": meta})
    data = out / f"{suite.name}.jsonl"
    atomic_write_text(data, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    caps = {t.max_new_tokens or max_new_tokens for t, _ in items}
    name = inspect_task_name(suite.name)
    py = out / f"{name}.py"
    text = INSPECT_TASK_PY.format(
        file=py.name, data=data.name, name=name, cap=max(caps) if caps else max_new_tokens
    )
    atomic_write_text(py, text)
    return [data, py]
