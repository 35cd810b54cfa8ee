"""Never-train registry: planted overlaps fire, clean sets pass, variants still collide."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfimprove.errors import DataError, NeverTrainViolation
from selfimprove.tasks import ANSWER_INSTRUCTION, ChatMessage, NeverTrainRegistry, Sample, get_suite
from selfimprove.tasks.never_train import registry_keys


def _eval_samples() -> list[Sample]:
    return [s for _, s in get_suite("sentinel_math").samples(20, seed=0)]


def _registry() -> NeverTrainRegistry:
    registry = NeverTrainRegistry()
    assert registry.add(_eval_samples(), source="sentinel_math") == 80
    return registry


def test_planted_overlap_fires_and_names_ids() -> None:
    registry = _registry()
    evals = _eval_samples()
    train = [s for _, s in get_suite("arithmetic").samples(20, seed=123)]
    train = [s for s in train if s not in registry]  # chance collisions on tiny 1-digit spaces
    registry.check(train)  # clean: no error
    planted = [evals[3], evals[41]]
    with pytest.raises(NeverTrainViolation) as err:
        registry.check([*train[:30], *planted])
    message = str(err.value)
    assert "2 of 32 training items" in message
    assert evals[3].id in message and evals[41].id in message
    assert "from sentinel_math" in message
    assert "must never be trained on" in message


def test_whitespace_case_and_instruction_variants_collide() -> None:
    registry = NeverTrainRegistry()
    original = Sample(
        id="ev/1",
        input=f"What is 17 + 25?\n{ANSWER_INSTRUCTION}",
        target="42",
    )
    registry.add([original], source="eval")
    variants: list[Sample | str] = [
        Sample(id="tr/1", input="  what is 17   +\n25?\n" + ANSWER_INSTRUCTION.upper(), target="0"),
        Sample(id="tr/2", input="What is 17 + 25?", target="42"),  # no instruction, no target
        Sample(id="tr/3", input="WHAT IS 17 + 25", target="42"),  # trailing "?" dropped
        "what is 17 + 25?",  # raw text
        Sample(  # same question as a chat with another system prompt
            id="tr/4",
            input=[
                ChatMessage(role="system", content="You are a careful tutor."),
                ChatMessage(role="user", content="What is 17 + 25?"),
            ],
            target="42",
        ),
    ]
    for variant in variants:
        assert variant in registry, variant
    with pytest.raises(NeverTrainViolation, match="5 of 5 training items"):
        registry.check(variants)


def test_different_questions_do_not_collide() -> None:
    registry = NeverTrainRegistry()
    registry.add(["What is 17 + 25?"], source="eval")
    for other in ("What is 17 - 25?", "What is 17 + 26?", "What is 7 + 25?"):
        assert other not in registry
    assert 42 not in registry  # type: ignore[operator]
    registry.check(["What is 17 - 25?"])


def test_keys_ignore_target() -> None:
    a = Sample(id="a", input="Spell 'cat' backwards.", target="tac")
    b = Sample(id="b", input="Spell 'cat' backwards.", target="wrong")
    assert registry_keys(a) == registry_keys(b)


def test_save_load_round_trip(tmp_path: Path) -> None:
    registry = _registry()
    path = tmp_path / "never_train.json"
    registry.save(path)
    loaded = NeverTrainRegistry.load(path)
    assert len(loaded) == len(registry) > 0
    sample = _eval_samples()[0]
    assert sample in loaded and loaded.source_of(sample) == "sentinel_math"
    with pytest.raises(NeverTrainViolation):
        loaded.check([sample])


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"abc": "x"}', "SHA-256"),
    ],
)
def test_load_corrupt_registry(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "reg.json"
    path.write_text(content, "utf-8")
    with pytest.raises(DataError, match=fragment):
        NeverTrainRegistry.load(path)
    with pytest.raises(DataError, match="not found"):
        NeverTrainRegistry.load(tmp_path / "missing.json")


def test_many_overlaps_are_truncated_in_message() -> None:
    registry = _registry()
    with pytest.raises(NeverTrainViolation) as err:
        registry.check(_eval_samples())
    assert "80 of 80 training items" in str(err.value)
    assert "and 70 more" in str(err.value)


_CONCURRENT_WRITER = """
import sys, time
from selfimprove.tasks.never_train import NeverTrainRegistry
path, tag, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
while time.time() < start:
    pass
for i in range(100):
    items = [f"question {tag} {i} {j}" for j in range(20)]
    NeverTrainRegistry.register(path, [(items, f"eval:{tag}")])
"""


def test_concurrent_registrations_keep_every_entry(tmp_path):
    """Two processes register into one store at the same time (two runs sharing a store):
    every item of both must be in the file afterwards."""
    import subprocess
    import sys
    import time

    path = tmp_path / "never_train.json"
    start = str(time.time() + 1.5)  # both writers start together
    procs = [
        subprocess.Popen([sys.executable, "-c", _CONCURRENT_WRITER, str(path), tag, start])
        for tag in ("a", "b")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    reg = NeverTrainRegistry.load(path)
    missing = [
        f"question {tag} {i} {j}"
        for tag in ("a", "b")
        for i in range(100)
        for j in range(20)
        if f"question {tag} {i} {j}" not in reg
    ]
    assert missing == [] and len(reg) == 4000
