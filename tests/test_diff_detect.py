"""The detector end to end on tiny random models (seconds).

* The KL screen is exactly 0 for identical models and positive for a perturbed copy.
* Sample splitting never reuses a prompt (split function and the detector's records).
* A model compared with itself flags nothing (common and independent sampling).
* A change confined to one region (input embeddings of tokens only that region's prompts
  contain) is found there and nowhere else.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from selfimprove.diff import (
    DiffConfig,
    Region,
    detect_changes,
    regions_from_jsonl,
    regions_from_suites,
    split_region,
)
from selfimprove.diff.screen import screen_items
from selfimprove.engine import Engine
from selfimprove.errors import DataError
from selfimprove.models import LoadedModel, load_model
from selfimprove.tasks import get_suite


@pytest.fixture(scope="module")
def regions() -> list[Region]:
    return regions_from_suites([get_suite("logic"), get_suite("sentinel_math")], 24, seed=0)


@pytest.fixture(scope="module")
def base(fp32_runtime) -> Engine:
    return Engine(load_model("tiny-llama", n_layers=2, seed=0), runtime=fp32_runtime)


def _copy(engine: Engine, name: str) -> LoadedModel:
    model = copy.deepcopy(engine.model)
    # untie so that editing an input embedding row leaves the output head alone
    if model.lm_head.weight is model.model.embed_tokens.weight:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    return LoadedModel(model, engine.tokenizer, name, f"test:{name}", name)


CFG = DiffConfig(n_per_region=12, budget=60, max_new_tokens=8, batch_size=16)


def test_screen_kl_zero_for_identical_and_positive_for_perturbed(
    base, regions, fp32_runtime
) -> None:
    items = [it for r in regions for it in r.items[:3]]
    same = Engine(_copy(base, "same"), runtime=fp32_runtime)
    kls, cost = screen_items(base, same, items, k=4)
    assert cost.prefills_per_model == len(items)
    assert all(v == 0.0 for d in kls for v in d["kl_ab"] + d["kl_ba"])
    pert = _copy(base, "pert")
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in pert.model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    kls, _ = screen_items(base, Engine(pert, runtime=fp32_runtime), items, k=4)
    assert all(min(d["kl_ab"]) > 0 and min(d["kl_ba"]) > 0 for d in kls)


def test_greedy_reference_when_no_target(base, fp32_runtime, tmp_path: Path) -> None:
    bank = tmp_path / "bank.jsonl"
    bank.write_text(
        "\n".join(json.dumps({"prompt": f"Count to {i}", "region": "r"}) for i in range(4))
    )
    items = regions_from_jsonl(bank)[0].items
    kls, cost = screen_items(base, base, items, k=3)
    assert cost.greedy_tokens > 0 and all(len(d["kl_ab"]) >= 1 for d in kls)


@pytest.mark.parametrize("seed", range(20))
def test_split_is_disjoint_and_covers(regions, seed: int) -> None:
    for r in regions:
        screen, confirm = split_region(r, seed)
        ids_s, ids_c = {i.id for i in screen}, {i.id for i in confirm}
        assert not ids_s & ids_c
        assert ids_s | ids_c == {i.id for i in r.items}
        assert screen and confirm


def test_self_comparison_flags_nothing(base, regions) -> None:
    res = detect_changes(base, base, regions, CFG)
    assert not res.changed
    assert all(r.screen.score == 0.0 for r in res.regions)
    assert res.cost.samples_per_model == 0  # nothing to look at: screening spent no samples
    # forced sampling with independent random numbers: tests see only sampling noise
    cfg = CFG.model_copy(update={"min_per_region": 4, "coupling": "independent"})
    res = detect_changes(base, base, regions, cfg)
    assert res.cost.samples_per_model == 4 * len(regions)
    assert not res.changed
    assert all(r.test("logprob").effect == pytest.approx(0.0, abs=1e-5) for r in res.regions)


def _region_tokens(engine: Engine, region: Region) -> tuple[set[int], set[int]]:
    """(tokens in any prompt or reference of the region, tokens in every prompt)."""
    ids: set[int] = set()
    common: set[int] | None = None
    for it in region.items:
        p = set(engine.encode_prompts([it.prompt])[0])
        common = p if common is None else common & p
        ids.update(p)
        ref = it.reference() or ""
        ids.update(engine.tokenizer(ref, add_special_tokens=False)["input_ids"])
    return ids, common or set()


def test_change_in_one_region_is_found_only_there(base, regions, fp32_runtime) -> None:
    toks = {r.name: _region_tokens(base, r) for r in regions}
    # tokens in every prompt of one region and in no prompt or reference of any other
    unique = {
        n: common - set().union(*(o[0] for m, o in toks.items() if m != n))
        for n, (_, common) in toks.items()
    }
    target = max(unique, key=lambda n: len(unique[n]))
    assert unique[target], "need a token only the target region uses"
    # A random model's next-token distributions are nearly flat; sharpen the head (in both
    # models) so that an input change moves the outputs.
    sharp = _copy(base, "sharp")
    with torch.no_grad():
        sharp.model.lm_head.weight.mul_(30.0)
    a = Engine(sharp, runtime=fp32_runtime)
    pert = _copy(a, "pert")
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        emb = pert.model.model.embed_tokens.weight
        for t in sorted(unique[target]):
            emb[t] += 1.0 * torch.randn(emb.shape[1], generator=gen)
    res = detect_changes(a, Engine(pert, runtime=fp32_runtime), regions, CFG)
    by = {r.region: r for r in res.regions}
    assert by[target].screen_rank == 1
    assert by[target].flagged, by[target]
    assert [r.region for r in res.flagged] == [target]
    for r in res.regions:
        if r.region != target:
            assert r.screen.score == 0.0 and r.allocated == 0 and r.p_value == 1.0
    # the records never test a screening prompt
    for r in res.regions:
        assert not set(r.screen_ids) & set(r.confirm_ids)
    assert by[target].label is not None and by[target].examples
    # the label opens with the statistic that changed, in counts
    from selfimprove.diff.naming import describe_test

    first = by[target].changed_stats[0]
    assert by[target].label.text.startswith(describe_test(by[target].test(first)))


def test_bad_jsonl_raises_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(DataError, match="prompt"):
        regions_from_jsonl(bad)
    with pytest.raises(DataError, match="does not exist"):
        regions_from_jsonl(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("cluster_by", ["embedding", "tfidf"])
def test_jsonl_clusters_without_regions(tmp_path: Path, cluster_by) -> None:
    rows = [{"prompt": f"What is {i} plus {i + 1}?"} for i in range(10)]
    rows += [
        {"prompt": f"Write a poem about the {w} sea"}
        for w in ["blue", "green", "dark", "calm", "wild"] * 2
    ]
    bank = tmp_path / "bank.jsonl"
    bank.write_text("\n".join(json.dumps(r) for r in rows))
    regs = regions_from_jsonl(bank, n_clusters=2, cluster_by=cluster_by)
    assert len(regs) == 2
    groups = [{it.sample.input_text()[:5] for it in r.items} for r in regs]
    assert {"What "} in groups and {"Write"} in groups


def _purity(labels: list[int], truth: list[int]) -> float:
    from collections import Counter

    hit = 0
    for lab in set(labels):
        hit += Counter(t for la, t in zip(labels, truth, strict=True) if la == lab).most_common(1)[
            0
        ][1]
    return hit / len(labels)


def test_embedding_clusters_group_by_meaning_where_tfidf_cannot() -> None:
    """One template, two topics that share no words: only meaning separates them."""
    from selfimprove.diff.regions import cluster_texts, text_vectors
    from selfimprove.embeddings import embed_texts

    animals = ["tiger", "dolphin", "sparrow", "wolf", "elephant", "rabbit", "eagle", "shark"]
    vehicles = ["bicycle", "truck", "helicopter", "tram", "motorcycle", "submarine", "van", "jet"]
    texts = [f"Tell me something about the {w}." for w in animals + vehicles]
    truth = [0] * len(animals) + [1] * len(vehicles)
    emb = embed_texts(texts)
    assert emb.shape == (16, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert np.array_equal(emb, embed_texts(texts))  # deterministic
    pur = {
        by: [_purity(cluster_texts(texts, 2, seed=s, by=by), truth) for s in range(5)]
        for by in ("embedding", "tfidf")
    }
    print(f"\ncluster purity over 5 seeds: {pur}")  # measured: all 1.0 vs 0.5-0.81
    assert pur["embedding"] == [1.0] * 5
    assert sum(pur["tfidf"]) / 5 < 0.9
    # a paraphrase is nearer than a same-template sentence on another topic
    v = text_vectors(
        [
            "How do I bake bread at home?",
            "What is a recipe for homemade bread?",
            "How do I fix a flat tyre at home?",
        ],
        "embedding",
    )
    assert v[0] @ v[1] > v[0] @ v[2]


def test_cli_diff_tiny_models(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from selfimprove.cli import app

    runner = CliRunner()
    store = tmp_path / "store"
    r = runner.invoke(
        app,
        ["diff", "tiny-llama", "tiny-llama", "--suites", "logic", "--n-per-region", "8",
         "--budget", "10", "--max-new-tokens", "6", "--store", str(store)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "No behavior change detected" in r.output
    runs = list((store / "runs").iterdir())
    assert len(runs) == 1
    rows = [json.loads(x) for x in (runs[0] / "diff_regions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and not any(x["flagged"] for x in rows)
    assert "<svg" in (runs[0] / "diff_report.html").read_text()
    r = runner.invoke(
        app, ["diff", "tiny-llama", "--adapter", str(tmp_path / "nope"), "--store", str(store)]
    )
    assert r.exit_code != 0


def test_cli_null_calibration_self_and_two_seed_fine_tunes(tmp_path: Path) -> None:
    """--null MODEL: A vs A, nothing flagged, forced samples everywhere; --null-adapters:
    two LoRAs on the same data with different seeds, compared with each other."""
    from typer.testing import CliRunner

    from selfimprove.cli import app
    from selfimprove.models import load_model
    from selfimprove.runtime import resolve_runtime
    from selfimprove.train import TrainConfig, TrainExample, train_lora

    runner = CliRunner()
    common = ["--suites", "logic", "--n-per-region", "12", "--max-new-tokens", "4",
              "--seeds", "2", "--json", "--threads", "2"]  # fmt: skip
    r = runner.invoke(app, ["diff", "--null", "tiny-llama", *common])
    assert r.exit_code == 0, r.output
    cal = json.loads(r.output[r.output.index("{") :])
    assert cal["seeds"] == [0, 1] and cal["n_flagged_regions"] == [0, 0]
    assert cal["samples_per_model"] == [3 * 6, 3 * 6]  # 3 regions x 6 forced (of 6 held out)
    base = load_model("tiny-llama")
    ex = [TrainExample(prompt=f"Is {i} even?", completion="yes" if i % 2 == 0 else "no")
          for i in range(8)]  # fmt: skip
    dirs = []
    for s in (0, 1):
        d = tmp_path / f"a{s}"
        train_lora(base, ex, TrainConfig(epochs=1, batch_size=4, seed=s), d,
                   runtime=resolve_runtime(2, "fp32"))  # fmt: skip
        dirs.append(str(d))
    r = runner.invoke(app, ["diff", "--null", "tiny-llama", "--null-adapters", ",".join(dirs),
                            *common])  # fmt: skip
    assert r.exit_code == 0, r.output
    cal2 = json.loads(r.output[r.output.index("{") :])
    assert len(cal2["n_flagged_regions"]) == 2 and min(cal2["samples_per_model"]) >= 18
    r = runner.invoke(app, ["diff", "--null", "tiny-llama", "--null-adapters", dirs[0]])
    assert r.exit_code != 0 and "two adapter folders" in str(r.exception or r.output)


def test_adapter_candidate_leaves_base_untouched_and_weights_summary(tmp_path: Path) -> None:
    """base + adapter must not turn A into B (PEFT wraps models in place)."""
    from selfimprove.diff.planted import PlantedConfig, run_planted_benchmark
    from selfimprove.diff.run import load_pair
    from selfimprove.diff.weights import lora_delta_summary, per_layer
    from selfimprove.runtime import resolve_runtime

    cfg = PlantedConfig(
        model="tiny-llama", suites=["letters"], region_by="category",
        planted_region="letters/reverse_word", n_per_region=12, n_plant=8, n_keep=8,
        keep_tokens=4, budget=12, max_new_tokens=4, epochs=1,
    )  # fmt: skip
    bench = run_planted_benchmark(
        cfg, [0], store_root=tmp_path / "s", runtime=resolve_runtime(2, "fp32")
    )
    assert len(bench.rows) == 1 and bench.rows[0].screen_prefills_per_model == 4 * 4
    adir = bench.run_dir / "adapters" / "seed_0"
    a, b = load_pair("tiny-llama", None, str(adir))
    assert not any("lora_" in n for n, _ in a.model.named_modules())
    deltas = lora_delta_summary(b.model)
    assert deltas and all(d.norm > 0 and d.effective_rank >= 1 for d in deltas)
    # the spectrum equals the dense ΔW's singular values
    import peft  # noqa: F401

    mod = dict(b.model.named_modules())["base_model.model." + deltas[0].module]
    key = next(iter(mod.lora_A.keys()))
    dense = mod.scaling[key] * mod.lora_B[key].weight @ mod.lora_A[key].weight
    sv = torch.linalg.svdvals(dense.detach())[: len(deltas[0].singular_values)]
    assert torch.allclose(sv, torch.tensor(deltas[0].singular_values), rtol=1e-4, atol=1e-6)
    assert per_layer(deltas)
    from selfimprove.errors import ModelLoadError

    with pytest.raises(ModelLoadError):
        load_pair("tiny-gpt2", None, str(adir))  # adapter of another base


def test_contrastive_decoding_runs_and_equals_greedy_at_lambda_zero(base) -> None:
    from selfimprove.diff.explore import contrastive_decode

    prompts = ["What is 7 plus 5?"]
    cd = contrastive_decode(base, base, prompts, lam=0.0, beta=0.0, max_new_tokens=5)
    greedy = base.generate(prompts, max_new_tokens=5)
    assert cd[0].exploratory and cd[0].text == greedy[0].text


def test_suite_regions_cover_every_category_evenly() -> None:
    from selfimprove.evaluate import resolve_suites

    suites = resolve_suites(["letters", "logic"])
    regs = regions_from_suites(suites, 10, seed=3, by="suite")
    assert [r.name for r in regs] == ["letters", "logic"]
    letters = regs[0]
    assert len(letters.items) == 10 and all(it.region == "letters" for it in letters.items)
    cats = Counter(it.task.category for it in letters.items)
    assert set(cats) == {t.category for t in suites[0].tasks} and max(cats.values()) <= 3


# ---- run lifecycle and the diff: config section ------------------------------------------------


def test_failed_diff_run_is_marked_failed_with_its_error(
    base, regions, fp32_runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selfimprove.diff import run as diff_run
    from selfimprove.store import RunStore

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("screen exploded")

    monkeypatch.setattr(diff_run, "detect_changes", boom)
    with pytest.raises(RuntimeError, match="screen exploded"):
        diff_run.run_diff(
            base.loaded, base.loaded, regions, CFG, store_root=tmp_path, runtime=fp32_runtime
        )
    (run,) = RunStore(tmp_path).list_runs()
    assert run.kind == "diff" and run.status == "failed"
    assert run.error == "RuntimeError: screen exploded" and run.finished_at is not None


def test_planted_benchmark_whose_model_fails_to_load_is_marked_failed(tmp_path: Path) -> None:
    """The model used to load after the run was created and outside its try: a bad model
    left the run `running` forever."""
    from selfimprove.diff.planted import PlantedConfig, run_planted_benchmark
    from selfimprove.errors import ModelLoadError
    from selfimprove.store import RunStore

    cfg = PlantedConfig(model=str(tmp_path / "no_such_model"), suites=["letters"])
    with pytest.raises(ModelLoadError):
        run_planted_benchmark(cfg, [0], store_root=tmp_path / "s")
    (run,) = RunStore(tmp_path / "s").list_runs()
    assert run.kind == "bench-planted" and run.status == "failed"
    assert run.error is not None and run.error.startswith("ModelLoadError: ")


class _Stop(Exception):
    """Raised by a fake run_diff once it has seen its arguments."""


def _diff_cli_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yaml_text: str, *flags: str
) -> dict:
    """What `selfimprove diff A B FLAGS` passes to run_diff, with `yaml_text` in ./selfimprove.yaml."""
    from typer.testing import CliRunner

    from selfimprove.cli import app
    from selfimprove.diff import run as diff_run

    seen: dict = {}

    def fake_build_regions(*args: object) -> list:
        seen["build_regions"] = args
        return []

    def fake_run_diff(a: object, b: object, regions: object, cfg: DiffConfig, **kw: object):
        seen.update(cfg=cfg, **kw)
        raise _Stop

    monkeypatch.setattr(diff_run, "load_pair", lambda *args: (None, None))
    monkeypatch.setattr(diff_run, "build_regions", fake_build_regions)
    monkeypatch.setattr(diff_run, "run_diff", fake_run_diff)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "selfimprove.yaml").write_text(yaml_text)
    r = CliRunner().invoke(app, ["diff", "tiny-llama", "tiny-llama", *flags])
    assert isinstance(r.exception, _Stop), r.output
    return seen


def test_diff_reads_its_section_of_the_config_file_and_flags_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    yaml_text = (
        "diff:\n  q: 0.05\n  budget: 50\n  kl_margin: 0.2\n  suites: [logic]\n"
        "  regions: suite\n  explore: 2\nstore:\n  root: from_yaml\n"
    )
    seen = _diff_cli_arguments(tmp_path, monkeypatch, yaml_text, "--budget", "7")
    cfg = seen["cfg"]
    assert type(cfg) is DiffConfig  # the run stores the detector's settings only
    assert cfg.q == 0.05 and cfg.kl_margin == 0.2  # from the file
    assert cfg.budget == 7  # the flag wins
    assert cfg.n_per_region == DiffConfig().n_per_region  # neither: the default
    suites, prompts, _n, _seed, by, cluster = seen["build_regions"]
    assert suites == ["logic"] and prompts is None and by == "suite" and cluster == "auto"
    assert seen["explore"] == 2 and seen["store_root"] == "from_yaml"


def test_diff_without_a_config_file_keeps_its_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selfimprove.diff.run_config import DEFAULT_REGION_SUITES
    from selfimprove.store import DEFAULT_ROOT

    seen = _diff_cli_arguments(tmp_path, monkeypatch, "{}\n", "--q", "0.2")
    assert seen["cfg"] == DiffConfig(q=0.2)
    assert seen["build_regions"][0] == DEFAULT_REGION_SUITES
    assert seen["build_regions"][4] == "category"
    assert seen["store_root"] == str(DEFAULT_ROOT) and seen["explore"] == 0


def test_unknown_or_invalid_diff_key_is_a_config_error_naming_it(tmp_path: Path) -> None:
    from selfimprove.config import load_config
    from selfimprove.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("diff:\n  q: 0.05\n  budgte: 3\n")
    with pytest.raises(ConfigError, match=r"diff\.budgte: unknown key"):
        load_config(path)
    path.write_text("diff:\n  fdr: storey\n")
    with pytest.raises(ConfigError, match=r"diff\.fdr"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"(?s)command-line options.*diff\.regions: Input"):
        load_config(None, {"diff": {"regions": "cluster"}})
