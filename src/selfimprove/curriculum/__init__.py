"""Staged post-training of a base model (source 003): ``selfimprove curriculum``.

Modules: :mod:`~selfimprove.curriculum.config` (the ``curriculum:`` section, which stages
exist), :mod:`~selfimprove.curriculum.stages` (each stage's training pool and held-out items),
:mod:`~selfimprove.curriculum.run` (phases, gate, resume), :mod:`~selfimprove.curriculum.report`
(HTML). Built: stage 1 (explicit instructions) and stage 2 (implicit instructions); stages
3-6 are refused with a clear message until they exist.
"""

from selfimprove.curriculum.config import (
    BUILT_STAGES,
    PLANNED_STAGES,
    CurriculumConfig,
    check_stages,
    parse_stages,
)


def run_curriculum(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See :func:`selfimprove.curriculum.run.run_curriculum` (imported lazily: torch)."""
    from selfimprove.curriculum.run import run_curriculum as _run

    return _run(*args, **kwargs)


__all__ = [
    "BUILT_STAGES",
    "PLANNED_STAGES",
    "CurriculumConfig",
    "check_stages",
    "parse_stages",
    "run_curriculum",
]
