"""Tasks: samples, validators, generators, suites, importers and the never-train registry.

This is the public API of ``selfimprove.tasks``; submodules hold the details.
"""

from selfimprove.tasks.base import (
    ANSWER_INSTRUCTION,
    ChatMessage,
    EvalMode,
    Sample,
    SampleGenerator,
    Score,
    Task,
    Validator,
    dump_jsonl,
    hash_text,
)
from selfimprove.tasks.generators import (
    arithmetic,
    counting,
    dates,
    format_following,
    letters,
    logic,
    tracking,
    units,
    word_sort,
)
from selfimprove.tasks.importers import (
    load_bigbench_task,
    load_jsonl_suite,
    load_openai_evals,
    load_suite_file,
)
from selfimprove.tasks.never_train import NeverTrainRegistry
from selfimprove.tasks.suites import Suite, get_suite, list_suites, suite_names
from selfimprove.tasks.validators import (
    choice_validator,
    date_validator,
    exact_text_validator,
    format_instruction_validator,
    is_refusal,
    numeric_validator,
    refusal_validator,
    strict_answer,
    validator_from_name,
    word_list_validator,
    yes_no_validator,
)

__all__ = [
    "ANSWER_INSTRUCTION",
    "ChatMessage",
    "EvalMode",
    "NeverTrainRegistry",
    "Sample",
    "SampleGenerator",
    "Score",
    "Suite",
    "Task",
    "Validator",
    "arithmetic",
    "choice_validator",
    "counting",
    "date_validator",
    "dates",
    "dump_jsonl",
    "exact_text_validator",
    "format_following",
    "format_instruction_validator",
    "get_suite",
    "hash_text",
    "is_refusal",
    "letters",
    "list_suites",
    "load_bigbench_task",
    "load_jsonl_suite",
    "load_openai_evals",
    "load_suite_file",
    "logic",
    "numeric_validator",
    "refusal_validator",
    "strict_answer",
    "suite_names",
    "tracking",
    "units",
    "validator_from_name",
    "word_list_validator",
    "word_sort",
    "yes_no_validator",
]
