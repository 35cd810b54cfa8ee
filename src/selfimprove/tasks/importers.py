"""Read suites from local files: BIG-bench ``task.json``, OpenAI-evals ``samples.jsonl``,
and our own JSONL (one ``Sample.model_dump`` per line).

Imported items are evaluation data: register them in a
:class:`~selfimprove.tasks.never_train.NeverTrainRegistry` so they are never trained on.
Every problem with a file raises :class:`~selfimprove.errors.DataError` naming the file, the
line or example, what is wrong and how to fix it. Nothing is downloaded; paths are local.

Conventions of the imported samples:

* ``metadata``: ``category`` = the task name (or file stem), ``source`` = the file path,
  ``license`` = ``"unknown (imported)"``, plus ``validator`` (and ``mode`` when not
  ``generate``) so the samples survive a JSONL round trip.
* Several acceptable answers (a BIG-bench ``target`` list, an evals ``ideal`` list): the
  first is ``Sample.target``, all are in ``metadata["acceptable_targets"]``.
* Generated-answer prompts get ``"\\n" + ANSWER_INSTRUCTION`` appended (to the last user
  turn for chat input) unless ``answer_instruction=False``, so the strict format can be
  measured as on built-in suites.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from selfimprove.errors import DataError, SelfImproveError, TaskError
from selfimprove.tasks.base import ANSWER_INSTRUCTION, ChatMessage, Sample, Task
from selfimprove.tasks.suites import Suite
from selfimprove.tasks.validators import (
    choice_validator,
    exact_text_validator,
    validator_from_name,
)

__all__ = [
    "check_suite_data",
    "load_bigbench_task",
    "load_jsonl_suite",
    "load_openai_evals",
    "load_suite_file",
]

IMPORTED_LICENSE = "unknown (imported)"
_ROLES = ("system", "user", "assistant")
# OpenAI evals encode few-shot turns as system messages with these names.
_EVALS_NAMED_ROLES = {"example_user": "user", "example_assistant": "assistant"}


def _read_text(path: Path, what: str) -> str:
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path to the {what}")
    if not path.is_file():
        raise DataError(f"{path}: is not a file; give the path to the {what}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err}); re-save the file as UTF-8") from err


def _jsonl_rows(path: Path, text: str, example: str) -> Iterator[tuple[int, Any]]:
    """``(line_number, parsed_object)`` for each non-blank line (1-based line numbers)."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}, line {lineno}: not valid JSON ({err.msg} at column {err.colno}); "
                f"each line must be one JSON object like {example}"
            ) from err


def _with_instruction(prompt: str) -> str:
    return f"{prompt}\n{ANSWER_INSTRUCTION}"


def _str_list(value: Any) -> list[str] | None:
    """``value`` as a non-empty list of non-empty strings, or None if it is not one."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        return None
    if not all(isinstance(v, str) and v.strip() for v in items):
        return None
    return list(items)


# --------------------------------------------------------------------------------------
# BIG-bench
# --------------------------------------------------------------------------------------


def _read_bigbench(path: Path) -> tuple[dict[str, Any], list[Any], str, dict[str, str]]:
    """A BIG-bench task.json's object, its examples, its name and its three prefixes."""
    text = _read_text(path, "BIG-bench task.json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            "a BIG-bench task.json is one JSON object with 'name', 'description', 'examples'"
        ) from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level is {type(data).__name__}; expected a JSON object")
    examples = data.get("examples")
    if not isinstance(examples, list) or not examples:
        raise DataError(
            f"{path}: 'examples' is missing or empty; add a list of objects with 'input' and "
            "'target' or 'target_scores'"
        )
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        name = path.parent.name if path.name == "task.json" else path.stem
    prefixes = {}
    for key in ("task_prefix", "example_input_prefix", "example_output_prefix"):
        value = data.get(key, "")
        if not isinstance(value, str):
            raise DataError(f"{path}: '{key}' must be a string, got {type(value).__name__}")
        prefixes[key] = value
    return data, examples, name, prefixes


def load_bigbench_task(path: str | Path, *, answer_instruction: bool = True) -> Suite:
    """A BIG-bench JSON task (``task.json``, or the folder holding it) as a suite.

    Examples with ``target`` (a string or list of acceptable strings) become a ``generate``
    task scored by exact text match; examples with ``target_scores`` (choice -> score)
    become a ``choices`` task whose target is the best-scoring choice. A file with both
    kinds yields two tasks (``<name>.generate`` and ``<name>.choices``) sharing the
    category ``<name>``. ``task_prefix`` and ``example_input_prefix`` are prepended to
    inputs; ``example_output_prefix`` is appended to multiple-choice inputs.

    Raises:
        DataError: Missing file, invalid JSON, or an example without usable fields.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "task.json"
    data, examples, name, prefixes = _read_bigbench(path)
    generate: list[Sample] = []
    choices: list[Sample] = []
    for i, ex in enumerate(examples):
        where = f"{path}, example {i} (0-based)"
        if not isinstance(ex, dict):
            raise DataError(f"{where}: is {type(ex).__name__}; each example must be an object")
        raw_input = ex.get("input")
        if not isinstance(raw_input, str) or not raw_input.strip():
            raise DataError(f"{where}: 'input' is missing or empty; give the question as a string")
        prompt = (prefixes["task_prefix"] + prefixes["example_input_prefix"] + raw_input).strip()
        metadata: dict[str, Any] = {
            "category": name,
            "source": str(path),
            "license": IMPORTED_LICENSE,
            "example_index": i,
        }
        if "target_scores" in ex:
            scores = ex["target_scores"]
            if (
                not isinstance(scores, dict)
                or not scores
                or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in scores.values()
                )
            ):
                raise DataError(
                    f"{where}: 'target_scores' must be a non-empty object mapping each choice "
                    'to a number, e.g. {"yes": 1, "no": 0}'
                )
            options = [str(c) for c in scores]
            best = max(options, key=lambda c: scores[c])  # first of equal maxima
            metadata.update({"validator": "choice", "mode": "choices"})
            choices.append(
                Sample(
                    id=f"{name}/{i}",
                    input=prompt + prefixes["example_output_prefix"],
                    target=best,
                    choices=options,
                    metadata=metadata,
                )
            )
        elif "target" in ex:
            targets = _str_list(ex["target"])
            if targets is None:
                raise DataError(
                    f"{where}: 'target' must be a non-empty string or a non-empty list of "
                    "non-empty strings"
                )
            metadata["validator"] = "exact_text"
            if len(targets) > 1:
                metadata["acceptable_targets"] = targets
            generate.append(
                Sample(
                    id=f"{name}/{i}",
                    input=_with_instruction(prompt) if answer_instruction else prompt,
                    target=targets[0],
                    metadata=metadata,
                )
            )
        else:
            raise DataError(
                f"{where}: has neither 'target' nor 'target_scores'; add one (a string answer "
                "or a choice -> score object)"
            )

    both = bool(generate) and bool(choices)
    tasks = []
    if generate:
        tasks.append(
            Task(
                name=f"{name}.generate" if both else name,
                category=name,
                mode="generate",
                validator=exact_text_validator(),
                dataset=generate,
                description=f"BIG-bench {name} (exact match)",
                params={"source": str(path)},
            )
        )
    if choices:
        tasks.append(
            Task(
                name=f"{name}.choices" if both else name,
                category=name,
                mode="choices",
                validator=choice_validator(),
                dataset=choices,
                description=f"BIG-bench {name} (multiple choice)",
                params={"source": str(path)},
            )
        )
    description = data.get("description")
    return Suite(name, tasks, description if isinstance(description, str) else f"BIG-bench {name}")


# --------------------------------------------------------------------------------------
# OpenAI evals
# --------------------------------------------------------------------------------------


def _evals_messages(value: Any, where: str) -> list[ChatMessage]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'input' must be a string or a non-empty list of messages")
    messages = []
    for j, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
            raise DataError(
                f"{where}: message {j} must be an object with 'role' and string 'content', "
                'e.g. {"role": "user", "content": "..."}'
            )
        role = msg.get("role")
        if role == "system" and msg.get("name") in _EVALS_NAMED_ROLES:
            role = _EVALS_NAMED_ROLES[msg["name"]]
        if role not in _ROLES:
            raise DataError(
                f"{where}: message {j} has role {role!r}; use one of {', '.join(_ROLES)}"
            )
        messages.append(ChatMessage(role=role, content=msg["content"]))
    return messages


def _append_instruction(messages: list[ChatMessage]) -> list[ChatMessage]:
    for j in range(len(messages) - 1, -1, -1):
        if messages[j].role == "user":
            last = messages[j]
            updated = ChatMessage(role="user", content=_with_instruction(last.content))
            return [*messages[:j], updated, *messages[j + 1 :]]
    return [*messages, ChatMessage(role="user", content=ANSWER_INSTRUCTION)]


def load_openai_evals(
    path: str | Path, *, name: str | None = None, answer_instruction: bool = True
) -> Suite:
    """An OpenAI-evals ``samples.jsonl`` as a one-task suite scored by exact text match.

    Each line is ``{"input": <string or chat messages>, "ideal": <string or list>}``.
    Few-shot turns written as ``system`` messages named ``example_user`` /
    ``example_assistant`` become user / assistant turns. The suite and category name is
    ``name``, else the file stem (the parent folder's name for ``samples.jsonl``).

    Raises:
        DataError: Missing file, a line that is not JSON, a missing or empty field, an
            unknown role, or no samples at all.
    """
    path = Path(path)
    text = _read_text(path, "OpenAI-evals samples.jsonl")
    if name is None:
        name = path.parent.name if path.stem == "samples" and path.parent.name else path.stem
    example = '{"input": [{"role": "user", "content": "..."}], "ideal": "..."}'
    samples: list[Sample] = []
    for lineno, row in _jsonl_rows(path, text, example):
        where = f"{path}, line {lineno}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: is {type(row).__name__}; expected an object like {example}")
        for key in ("input", "ideal"):
            if key not in row:
                raise DataError(
                    f"{where}: missing key '{key}'; each line needs 'input' and 'ideal'"
                )
        raw = row["input"]
        prompt: str | list[ChatMessage]
        if isinstance(raw, str):
            if not raw.strip():
                raise DataError(f"{where}: 'input' is empty; give the prompt text")
            prompt = _with_instruction(raw) if answer_instruction else raw
        else:
            messages = _evals_messages(raw, where)
            prompt = _append_instruction(messages) if answer_instruction else messages
        ideals = _str_list(row["ideal"])
        if ideals is None:
            raise DataError(
                f"{where}: 'ideal' must be a non-empty string or a non-empty list of non-empty "
                "strings (the acceptable answers)"
            )
        metadata: dict[str, Any] = {
            "category": name,
            "source": str(path),
            "license": IMPORTED_LICENSE,
            "line": lineno,
            "validator": "exact_text",
        }
        if len(ideals) > 1:
            metadata["acceptable_targets"] = ideals
        samples.append(
            Sample(id=f"{name}/{len(samples)}", input=prompt, target=ideals[0], metadata=metadata)
        )
    if not samples:
        raise DataError(f"{path}: no samples (the file is empty); add one JSON object per line")
    task = Task(
        name=name,
        category=name,
        mode="generate",
        validator=exact_text_validator(),
        dataset=samples,
        description=f"OpenAI evals {name} (exact match)",
        params={"source": str(path)},
    )
    return Suite(name, [task], f"OpenAI evals samples from {path.name}")


# --------------------------------------------------------------------------------------
# Our JSONL format
# --------------------------------------------------------------------------------------


def load_jsonl_suite(path: str | Path, name: str | None = None) -> Suite:
    """A suite from our JSONL format: one ``Sample.model_dump(mode="json")`` per line
    (as written by :func:`~selfimprove.tasks.base.dump_jsonl`).

    Samples are grouped into one dataset task per (category, mode, validator). The mode is
    ``metadata["mode"]`` (default ``generate``); the validator is rebuilt from
    ``metadata["validator"]`` / ``["validator_args"]`` (default: ``choice`` if the sample has
    choices, else ``exact_text``).

    Raises:
        DataError: Missing file, invalid JSON or sample fields, duplicate ids, unknown
            validator or mode, or no samples.
    """
    path = Path(path)
    text = _read_text(path, "JSONL suite")
    name = name or path.stem
    groups: dict[tuple[str, str, str, str], list[Sample]] = {}
    seen: dict[str, int] = {}
    example = '{"id": "...", "input": "...", "target": "...", "metadata": {"category": "..."}}'
    for lineno, row in _jsonl_rows(path, text, example):
        where = f"{path}, line {lineno}"
        try:
            sample = Sample.model_validate(row)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise DataError(
                f"{where}: invalid sample: field {loc}: {first['msg']}; each line must look "
                f"like {example}"
            ) from err
        if sample.id in seen:
            raise DataError(
                f"{where}: duplicate sample id {sample.id!r} (first on line {seen[sample.id]}); "
                "ids must be unique within a suite"
            )
        seen[sample.id] = lineno
        mode = str(sample.metadata.get("mode", "generate"))
        if mode not in ("generate", "choices", "nll"):
            raise DataError(f"{where}: metadata.mode {mode!r} must be generate, choices or nll")
        default_validator = "choice" if sample.choices else "exact_text"
        validator_name = str(sample.metadata.get("validator", default_validator))
        validator_args = sample.metadata.get("validator_args") or {}
        if not isinstance(validator_args, dict):
            raise DataError(f"{where}: metadata.validator_args must be an object")
        try:
            validator_from_name(validator_name, **validator_args)
        except (TaskError, TypeError) as err:
            raise DataError(f"{where}: metadata.validator: {err}") from err
        key = (sample.category, mode, validator_name, json.dumps(validator_args, sort_keys=True))
        groups.setdefault(key, []).append(sample)
    if not groups:
        raise DataError(f"{path}: no samples (the file is empty); add one sample per line")

    per_category: dict[str, int] = {}
    for category, *_ in groups:
        per_category[category] = per_category.get(category, 0) + 1
    tasks = []
    for (category, mode, validator_name, args_json), samples in groups.items():
        task_name = f"{name}.{category}"
        if per_category[category] > 1:
            task_name += f".{mode}.{validator_name}"
        tasks.append(
            Task(
                name=task_name,
                category=category,
                mode=mode,  # type: ignore[arg-type]  # checked above
                validator=validator_from_name(validator_name, **json.loads(args_json)),
                dataset=samples,
                description=f"{category} from {path.name}",
                params={"source": str(path)},
            )
        )
    return Suite(name, tasks, f"samples from {path}")


def check_suite_data(suite: Suite, path: str | Path) -> Suite:
    """Every dataset sample of an imported ``suite`` must be scorable, and its gold answer
    must pass its own validator — checked when the file is read, not after a model loaded.

    Catches, naming the file and sample: ``choices`` mode without choices (or a target that
    is not one of them), a validator that cannot score the sample (a ``format`` validator
    whose ``format_params`` lack ``n``), and a gold answer its validator rejects (a non-numeric
    target for the ``numeric`` validator): such an item could never be solved.

    Raises:
        DataError: naming the file, the sample and the fix.
    """
    for task in suite.tasks:
        for sample in task.dataset or ():
            where = f"{path}: sample {sample.id!r} (category {sample.category!r})"
            if task.mode == "choices":
                if not sample.choices:
                    raise DataError(
                        f"{where}: mode 'choices' needs a non-empty 'choices' list; add the "
                        "options, or drop metadata.mode to score a generated answer"
                    )
                if sample.target not in sample.choices:
                    raise DataError(
                        f"{where}: target {sample.target!r} is not one of its choices "
                        f"{sample.choices!r}; make the target one of them"
                    )
                continue
            if task.mode != "generate":
                continue
            try:
                score = task.score(task.reference(sample), sample)
            except (KeyError, ValueError, TypeError, SelfImproveError) as err:
                detail = f"missing metadata key {err}" if isinstance(err, KeyError) else str(err)
                raise DataError(
                    f"{where}: its validator cannot score it ({detail}); give the metadata "
                    'the validator needs (e.g. format_params {"n": 3} for an n_words format check)'
                ) from None
            if not score.correct:
                raise DataError(
                    f"{where}: the gold answer {sample.target!r} fails its own validator "
                    f"({sample.metadata.get('validator', 'default')}), so no reply could be "
                    "scored correct; fix the target (e.g. a number for 'numeric') or the "
                    "validator"
                )
    return suite


def load_suite_file(path: str | Path, *, name: str | None = None) -> Suite:
    """Load a suite from a file, choosing the reader from its name and content.

    ``task.json`` / ``*.json`` / a folder with ``task.json``: BIG-bench. ``*.jsonl``:
    OpenAI evals if the first row has ``ideal``, our format if it has ``id`` and ``target``.
    ``name`` overrides the suite name of JSONL files (a BIG-bench task keeps its own name).

    Raises:
        DataError: Missing file, unrecognised extension or row layout.
    """
    path = Path(path)
    if path.is_dir() or path.suffix == ".json":
        return check_suite_data(load_bigbench_task(path), path)
    if path.suffix == ".jsonl":
        text = _read_text(path, "suite file")
        first = next(_jsonl_rows(path, text, "{...}"), None)
        if first is None:
            raise DataError(f"{path}: no samples (the file is empty); add one JSON object per line")
        row = first[1]
        if isinstance(row, dict) and "ideal" in row:
            return check_suite_data(load_openai_evals(path, name=name), path)
        if isinstance(row, dict) and "id" in row and "target" in row:
            return check_suite_data(load_jsonl_suite(path, name=name), path)
        raise DataError(
            f"{path}, line {first[0]}: cannot tell the format; OpenAI-evals rows have 'input' "
            "and 'ideal', selfimprove rows have 'id', 'input' and 'target'"
        )
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path")
    raise DataError(
        f"{path}: unsupported file type {path.suffix!r}; use a BIG-bench task.json, an "
        "OpenAI-evals samples.jsonl or a selfimprove .jsonl"
    )
