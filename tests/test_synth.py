"""Targeted data: templated draws, model-written variations, STaR, self-critique, filters."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from selfimprove.synth import (
    SelfDataConfig,
    find_task,
    parse_variation,
    random_control_samples,
    self_generated_data,
    templated_variations,
)
from selfimprove.tasks.never_train import NeverTrainRegistry


def _sample(suite: str, cat: str, seed: int = 0):
    task = find_task(suite, cat)
    return task, task.samples(1, seed=seed)[0]


@pytest.mark.parametrize(
    ("suite", "cat", "question", "target"),
    [
        ("arithmetic", "add_2d", "What is 23 + 45?", "68"),
        ("arithmetic", "mul_1d", "Sure! What is 7 x 8?", "56"),
        ("arithmetic", "sub_2d", "What is 12 - 30?", "-18"),
        (
            "counting",
            "count_letters",
            "How many times does the letter 'r' appear in 'strawberry'?",
            "3",
        ),
        ("letters", "reverse_word", "Spell the word 'planet' backwards.", "tenalp"),
        (
            "word_sort",
            "word_sort_3",
            "Sort the following words alphabetically: pear, apple, fig.",
            "apple fig pear",
        ),
    ],
)
def test_parse_variation_solves_model_written_questions(suite, cat, question, target):
    task, src = _sample(suite, cat)
    v = parse_variation(task, src, question, random.Random(0))
    assert v is not None and v.target == target
    assert task.score(task.reference(v), v).correct  # gold passes the family's validator
    assert (
        v.metadata["source"] == "model-written" and v.metadata["family"] == src.metadata["family"]
    )


@pytest.mark.parametrize(
    ("suite", "cat", "question"),
    [
        ("arithmetic", "add_2d", "What is the capital of France?"),
        ("arithmetic", "add_2d", "What is 7 / 0?"),
        ("arithmetic", "add_2d", "What is 7 / 2?"),  # not an integer: no verified gold
        ("counting", "count_letters", "What is 3 + 4?"),  # wrong family
        ("logic", "logic_boolean", "Is True and False True or False?"),  # no parser
    ],
)
def test_parse_variation_drops_what_it_cannot_verify(suite, cat, question):
    task, src = _sample(suite, cat)
    assert parse_variation(task, src, question, random.Random(0)) is None


def test_templated_draws_skip_eval_items_and_duplicates():
    task = find_task("arithmetic", "add_1d")  # only 100 distinct problems
    registry = NeverTrainRegistry()
    registry.add(task.samples(60, seed=0), source="eval")
    out, funnel = templated_variations(
        [("arithmetic", "add_1d")], 30, seed_key="t", registry=registry
    )
    assert len(out) == 30 and funnel.kept == 30
    assert funnel.dropped_eval_overlap > 0 and funnel.drawn >= 30 + funnel.dropped_eval_overlap
    assert all(s not in registry for _su, _t, s in out)
    assert len({s.input_hash() for _su, _t, s in out}) == 30
    assert {su for su, _t, _s in out} == {"arithmetic"}


def test_random_control_spans_categories_and_is_seeded():
    reg = NeverTrainRegistry()
    a, fa = random_control_samples(64, seed_key="x", registry=reg, suites=["arithmetic", "logic"])
    b, _ = random_control_samples(64, seed_key="x", registry=reg, suites=["arithmetic", "logic"])
    assert [s.id for *_, s in a] == [s.id for *_, s in b]
    assert len({t.category for _su, t, _s in a}) >= 6 and {su for su, *_ in a} == {
        "arithmetic",
        "logic",
    }
    assert fa.kept == 64


@dataclass
class _G:
    text: str


@dataclass
class _NLL:
    mean: float


class ScriptedEngine:
    """Answers by rule, to test the pipeline's bookkeeping without a model's randomness."""

    def __init__(self) -> None:
        self.calls: list[list] = []

    def generate(self, prompts, **kw):
        self.calls.append(list(prompts))
        outs = []
        for p in prompts:
            text = p if isinstance(p, str) else p[-1]["content"]
            if "Hint: the correct answer is" in text:
                ans = text.split("Hint: the correct answer is ")[1].split(".")[0]
                outs.append(_G(f"Because of the rules.\nAnswer: {ans}"))
            elif "A reply to check" in text:
                outs.append(_G("The reply is wrong.\nCorrected reply: Answer: 10"))
            elif "Write one new question" in text:
                outs.append(_G("What is 40 + 2?"))
            elif "What is 4 + 6?" in text:
                outs.append(_G("Answer: 10"))  # solved by STaR
            else:
                outs.append(_G("Answer: 1"))  # wrong
        return outs

    def continuation_nll(self, prompts, completions, batch_size=32):
        return [_NLL(2.0 if "rules" in c else 0.5) for c in completions]


def test_self_generated_pipeline_keeps_only_verified_examples():
    task = find_task("arithmetic", "add_1d")
    from selfimprove.tasks.base import Sample

    def mk(a, b):
        return Sample(
            id=f"t/{a}{b}",
            input=f"What is {a} + {b}?\nFinish your reply with a final line of the form 'Answer: <answer>'.",
            target=str(a + b),
            metadata={
                "category": "add_1d",
                "family": "arithmetic",
                "validator": "numeric",
                "numeric": a + b,
            },
        )

    pool = [
        ("arithmetic", task, mk(4, 6)),
        ("arithmetic", task, mk(3, 7)),
        ("arithmetic", task, mk(2, 2)),
    ]
    cfg = SelfDataConfig(star_k=2)
    eng = ScriptedEngine()
    kept, funnel = self_generated_data(
        eng, pool, 10, cfg, seed=0, registry=NeverTrainRegistry(), seen=set()
    )
    by = {(k.source, k.id): k for k in kept}
    # STaR solved 4+6 directly
    assert ("star", "t/46") in by and by[("star", "t/46")].completion == "Answer: 10"
    # critique revision "Answer: 10" is correct for 3+7 only, and it carries the rejected reply
    assert ("critique", "t/37") in by and by[("critique", "t/37")].rejected == "Answer: 1"
    assert ("critique", "t/22") not in by
    # rationalized replies are trained on the ORIGINAL prompt, never the hint
    rat = [k for k in kept if k.source == "rationalized"]
    assert {k.id for k in rat} == {"t/37", "t/22"}
    assert all("Hint" not in k.prompt for k in rat)
    # variations: model wrote "What is 40 + 2?" for both failures; gold 42 from our solver,
    # the second copy is a near-duplicate
    var = [k for k in kept if k.source == "variation"]
    assert len(var) == 1 and var[0].completion == "Answer: 42"
    assert funnel["dropped_duplicate"] == 1
    assert funnel["star_verified"] == 1 and funnel["critique_verified"] == 1
    assert funnel["kept"] == len(kept) == 5


def test_self_generated_filters_perplexity_and_never_train():
    task = find_task("arithmetic", "add_1d")
    pool = [("arithmetic", task, s) for s in task.samples(3, seed=5)]
    reg = NeverTrainRegistry()
    reg.add(
        ["What is 40 + 2?\nFinish your reply with a final line of the form 'Answer: <answer>'."],
        "eval",
    )
    cfg = SelfDataConfig(star_k=1, ppl_max=5.0, critique=False)
    kept, funnel = self_generated_data(
        ScriptedEngine(), pool, 10, cfg, seed=0, registry=reg, seen=set()
    )
    # rationalized replies ("Because of the rules") have perplexity e^2 ≈ 7.4 > 5: dropped
    assert not [k for k in kept if k.source == "rationalized"]
    assert funnel["dropped_perplexity"] == funnel["rationalize_verified"] > 0
    # the model-written variation equals a registered evaluation item: dropped
    assert not [k for k in kept if k.source == "variation"]
    assert funnel["dropped_eval_overlap"] >= 1


class _PlantedAnswers:
    """The tiny model's engine with known-correct STaR replies planted: the first sample of
    items 0-2 is replaced by the gold answer (the tiny random model never answers right, so
    without plants every check below would run over an empty list)."""

    def __init__(self, engine, pool, planted=(0, 1, 2)):
        self.engine, self.pool, self.planted, self.calls = engine, pool, set(planted), 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, prompts, **kw):
        import dataclasses

        outs = self.engine.generate(prompts, **kw)
        self.calls += 1
        if self.calls == 1:  # STaR: star_k consecutive samples per pool item
            k = len(prompts) // len(self.pool)
            for i in self.planted:
                gold = f"Answer: {self.pool[i][2].target}"
                outs[i * k] = dataclasses.replace(outs[i * k], text=gold)
        return outs


def test_self_generated_respects_budget_on_a_real_tiny_model(tiny_llama):
    """Only verified replies are kept, at most the budget, with the real tiny model's
    perplexity filter and generations around three planted correct replies."""
    task = find_task("arithmetic", "add_1d")
    pool = [("arithmetic", task, s) for s in task.samples(4, seed=3)]
    engine = _PlantedAnswers(tiny_llama, pool)
    cfg = SelfDataConfig(star_k=2, max_new_tokens=8, ppl_max=1e12, critique=False)
    kept, funnel = self_generated_data(
        engine, pool, 2, cfg, seed=0, registry=NeverTrainRegistry(), seen=set()
    )
    assert funnel["star_sampled"] == 8 and funnel["star_verified"] == 3
    assert len(kept) == 2  # three verified, budget two
    by_id = {s.id: s for *_, s in pool}
    planted = {pool[i][2].id for i in engine.planted}
    assert {k.id for k in kept} <= planted and all(k.source == "star" for k in kept)
    for k in kept:
        assert task.score(k.completion, by_id[k.id]).correct
    # the same run with a budget of 8 keeps all three verified replies and nothing else
    engine = _PlantedAnswers(tiny_llama, pool)
    kept8, _ = self_generated_data(
        engine, pool, 8, cfg.model_copy(update={"rationalize": False, "variations": False}),
        seed=0, registry=NeverTrainRegistry(), seen=set(),
    )  # fmt: skip
    assert sorted(k.id for k in kept8) == sorted(planted)


def test_near_duplicate_key_folds_every_symbol_but_answer_normalisation_keeps_some():
    """Two rules on purpose: dedup treats rows differing only in symbols as one example;
    answer comparison (tasks.validators.normalize_text) keeps "°" apart."""
    from selfimprove.synth.self_generated import near_duplicate_key
    from selfimprove.tasks.validators import normalize_text

    assert near_duplicate_key("  Add 2+3!\n Answer: 5 ") == "add 2 3 answer 5"
    assert near_duplicate_key("snake_case — ok") == "snake case ok"
    assert near_duplicate_key("5 °C") == near_duplicate_key("5 C") == "5 c"
    assert normalize_text("5 °C") == "5 °c" != normalize_text("5 C")
    assert normalize_text(" The  Cat!") == near_duplicate_key(" The  Cat!") == "the cat"
