"""Shared fixtures: tiny random models (seconds) and the real embedded model (marked slow)."""

from __future__ import annotations

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
