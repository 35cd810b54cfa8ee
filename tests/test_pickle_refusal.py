"""Pickle weights are refused unless allowed (issue 19, item 6): a model folder or an adapter
with only ``*.bin`` files would go through ``torch.load``, which can run code."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_clean_error, run_cli
from selfimprove.errors import ModelLoadError
from selfimprove.models import attach_adapter, load_model
from selfimprove.testing import tiny_model


@pytest.fixture(scope="module")
def pickle_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("m") / "pickled"
    model, tok = tiny_model("tiny-llama", n_layers=1, seed=0)
    d.mkdir()
    model.config.save_pretrained(d)  # transformers 5 saves safetensors only: pickle by hand
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    tok.save_pretrained(d)
    assert not list(d.glob("*.safetensors")) and list(d.glob("*.bin"))
    return d


@pytest.fixture(scope="module")
def pickle_adapter(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    d = tmp_path_factory.mktemp("a") / "adapter"
    model, _tok = tiny_model("tiny-llama", n_layers=2, seed=0)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    peft.save_pretrained(d)
    from safetensors.torch import load_file

    weights = load_file(d / "adapter_model.safetensors")
    (d / "adapter_model.safetensors").unlink()
    torch.save(weights, d / "adapter_model.bin")
    assert (d / "adapter_model.bin").is_file()
    assert not (d / "adapter_model.safetensors").exists()
    return d


def test_a_model_folder_with_only_pickle_weights_is_refused(pickle_model, monkeypatch):
    monkeypatch.delenv("SELFIMPROVE_ALLOW_PICKLE", raising=False)
    with pytest.raises(ModelLoadError, match="pickle") as e:
        load_model(str(pickle_model))
    assert "--allow-pickle" in str(e.value) and "pytorch_model.bin" in str(e.value)
    # allowed explicitly (argument or environment): it loads, through torch.load(weights_only)
    assert load_model(str(pickle_model), allow_pickle=True).n_params > 0
    monkeypatch.setenv("SELFIMPROVE_ALLOW_PICKLE", "1")
    assert load_model(str(pickle_model)).n_params > 0


def test_an_adapter_with_only_adapter_model_bin_is_refused(pickle_adapter, monkeypatch):
    monkeypatch.delenv("SELFIMPROVE_ALLOW_PICKLE", raising=False)
    with pytest.raises(ModelLoadError, match="pickle"):
        attach_adapter(load_model("tiny-llama"), pickle_adapter)
    with pytest.raises(ModelLoadError, match="pickle"):
        load_model("tiny-llama", adapter=pickle_adapter)
    loaded = attach_adapter(load_model("tiny-llama"), pickle_adapter, allow_pickle=True)
    assert "adapter" in loaded.name


def test_adapter_folder_without_weights_is_a_clear_error(pickle_adapter, tmp_path):
    d = tmp_path / "empty_adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text((pickle_adapter / "adapter_config.json").read_text())
    with pytest.raises(ModelLoadError, match="no adapter weights"):
        attach_adapter(load_model("tiny-llama"), d)


def test_cli_refuses_pickle_and_allow_pickle_lets_it_load(pickle_model, tmp_path):
    args = ["eval", "-m", pickle_model, "--suites", "arithmetic", "-n", "2"]
    args += ["--max-new-tokens", "2", "--store", tmp_path / "s"]
    res = run_cli(*args, cwd=tmp_path, env={"SELFIMPROVE_ALLOW_PICKLE": ""})
    assert_clean_error(res, "pickle", "--allow-pickle", code=2)
    assert not (tmp_path / "s" / "runs").exists() or not any((tmp_path / "s" / "runs").iterdir())
    ok = run_cli("--allow-pickle", *args, cwd=tmp_path, env={"SELFIMPROVE_ALLOW_PICKLE": ""})
    assert ok.returncode == 0, ok.stdout + ok.stderr
