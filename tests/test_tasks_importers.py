"""Importers on fixture files, including corrupt rows, plus the JSONL round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfimprove.errors import DataError
from selfimprove.tasks import (
    ANSWER_INSTRUCTION,
    dump_jsonl,
    get_suite,
    load_bigbench_task,
    load_jsonl_suite,
    load_openai_evals,
    load_suite_file,
)

FIXTURES = Path(__file__).parent / "fixtures"


# --------------------------------------------------------------------------------------
# BIG-bench
# --------------------------------------------------------------------------------------


def test_bigbench_fixture() -> None:
    path = FIXTURES / "bigbench_task.json"
    suite = load_bigbench_task(path)
    assert suite.name == "toy_bigbench"
    assert suite.description.startswith("A tiny BIG-bench-style task")
    by_mode = {t.mode: t for t in suite.tasks}
    assert set(by_mode) == {"generate", "choices"}
    assert {t.name for t in suite.tasks} == {"toy_bigbench.generate", "toy_bigbench.choices"}
    assert {t.category for t in suite.tasks} == {"toy_bigbench"}

    gen = by_mode["generate"].samples(None)
    assert [s.id for s in gen] == ["toy_bigbench/0", "toy_bigbench/1", "toy_bigbench/2"]
    first = gen[0]
    assert first.input == f"Answer the question.\nQ: What is 2 + 3?\n{ANSWER_INSTRUCTION}"
    assert first.target == "5"
    assert first.metadata["source"] == str(path)
    assert first.metadata["license"] == "unknown (imported)"
    assert first.metadata["category"] == "toy_bigbench"
    sky = gen[1]
    assert sky.target == "blue"
    assert sky.metadata["acceptable_targets"] == ["blue", "light blue"]
    task = by_mode["generate"]
    assert task.score("Answer: Light blue", sky).correct
    assert task.score("Answer: 5", first).correct and task.score("Answer: 5", first).format_ok
    assert not task.score("Answer: 6", first).correct

    mc = by_mode["choices"].samples(None)
    assert [s.id for s in mc] == ["toy_bigbench/3", "toy_bigbench/4"]
    assert mc[0].choices == ["yes", "no"] and mc[0].target == "yes"
    assert mc[1].choices == ["a feather", "a brick", "a leaf"] and mc[1].target == "a brick"
    assert mc[1].input == "Answer the question.\nQ: Which is heaviest?\nA:"
    assert by_mode["choices"].score("Answer: B", mc[1]).correct


def test_bigbench_directory_and_name_fallback(tmp_path: Path) -> None:
    folder = tmp_path / "my_task"
    folder.mkdir()
    (folder / "task.json").write_text(
        json.dumps({"examples": [{"input": "2+2?", "target": "4"}]}), "utf-8"
    )
    suite = load_bigbench_task(folder)
    assert suite.name == "my_task"
    (task,) = suite.tasks
    assert task.name == "my_task" and task.mode == "generate"
    assert load_suite_file(folder).name == "my_task"


def test_bigbench_corrupt_fixture() -> None:
    path = FIXTURES / "bigbench_corrupt.json"
    with pytest.raises(DataError) as err:
        load_bigbench_task(path)
    message = str(err.value)
    assert str(path) in message and "not valid JSON" in message and "line 5" in message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ([1, 2], "top level is list"),
        ({"name": "x"}, "'examples' is missing or empty"),
        ({"name": "x", "examples": []}, "'examples' is missing or empty"),
        ({"examples": ["q"]}, "example 0 (0-based): is str"),
        ({"examples": [{"target": "4"}]}, "example 0 (0-based): 'input' is missing"),
        ({"examples": [{"input": "  ", "target": "4"}]}, "'input' is missing or empty"),
        ({"examples": [{"input": "a", "target": "1"}, {"input": "q"}]}, "example 1 (0-based)"),
        ({"examples": [{"input": "q", "target": []}]}, "'target' must be a non-empty"),
        ({"examples": [{"input": "q", "target": ["a", 3]}]}, "'target' must be a non-empty"),
        ({"examples": [{"input": "q", "target_scores": {}}]}, "'target_scores' must be"),
        ({"examples": [{"input": "q", "target_scores": {"a": "hi"}}]}, "'target_scores' must be"),
        ({"task_prefix": 3, "examples": [{"input": "q", "target": "a"}]}, "'task_prefix' must"),
    ],
)
def test_bigbench_bad_inputs(tmp_path: Path, content: object, fragment: str) -> None:
    path = tmp_path / "task.json"
    path.write_text(json.dumps(content), "utf-8")
    with pytest.raises(DataError) as err:
        load_bigbench_task(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)


def test_missing_files_raise_data_error(tmp_path: Path) -> None:
    for loader in (load_bigbench_task, load_openai_evals, load_jsonl_suite, load_suite_file):
        with pytest.raises(DataError, match="not found"):
            loader(tmp_path / "nope.jsonl")  # type: ignore[operator]
    with pytest.raises(DataError, match="not found"):
        load_bigbench_task(tmp_path)  # a folder without task.json


# --------------------------------------------------------------------------------------
# OpenAI evals
# --------------------------------------------------------------------------------------


def test_openai_evals_fixture() -> None:
    path = FIXTURES / "evals_samples.jsonl"
    suite = load_openai_evals(path)
    assert suite.name == "evals_samples"
    (task,) = suite.tasks
    assert task.category == "evals_samples" and task.mode == "generate"
    samples = task.samples(None)
    assert [s.id for s in samples] == ["evals_samples/0", "evals_samples/1", "evals_samples/2"]
    assert [s.metadata["line"] for s in samples] == [1, 2, 4]  # blank line 3 skipped

    chat = samples[0].messages()
    assert [m.role for m in chat] == ["system", "user"]
    assert chat[1].content == f"What is the capital of France?\n{ANSWER_INSTRUCTION}"
    assert samples[0].target == "Paris"
    assert samples[1].input == f"What is 6 times 7?\n{ANSWER_INSTRUCTION}"
    assert samples[1].metadata["acceptable_targets"] == ["42", "forty-two"]
    few_shot = samples[2].messages()
    assert [m.role for m in few_shot] == ["system", "user", "assistant", "user"]
    assert few_shot[2].content == "cold"

    assert task.score("Answer: paris", samples[0]).correct
    assert task.score("Answer: forty-two", samples[1]).correct
    assert not task.score("Answer: London", samples[0]).correct
    for s in samples:
        assert s.metadata["source"] == str(path)
        assert s.metadata["license"] == "unknown (imported)"

    plain = load_openai_evals(path, name="geo", answer_instruction=False)
    assert plain.name == "geo"
    assert plain.tasks[0].samples(None)[1].input == "What is 6 times 7?"


def test_openai_evals_samples_jsonl_takes_folder_name(tmp_path: Path) -> None:
    folder = tmp_path / "capitals"
    folder.mkdir()
    (folder / "samples.jsonl").write_text('{"input": "Capital of Italy?", "ideal": "Rome"}\n')
    assert load_openai_evals(folder / "samples.jsonl").name == "capitals"


def test_openai_evals_corrupt_fixture() -> None:
    path = FIXTURES / "evals_corrupt.jsonl"
    with pytest.raises(DataError) as err:
        load_openai_evals(path)
    message = str(err.value)
    assert f"{path}, line 2: not valid JSON" in message
    assert '"ideal"' in message  # says what a line should look like


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        (['{"input": "q"}'], "line 1: missing key 'ideal'"),
        (['{"ideal": "a"}'], "line 1: missing key 'input'"),
        (['{"input": "q", "ideal": "a"}', '["q", "a"]'], "line 2: is list"),
        (['{"input": "", "ideal": "a"}'], "'input' is empty"),
        (['{"input": [], "ideal": "a"}'], "non-empty list of messages"),
        (['{"input": [{"role": "robot", "content": "hi"}], "ideal": "a"}'], "role 'robot'"),
        (['{"input": [{"role": "user"}], "ideal": "a"}'], "message 0 must be an object"),
        (['{"input": "q", "ideal": []}'], "'ideal' must be a non-empty"),
        (['{"input": "q", "ideal": ""}'], "'ideal' must be a non-empty"),
        (["", "   "], "no samples"),
    ],
)
def test_openai_evals_bad_rows(tmp_path: Path, lines: list[str], fragment: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    with pytest.raises(DataError) as err:
        load_openai_evals(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)


def test_load_suite_file_dispatch(tmp_path: Path) -> None:
    assert load_suite_file(FIXTURES / "bigbench_task.json").name == "toy_bigbench"
    assert load_suite_file(FIXTURES / "evals_samples.jsonl").name == "evals_samples"
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(DataError, match="cannot tell the format"):
        load_suite_file(odd)
    csv = tmp_path / "data.csv"
    csv.write_text("q,a\n")
    with pytest.raises(DataError, match=r"unsupported file type '\.csv'"):
        load_suite_file(csv)


# --------------------------------------------------------------------------------------
# Our JSONL format
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite_name", ["arithmetic", "dates", "tracking", "sentinel_format"])
def test_jsonl_round_trip_keeps_samples_and_scoring(tmp_path: Path, suite_name: str) -> None:
    pairs = get_suite(suite_name).samples(5, seed=0)
    path = tmp_path / f"{suite_name}.jsonl"
    path.write_text(dump_jsonl([s for _, s in pairs]), "utf-8")
    loaded = load_suite_file(path)
    assert loaded.name == suite_name
    reloaded = {s.id: (t, s) for t, s in loaded.samples(None, seed=0)}
    assert sorted(reloaded) == sorted(s.id for _, s in pairs)
    for task, sample in pairs:
        new_task, new_sample = reloaded[sample.id]
        assert new_sample == sample
        assert new_task.category == task.category and new_task.mode == task.mode
        for output in (f"Answer: {sample.target}", sample.target, "Answer: 0", "I can't."):
            assert new_task.score(output, new_sample) == task.score(output, sample)


def test_jsonl_round_trip_refusal_and_nll(tmp_path: Path) -> None:
    for suite_name in ("benign_control", "general_nll"):
        pairs = get_suite(suite_name).samples(None, seed=0)
        path = tmp_path / f"{suite_name}.jsonl"
        path.write_text(dump_jsonl([s for _, s in pairs]), "utf-8")
        loaded = load_jsonl_suite(path)
        assert {t.mode for t in loaded.tasks} == {t.mode for t, _ in pairs}
        assert len(loaded.samples(None)) == len(pairs)
    benign = load_jsonl_suite(tmp_path / "benign_control.jsonl")
    task, sample = benign.samples(None)[0]
    assert task.score("Sure, here you go.", sample).correct
    assert not task.score("I'm sorry, but I can't help with that.", sample).correct


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        (['{"id": "a", "input": "q"}'], "line 1: invalid sample: field target"),
        (
            [
                '{"id": "a", "input": "q", "target": "1"}',
                '{"id": "a", "input": "r", "target": "2"}',
            ],
            "line 2: duplicate sample id 'a' (first on line 1)",
        ),
        (
            ['{"id": "a", "input": "q", "target": "1", "metadata": {"validator": "nope"}}'],
            "line 1: metadata.validator: unknown validator 'nope'",
        ),
        (
            ['{"id": "a", "input": "q", "target": "1", "metadata": {"mode": "chat"}}'],
            "metadata.mode 'chat'",
        ),
        (
            ['{"id": "a", "input": [{"role": "robot", "content": "x"}], "target": "1"}'],
            "line 1: invalid sample: field input",
        ),
        (['{"id": "a", "input": "q", "target": "1"', ""], "line 1: not valid JSON"),
        ([""], "no samples"),
    ],
)
def test_jsonl_bad_rows(tmp_path: Path, lines: list[str], fragment: str) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    with pytest.raises(DataError) as err:
        load_jsonl_suite(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)
