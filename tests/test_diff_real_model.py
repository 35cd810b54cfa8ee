"""The detector on the real embedded model (slow; a few minutes on 2 busy cores).

* A-vs-A: the KL screen is exactly 0 everywhere and nothing is flagged; with forced
  sampling from independent random streams (pure sampling noise) nothing is flagged either.
* One planted-change run: a LoRA that refuses ``letters/reverse_word`` is found there, the
  screen ranks it first, and the adaptive design spends fewer samples than the uniform one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from selfimprove.diff import DiffConfig, detect_changes, regions_from_suites
from selfimprove.diff.planted import PlantedConfig, run_planted_benchmark
from selfimprove.tasks import get_suite

pytestmark = pytest.mark.slow


def test_real_model_null_flags_nothing(real_engine) -> None:
    regions = regions_from_suites([get_suite("sentinel_math"), get_suite("refusal")], 8, seed=0)
    res = detect_changes(real_engine, real_engine, regions, DiffConfig(budget=40, max_new_tokens=8))
    assert not res.changed
    assert all(r.screen.score == 0.0 for r in res.regions)
    # forced sampling, independent streams: the tests run on pure sampling noise
    small = regions[:3]
    cfg = DiffConfig(min_per_region=4, coupling="independent", max_new_tokens=8, seed=1)
    res = detect_changes(real_engine, real_engine, small, cfg)
    assert res.cost.samples_per_model == 4 * len(small)
    assert not res.changed


def test_real_model_planted_change_is_found(real_engine, tmp_path: Path) -> None:
    cfg = PlantedConfig()  # the benchmark's defaults: refusals planted on the letters family
    bench = run_planted_benchmark(
        cfg,
        [0],
        store_root=tmp_path / "store",
        runtime=real_engine.runtime,
        base=real_engine.loaded,
    )
    row = bench.rows[0]
    assert row.found, row
    assert row.planted_rank == 1, row  # the KL screen points at the planted region
    assert row.samples_per_model * 3 <= row.uniform_samples_per_model, row
    # The plant leaks (word_sort and arithmetic refusals were measured on fresh prompts), so
    # other flags are re-tested on fresh prompts; at most one may fail to replicate.
    assert row.false_regions <= 1, (row.flagged, row.leaks)
