"""Contamination guard for base models: no chat-template token ever enters their training.

What it does:
  * ``template_token_ids(tokenizer)``: the ids of well-known chat-template tokens (Gemma's
    ``<start_of_turn>``/``<end_of_turn>``, ChatML's ``<|im_start|>``/``<|im_end|>``, Llama 3's
    header and ``<|eot_id|>``, Mistral's ``[INST]``…) that exist as single tokens in this
    vocabulary, minus the tokenizer's own BOS/EOS/pad (checked by the BOS policy instead).
  * ``scan_rows(tokenizer, rows)``: a token-ID scan of tokenized training rows: which rows hold
    a template token, and which break the special-token policy (exactly one BOS, at position
    0, when the tokenizer adds one).
  * ``check_base_rows``: raises :class:`~selfimprove.errors.DataError` naming the first
    offending rows. The trainer calls it for every ``loaded.base`` model, so an instruct-format
    row (a chat template applied by a data generator, a pasted transcript) fails before any
    step is taken.

The other guards live where the text is made: a base tokenizer with a chat template is
refused at load (:mod:`selfimprove.models`), and the engine refuses the ``chat`` format for a
base model (:mod:`selfimprove.engine`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from selfimprove.errors import DataError

#: chat-template tokens of common instruct families (only those in the vocabulary count)
TEMPLATE_TOKENS: tuple[str, ...] = (
    "<start_of_turn>",
    "<end_of_turn>",
    "<|im_start|>",
    "<|im_end|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "[INST]",
    "[/INST]",
)


def template_token_ids(tokenizer: Any) -> dict[int, str]:
    """``{id: token}`` for the template tokens this vocabulary has as single tokens."""
    vocab = tokenizer.get_vocab()
    policy = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return {vocab[t]: t for t in TEMPLATE_TOKENS if t in vocab and vocab[t] not in policy}


def scan_rows(
    tokenizer: Any, rows: Sequence[dict[str, Any]], *, expect_bos: bool | None = None
) -> list[tuple[int, str]]:
    """``(row index, why)`` for every row with a template token or a broken BOS policy.

    ``expect_bos``: rows must start with one BOS (default: when the tokenizer adds one).
    """
    tpl = template_token_ids(tokenizer)
    bos = tokenizer.bos_token_id
    if expect_bos is None:
        expect_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    if not expect_bos:
        bos = None  # no BOS policy to check
    found = []
    for i, row in enumerate(rows):
        ids = list(row["input_ids"])
        hits = sorted({tpl[t] for t in ids if t in tpl})
        if hits:
            found.append((i, f"template token {', '.join(hits)}"))
        elif bos is not None and (not ids or ids[0] != bos or ids.count(bos) != 1):
            found.append((i, f"{ids.count(bos)} BOS token(s), first token {ids[:1]}"))
    return found


def check_base_rows(tokenizer: Any, rows: Sequence[dict[str, Any]], model_name: str) -> None:
    """Refuse training rows for a base model that carry chat-template tokens or extra BOS."""
    found = scan_rows(tokenizer, rows)
    if found:
        shown = "; ".join(f"row {i}: {why}" for i, why in found[:5])
        raise DataError(
            f"{len(found)} of {len(rows)} training rows for the base model {model_name} break "
            f"the contamination guard ({shown}). A base model is trained only on plain text "
            "in a base prompt format: no chat template, one BOS per row.\nFix: regenerate the "
            "data without a chat template (string prompts, prompt_format plain/cue/urial) and "
            "drop rows pasted from instruct-model transcripts."
        )


def check_provenance(
    rows: Sequence[Any], allowed: dict[str, str], *, where: str = "training data"
) -> None:
    """Every row was written by a model of the chain (or by code), never by another model.

    ``rows`` are :class:`~selfimprove.train.TrainExample`; ``allowed`` maps the weight hashes
    of the models that may write data (the base and each accepted stage) to their names. A
    row whose ``generator`` is another hash — an instruct model's reply, text pasted from
    another run — is refused, so a curriculum's data provably comes from the base model and
    what it became (the alignment-handbook CAI recipe trains a base on instruct-model text:
    that is distillation, not bootstrapping). ``generator == ""`` marks text written by code
    (a task generator's reference), which is allowed.

    Raises:
        DataError: naming the first offending rows and their generators.
    """
    bad = [
        (getattr(r, "id", "") or f"row[{i}]", r.generator)
        for i, r in enumerate(rows)
        if r.generator and r.generator not in allowed
    ]
    if bad:
        shown = ", ".join(f"{rid} (generator {gen})" for rid, gen in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(
            f"{where}: {len(bad)} row(s) were written by a model outside this run's chain "
            f"({shown}{more}); allowed writers: "
            + ", ".join(f"{name} ({h})" for h, name in allowed.items())
            + ".\nFix: keep only rows the base model or an accepted stage wrote; rows from "
            "another (e.g. instruct) model would make the result distillation, not "
            "bootstrapping."
        )
