"""`selfimprove diff`'s printed result stays readable at 80 columns and in a log file, and
a flagged region is described by the statistic that changed, in counts (issue 19 item 9).

Regression: with 8 columns the table collapsed to "…" in every cell when piped, and the
label said only "outputs diverge (N nats/token)" when the refusal test had fired too.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from selfimprove.diff.detect import DiffConfig, DiffCost, DiffResult, RegionResult
from selfimprove.diff.naming import describe_test, headline_tests, label_region
from selfimprove.diff.run import DiffRun
from selfimprove.diff.screen import RegionScreen
from selfimprove.diff.stats import StatTest

REGIONS = [
    "sentinel_math/multiplication_of_two_digits",
    "letters/reverse_word",
    "letters/count_letters",
    "arithmetic/addition",
    "word_sort/alphabetical",
    "logic/syllogism",
    "refusal/harmful_request",
    "format/json_object",
    "general_nll/wikitext",
    "count_words/sentence",
    "instructions/uppercase",
    "qa/capitals",
]


def _t(stat: str, n: int, a: float, b: float, p: float) -> StatTest:
    eff = b - a
    return StatTest(stat=stat, n=n, a_value=a, b_value=b, effect=eff,
                    ci=(eff - 0.1, eff + 0.1), p_value=p, test="t")  # fmt: skip


def _region(name: str, rank: int, tests: list[StatTest], *, flagged: bool = False) -> RegionResult:
    top = min(tests, key=lambda t: t.p_value)
    m = len(tests)
    return RegionResult(
        region=name, n_prompts=24, n_screen=12, n_confirm=12,
        screen=RegionScreen(region=name, n=12, score=0.3 / rank, kl_ab=0.1, kl_ba=0.1,
                            per_position=[], per_prompt=[]),
        screen_rank=rank, allocated=12, tests=tests, p_value=min(1.0, top.p_value * m),
        q_value=min(1.0, top.p_value * m * 3) if not flagged else 0.004,
        flagged=flagged, top_stat=top.stat,
    )  # fmt: skip


@pytest.fixture
def result() -> DiffResult:
    # refusal fired (p=0.002) and the divergence fired harder (p=1e-5): the label must
    # still say what B does, in counts
    refusal = _t("refusal", 12, 0.0, 10 / 12, 0.002)
    diverge = _t("logprob", 12, 0.0, 0.84, 1e-5)
    acc = _t("accuracy", 12, 0.5, 0.0, 0.03)
    flagged = _region("arithmetic/addition", 1, [acc, refusal, diverge], flagged=True)
    flagged.changed_stats = [t.stat for t in headline_tests(flagged.tests, 0.1)]
    label = label_region(["The sum is 12."] * 6, ["I'm sorry, I can't."] * 6,
                         headline_tests(flagged.tests, 0.1))  # fmt: skip
    # six identical pairs give no term at z ≥ 1.96; plant terms to check how they print
    flagged.label = label.model_copy(update={"b_terms": ["sorry", "can't"], "a_terms": ["sum"],
                                             "heldout_n": 6, "heldout_accuracy": 1.0,
                                             "heldout_p": 0.016, "validated": True})  # fmt: skip
    others = [
        _region(n, i + 2, [_t("accuracy", 12, 0.5, 0.5, 1.0), _t("logprob", 12, 0, 0.01, 0.6)])
        for i, n in enumerate(r for r in REGIONS if r != "arithmetic/addition")
    ]
    cost = DiffCost(samples_per_model=160, screen_prefills_per_model=230, screen_greedy_tokens=0,
                    scoring_prefills_per_model=320, seconds=412.0, seconds_screen=30.0,
                    seconds_sample=300.0)  # fmt: skip
    return DiffResult(base="embedded", candidate="embedded+adapter", config=DiffConfig(),
                      regions=[flagged, *others], cost=cost)  # fmt: skip


def test_headline_prefers_the_behavioral_statistic_and_counts(result: DiffResult) -> None:
    r = result.regions[0]
    assert r.changed_stats == ["refusal", "accuracy", "logprob"]  # all three pass p·3 ≤ 0.1
    assert r.label is not None
    assert r.label.text.startswith(
        "B refuses 10/12 vs A 0/12 (p=0.002); B is correct 0/12 vs A 6/12"
    )
    assert "outputs diverge 0.84 nats/token" in r.label.text
    # only statistics whose own Bonferroni-adjusted p passes are named
    assert [t.stat for t in headline_tests(r.tests, 0.01)] == ["refusal", "logprob"]
    # nothing passes on its own: the smallest p-value stands in
    weak = [_t("refusal", 12, 0, 0.25, 0.2), _t("length", 12, 20, 31, 0.1)]
    assert [t.stat for t in headline_tests(weak, 0.05)] == ["length"]
    assert describe_test(weak[1]) == "B 31 vs A 20 tokens on average (p=0.1)"


@pytest.mark.parametrize("width", [80, 120])
def test_printed_result_is_readable_at_80_columns(
    result: DiffResult, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, width: int
) -> None:
    import selfimprove.cli.diff as cli_diff

    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=False, color_system=None)
    monkeypatch.setattr(cli_diff, "console", console)
    run = DiffRun(result=result, run_id="20261203-000000-abcdef", run_dir=tmp_path,
                  report=tmp_path / "diff_report.html")  # fmt: skip
    cli_diff._print_result(run)
    out = buf.getvalue()
    lines = out.splitlines()
    assert max(len(x) for x in lines) <= width, out
    table = out[: out.index("region(s) changed")]
    assert "…" not in table, out  # no cell collapsed
    # every shown region's full name is in the table's first column (folded, never cut)
    col = "".join(re.split(r"\s{2,}", x.strip())[0] for x in table.splitlines()[3:])
    for name in REGIONS[:10]:
        assert name in col, (name, out)
    assert "B refuses 10/12 vs A 0/12 (p=0.002)" in " ".join(table.split())
    # the flagged region's details name each statistic with its interval
    detail = out[out.index("region(s) changed") :]
    assert "B refuses 10/12 vs A 0/12 (p=0.002); B − A +0.833 [+0.733, +0.933]" in detail
    assert (
        "words: B says 'sorry', \"can't\"; A says 'sum' (validated: 100% of 6 held-out pairs, "
        "p=0.016)" in " ".join(detail.split())
    ), detail
    assert "2 more regions, none flagged" in " ".join(out.split())
