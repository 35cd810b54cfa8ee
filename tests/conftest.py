"""Shared fixtures: tiny random models (seconds) and the real embedded model (marked slow)."""

from __future__ import annotations

import copy

import pytest

from selfimprove.engine import Engine
from selfimprove.models import load_model
from selfimprove.runtime import resolve_runtime


@pytest.fixture(scope="session")
def fp32_runtime():
    return resolve_runtime(2, "fp32")


@pytest.fixture(scope="session")
def tiny_llama(fp32_runtime):
    return Engine(load_model("tiny-llama", n_layers=2, seed=0), runtime=fp32_runtime)


@pytest.fixture(scope="session")
def tiny_gpt2(fp32_runtime):
    return Engine(load_model("tiny-gpt2", n_layers=2, seed=0), runtime=fp32_runtime)


@pytest.fixture(scope="session")
def real_engine():
    """The embedded SmolLM2-135M-Instruct (converted once into the cache)."""
    return Engine(load_model("embedded"), runtime=resolve_runtime(None, "auto"))


# A small, fast loop on the tiny model: 2 rounds x 2 arms, a few items per suite.
_SMALL_LOOP = {
    "model": {"name": "tiny-llama"},
    "runtime": {"threads": 2, "dtype": "fp32"},
    "generation": {"max_new_tokens": 6, "batch_size": 8},
    "loop": {
        "rounds": 2,
        "budget": 12,
        "skill_suites": ["arithmetic", "logic"],
        "sentinel_suites": ["sentinel_math", "general_nll"],
        "eval_n": 8,
        "sentinel_n": 4,
        # 4 items can show non-inferiority only at a margin >= 0.41 (the loop refuses less)
        "gate": {"sentinel_margin": 0.5},
        "behavior_diff": 8,
        "anchor_text": 3,
        "weakness": {"metric": "extracted", "error_threshold": 0.0, "top_k": 2, "min_items": 1},
        "train": {"epochs": 1, "batch_size": 4, "max_length": 128},
        "self_data": {"star_k": 2, "max_new_tokens": 8},
    },
}


@pytest.fixture
def small_loop():
    """Config overrides (a fresh nested dict) for a small loop on tiny-llama."""
    return copy.deepcopy(_SMALL_LOOP)


@pytest.fixture(scope="session")
def full_run(tmp_path_factory):
    """One finished small loop run: ``(store_root, LoopResult)``."""
    from selfimprove.config import load_config
    from selfimprove.loop import run_loop

    store = tmp_path_factory.mktemp("loop") / "s"
    over = copy.deepcopy(_SMALL_LOOP)
    over["store"] = {"root": str(store)}
    return store, run_loop(load_config(None, over))


def run_cli(*args: str, cwd, env: dict | None = None, timeout: int = 300):
    """``selfimprove ARGS`` in a subprocess through the real ``main()`` (CliRunner skips it,
    and with it the error handling a user sees)."""
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", "from selfimprove.cli import main; main()", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def assert_clean_error(res, *needles: str, code: int | None = None) -> str:
    """A user error: non-zero exit (``code`` if given), no traceback, every needle in the
    output (whitespace-normalised, so rich's line wrapping does not matter)."""
    out = res.stdout + res.stderr
    assert res.returncode != 0 if code is None else res.returncode == code, out
    assert "Traceback" not in out, out
    flat = " ".join(out.split())
    for n in needles:
        assert n in flat, out
    return flat
