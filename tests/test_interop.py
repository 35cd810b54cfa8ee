"""An exported suite runs in an unmodified lm-eval, offline, on the embedded model, and its
numbers agree with ours item by item: reference loglikelihood to 1e-4 nats (fp32) and
generate-mode correctness under the same prompt and greedy decoding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import assert_clean_error, run_cli

pytestmark = pytest.mark.slow
pytest.importorskip("lm_eval", reason="lm-eval is installed by scripts/install.sh")


def _lm_eval(tmp: Path, model_dir: Path, tasks: str) -> dict[str, list[dict]]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp / "hf-datasets"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    out = tmp / "lm-eval-out"
    cmd = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={model_dir},dtype=float32",
        "--include_path",
        str(tmp / "task"),
        "--tasks",
        tasks,
        "--apply_chat_template",
        "--batch_size",
        "4",
        "--log_samples",
        "--output_path",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got: dict[str, list[dict]] = {}
    for f in out.rglob("samples_*.jsonl"):
        task = f.name[len("samples_") :].rsplit("_", 1)[0]
        got[task] = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    return got


def test_lm_eval_on_exported_suite_agrees_with_ours(tmp_path: Path) -> None:
    from selfimprove.engine import Engine
    from selfimprove.models import load_model
    from selfimprove.runtime import resolve_runtime
    from selfimprove.tasks.suites import get_suite

    res = run_cli(
        "suites",
        "export",
        "arithmetic",
        "--format",
        "lm-eval",
        "-o",
        tmp_path / "task",
        "-n",
        "16",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    docs = [
        json.loads(x) for x in (tmp_path / "task" / "arithmetic.jsonl").read_text().splitlines()
    ]
    assert len(docs) == 16
    cap = yaml.load(
        (tmp_path / "task" / "selfimprove_arithmetic.yaml").read_text().replace("!function", ""),
        Loader=yaml.SafeLoader,
    )["generation_kwargs"]["max_gen_toks"]

    rt = resolve_runtime(2, "fp32")
    loaded = load_model("embedded")
    from selfimprove.models import embedded_cache_dir

    model_dir = embedded_cache_dir()  # the converted safetensors folder load_model reads
    assert (model_dir / "model.safetensors").is_file()
    eng = Engine(loaded, runtime=rt)
    prompts = [d["input"] for d in docs]
    ours_ll = [-s.total for s in eng.continuation_nll(prompts, [d["reference"] for d in docs])]
    gens = eng.generate(prompts, max_new_tokens=cap, stop=(), batch_size=4)
    tasks = {t.category: t for t in get_suite("arithmetic").tasks}
    from selfimprove.tasks.base import Sample

    ours_acc = [
        float(
            tasks[d["category"]].score(g.text, Sample.model_validate_json(d["sample_json"])).correct
        )
        for d, g in zip(docs, gens, strict=True)
    ]

    got = _lm_eval(tmp_path, model_dir, "selfimprove_arithmetic,selfimprove_arithmetic_nll")
    nll = sorted(got["selfimprove_arithmetic_nll"], key=lambda r: r["doc_id"])
    gen = sorted(got["selfimprove_arithmetic"], key=lambda r: r["doc_id"])
    theirs_ll = [float(r["filtered_resps"][0][0]) for r in nll]
    theirs_acc = [float(r["acc"]) for r in gen]
    same_text = sum(r["filtered_resps"][0] == g.text for r, g in zip(gen, gens, strict=True))
    print(
        "\nINTEROP",
        json.dumps(
            {
                "ll_ours": ours_ll,
                "ll_lm_eval": theirs_ll,
                "acc_ours": ours_acc,
                "acc_lm_eval": theirs_acc,
                "identical_replies": same_text,
            }
        ),
    )
    assert [r["doc"]["id"] for r in nll] == [d["id"] for d in docs]
    # lm-eval moves the context's trailing whitespace into the continuation (_encode_pair),
    # so its number also scores the chat template's final "\n" after "assistant"; ours
    # starts after it. Add that one token's log-prob, from our model, and they must agree.
    import torch

    nl = []
    for p in eng.encode_prompts(prompts):
        assert loaded.tokenizer.decode(p[-1:]) == "\n"
        with torch.inference_mode():
            lg = loaded.model(input_ids=torch.tensor([p[:-1]])).logits[0, -1].float()
        nl.append(float(torch.log_softmax(lg, -1)[p[-1]]))
    print("NEWLINE_TERM", json.dumps(nl))
    assert theirs_ll == pytest.approx([a + b for a, b in zip(ours_ll, nl, strict=True)], abs=1e-4)
    assert max(abs(a - b) for a, b in zip(theirs_ll, ours_ll, strict=True)) > 1e-5  # the shift
    assert theirs_acc == ours_acc


def test_inspect_on_exported_suite_agrees_with_ours(tmp_path: Path) -> None:
    pytest.importorskip("inspect_ai", reason="inspect-ai is installed by scripts/install.sh")
    from selfimprove.engine import Engine
    from selfimprove.models import embedded_cache_dir, load_model
    from selfimprove.runtime import resolve_runtime
    from selfimprove.tasks.base import Sample
    from selfimprove.tasks.suites import get_suite

    res = run_cli(
        "suites",
        "export",
        "arithmetic",
        "--format",
        "inspect",
        "-o",
        tmp_path / "t",
        "-n",
        "16",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [json.loads(x) for x in (tmp_path / "t" / "arithmetic.jsonl").read_text().splitlines()]
    assert len(rows) == 16
    model_dir = embedded_cache_dir()
    loaded = load_model("embedded")
    eng = Engine(loaded, runtime=resolve_runtime(2, "fp32"))
    tasks = {t.category: t for t in get_suite("arithmetic").tasks}
    cap = int(
        (tmp_path / "t" / "selfimprove_arithmetic.py")
        .read_text()
        .split("max_tokens=")[1]
        .split(")")[0]
    )
    gens = eng.generate([r["input"] for r in rows], max_new_tokens=cap, stop=(), batch_size=4)
    ours = {
        r["id"]: (
            g.text,
            tasks[r["metadata"]["category"]]
            .score(g.text, Sample.model_validate_json(r["metadata"]["sample_json"]))
            .correct,
        )
        for r, g in zip(rows, gens, strict=True)
    }

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "inspect_ai",
        "eval",
        "selfimprove_arithmetic.py",  # inspect 0.3.285 globs: relative paths only
        "--model",
        "hf/local",
        "-M",
        f"model_path={model_dir}",
        "-M",
        "do_sample=false",
        "-M",
        "device=cpu",
        "-M",
        "dtype=float32",
        "--max-connections",
        "4",
        "--log-format",
        "json",
        "--log-dir",
        str(tmp_path / "logs"),
        "--display",
        "none",
    ]
    r = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=1200, cwd=tmp_path / "t"
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (log_file,) = (tmp_path / "logs").glob("*.json")
    log = json.loads(log_file.read_text())
    assert log["status"] == "success", log.get("error")
    theirs = {
        s["id"]: (s["output"]["choices"][0]["message"]["content"], s["scores"])
        for s in log["samples"]
    }
    assert set(theirs) == set(ours)
    same_text = sum(theirs[k][0] == ours[k][0] for k in ours)
    acc_theirs = {k: next(iter(v[1].values()))["value"] == "C" for k, v in theirs.items()}
    print("\nINSPECT", json.dumps({"identical_replies": same_text, "n": len(ours)}))
    assert same_text == len(ours), {
        k: (theirs[k][0], ours[k][0]) for k in ours if theirs[k][0] != ours[k][0]
    }
    assert acc_theirs == {k: v[1] for k, v in ours.items()}


def test_lm_eval_export_refuses_what_it_cannot_express(tmp_path: Path) -> None:
    res = run_cli(
        "suites", "export", "all", "--format", "lm-eval", "-o", tmp_path / "x", cwd=tmp_path
    )
    assert_clean_error(res, "one suite at a time", code=2)
    res = run_cli(
        "suites", "export", "all", "--format", "inspect", "-o", tmp_path / "y", cwd=tmp_path
    )
    assert_clean_error(res, "--format inspect exports one suite at a time", code=2)
    res = run_cli(
        "suites", "export", "arithmetic", "--format", "csv", "-o", tmp_path / "x", cwd=tmp_path
    )
    assert_clean_error(res, "--format jsonl, lm-eval or inspect", code=2)
