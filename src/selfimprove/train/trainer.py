"""Confidence-weighted LoRA fine-tuning on CPU (single process or ``torchrun`` DDP).

Method (the weighted loss; its equivalences are tested in tests/test_train.py). Each example ``i`` has a weight
``w_i`` and per-token NLLs ``nll_it`` on its completion tokens (mask ``m_it``). The loss of one
optimizer step is

    loss = Σ_i w_i Σ_t m_it · nll_it / N,      N = Σ_i Σ_t m_it over the *whole* step,

i.e. over every micro-batch of the gradient-accumulation window and, under DDP, over every
process. Normalising each micro-batch by its own token count and dividing by the number of
accumulation steps (the old transformers bug, and what ``loss * weights.mean()`` gives) makes
bs1×GA4 differ from bs4 whenever examples have different lengths. How it is wired into
``transformers.Trainer`` (5.x):

* :meth:`WeightedTrainer.get_batch_samples` prefetches the accumulation window and counts
  ``N`` itself as ``labels[..., 1:] != -100`` (the causal shift: position 0 is never a target),
  summed over processes with ``accelerator.gather``. Counting ourselves (instead of relying on
  ``Trainer._get_num_items_in_batch``) keeps ``N`` right for models whose ``loss_type`` is not
  ``ForCausalLM`` (GPT-2 reports ``None``, so transformers would count unshifted labels) or
  whose forward has no ``**kwargs`` (then transformers counts nothing and passes ``None``).
* :meth:`WeightedTrainer.compute_loss` returns ``Σ w·nll / N`` and the class sets
  ``loss_is_scaled_for_ga = True`` so ``training_step`` does not divide by GA again. DDP
  averages gradients over processes, so under DDP the loss is multiplied by the number of
  processes (the same correction the built-in loss applies).
* The ``weight`` column survives ``remove_unused_columns`` because ``_signature_columns`` is
  extended with it; :class:`WeightedCollator` right-pads and stacks weights into ``(B,)``.
* Packing (``TrainConfig.pack``, default on): the collator concatenates a micro-batch into
  one ``(1, S)`` row with restarting ``position_ids`` (transformers then masks attention
  block-diagonally) and a ``segments`` map; the loss sums token losses per example with it,
  and KL anchors get their reference logits from a packed forward of the anchor tokens only.
  Same examples per step, same ``N``, same loss and gradients as padding (tested to 1e-5 on
  tiny Llama and GPT-2), no compute on pad tokens. :func:`packing_is_exact` checks the
  model before each training run and falls back to padding if it fails.

:func:`train_lora` trains with the :class:`TrainExample` ``weight`` values exactly as given
(0 mutes an example). It does not apply ``TrainConfig.weight_policy`` itself: call
:func:`apply_weight_policy` first (reference NLL under the pre-round model, then
:func:`selfimprove.train.weights.compute_weights`), or compute the weights yourself. Doing both
would apply the policy twice.

What it does not do: choose training data, evaluate, gate, or load adapters for inference
(see :func:`selfimprove.models.attach_adapter`). ``loaded.model`` is never modified: LoRA wraps
a deep copy.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback

from selfimprove.contamination import check_base_rows
from selfimprove.engine import Engine
from selfimprove.errors import ConfigError, DataError
from selfimprove.faults import fault
from selfimprove.gate import check_losses
from selfimprove.models import LoadedModel
from selfimprove.runtime import Runtime, resolve_runtime
from selfimprove.store import publish_dir
from selfimprove.tasks.base import Sample
from selfimprove.train.config import TrainConfig, TrainExample, TrainResult
from selfimprove.train.weights import compute_weights

if TYPE_CHECKING:
    from selfimprove.tasks.never_train import NeverTrainRegistry

__all__ = [
    "LengthGroupedSampler",
    "TokenizedDataset",
    "TrainConfig",
    "TrainExample",
    "TrainResult",
    "WeightedCollator",
    "WeightedTrainer",
    "apply_weight_policy",
    "build_dataset",
    "count_label_tokens",
    "make_trainer",
    "make_training_args",
    "packing_is_exact",
    "train_lora",
    "weighted_causal_lm_loss",
    "wrap_lora",
]

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
ProgressCallbackFn = Callable[[int, int], None]  # (optimizer steps done, total steps)


# ---------------------------------------------------------------------------- data
class TokenizedDataset:
    """Tokenized examples (``input_ids``, ``labels``, ``weight``, ``anchor`` per row)."""

    column_names = ("input_ids", "labels", "weight", "anchor")

    def __init__(self, rows: list[dict[str, Any]], n_dropped: int = 0) -> None:
        self.rows = rows
        self.n_dropped = n_dropped

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]

    @property
    def n_label_tokens(self) -> int:
        """Loss-bearing tokens (shifted: position 0 never counts; weight-0 rows excluded)."""
        return sum(
            sum(1 for x in r["labels"][1:] if x != IGNORE_INDEX)
            for r in self.rows
            if r["weight"] != 0.0
        )


def build_dataset(
    examples: Sequence[TrainExample],
    tokenizer: Any,
    format_prompt: Callable[[Any], str],
    max_length: int,
    *,
    add_special_tokens: bool = False,
) -> TokenizedDataset:
    """Tokenize examples as ``format_prompt(prompt)`` + completion + EOS, loss on completion.

    Prompt and completion are tokenized separately and concatenated, as the engine does for
    generation and teacher-forced scoring, so training sees the token boundary the model sees
    at inference. Labels are ``-100`` on prompt tokens.

    Args:
        examples: the training examples.
        tokenizer: the model's tokenizer (needs an ``eos_token_id``).
        format_prompt: prompt -> exact model text; pass ``Engine(loaded).format_prompt`` so the
            chat template is the one used at evaluation.
        max_length: token budget per example. An over-long prompt loses tokens from its left;
            the completion is never cut. Examples whose completion + EOS needs more than
            ``max_length - 1`` tokens (one context token must remain) are dropped with a warning.
        add_special_tokens: add the tokenizer's special tokens (BOS) to the prompt; the engine
            does this only when it does not use a chat template.

    Raises:
        DataError: the tokenizer has no EOS token.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("The tokenizer has no EOS token; set tokenizer.eos_token before training.")
    rows: list[dict[str, Any]] = []
    dropped: list[str] = []
    for i, ex in enumerate(examples):
        p_ids = list(
            tokenizer(format_prompt(ex.prompt), add_special_tokens=add_special_tokens)["input_ids"]
        )
        c_ids = [*tokenizer(ex.completion, add_special_tokens=False)["input_ids"], int(eos)]
        keep = max_length - len(c_ids)
        if keep < 1:
            dropped.append(ex.id or f"example[{i}]")
            continue
        if len(p_ids) > keep:
            p_ids = p_ids[len(p_ids) - keep :]
        rows.append(
            {
                "input_ids": p_ids + c_ids,
                "labels": [IGNORE_INDEX] * len(p_ids) + c_ids,
                "weight": float(ex.weight),
                "anchor": bool(ex.anchor),
            }
        )
    if dropped:
        log.warning(
            "Dropped %d of %d training examples whose completion does not fit in max_length=%d "
            "tokens (first: %s); raise max_length or shorten them.",
            len(dropped),
            len(examples),
            max_length,
            ", ".join(dropped[:5]),
        )
    return TokenizedDataset(rows, n_dropped=len(dropped))


class WeightedCollator:
    """Batches tokenized rows: right-padded (default) or packed into one row.

    Padded: ``input_ids``/``labels``/``attention_mask`` of shape ``(B, T)``, pad id and
    ``-100`` after each row's end. Right padding needs no position ids: real tokens keep
    positions ``0..len-1``.

    Packed (``pack=True``): the rows concatenated into ``input_ids``/``labels`` of shape
    ``(1, S)``, ``S = Σ len``, with ``position_ids`` restarting at 0 for every row (no
    ``attention_mask``: transformers builds the block-diagonal causal mask from the position
    ids) and ``segments`` ``(1, S)`` = the row index of each token. The first label of every
    row is ``-100``, so no token is predicted across a row boundary and ``labels[..., 1:]``
    counts exactly the targets of the padded layout (the same normaliser ``N``).

    Both add ``weight`` ``(B,)`` (float32) and ``anchor`` ``(B,)`` (bool, see
    :attr:`TrainExample.anchor`). Rows with weight 0 get all labels ``-100``, so a muted
    example does not count in ``N`` either: weight 0 is exactly the same as leaving it out.
    """

    def __init__(self, pad_token_id: int, *, pack: bool = False) -> None:
        self.pad_token_id = int(pad_token_id)
        self.pack = pack

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        weights = torch.tensor([float(f.get("weight", 1.0)) for f in features])  # (B,)
        anchor = torch.tensor([bool(f.get("anchor", False)) for f in features])  # (B,)
        if self.pack:
            return {**self._packed(features), "weight": weights, "anchor": anchor}
        width = max(len(f["input_ids"]) for f in features)
        n = len(features)
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)  # (B, T)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        attn = torch.zeros((n, width), dtype=torch.long)  # (B, T)
        for r, f in enumerate(features):
            k = len(f["input_ids"])
            ids[r, :k] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            if float(f.get("weight", 1.0)) != 0.0:
                labels[r, :k] = torch.as_tensor(f["labels"], dtype=torch.long)
            attn[r, :k] = 1
        return {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": attn,
            "weight": weights,
            "anchor": anchor,
        }

    @staticmethod
    def _packed(features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        seg: list[int] = []
        for r, f in enumerate(features):
            k = len(f["input_ids"])
            ids += f["input_ids"]
            if float(f.get("weight", 1.0)) != 0.0:
                labels += [IGNORE_INDEX, *f["labels"][1:]]
            else:
                labels += [IGNORE_INDEX] * k
            pos += range(k)
            seg += [r] * k
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),  # (1, S)
            "labels": torch.tensor([labels], dtype=torch.long),  # (1, S)
            "position_ids": torch.tensor([pos], dtype=torch.long),  # (1, S)
            "segments": torch.tensor([seg], dtype=torch.long),  # (1, S)
        }


# ---------------------------------------------------------------------------- loss
def count_label_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Number of prediction targets in a causal-LM label tensor: ``labels[..., 1:] != -100``."""
    return (labels[..., 1:] != IGNORE_INDEX).sum()


def weighted_causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    num_items: torch.Tensor | int | float,
    anchor: torch.Tensor | None = None,
    ref_logits: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Σ_i w_i Σ_t m_it · ℓ_it / num_items`` for a causal LM (logits at t predict t+1).

    ``ℓ_it`` is the NLL of the label, or for anchor rows the KL divergence
    ``KL(p_ref ‖ p_model)`` of the next-token distributions at that position, so an anchor
    token costs the same normaliser slot as a supervised one.

    Args:
        logits: ``(B, T, V)``, or ``(1, S, V)`` packed; upcast to float32 (as the built-in
            loss does).
        labels: ``(B, T)`` (or ``(1, S)``) with ``-100`` where there is no target.
        weights: ``(B,)`` per-example weights, or ``None`` for all 1.
        num_items: the normaliser ``N`` (label tokens over the whole optimizer step).
        anchor: ``(B,)`` bool, examples whose loss is the KL to ``ref_logits``; ``None`` = none.
        ref_logits: reference logits of the anchor examples only: padded ``(b, T, V)`` (the
            anchor rows in row order), packed ``(1, S_a, V)`` (the anchor examples' tokens in
            sequence order, as :func:`_anchor_tokens` selects them).
        segments: ``(1, S)`` example index of every token when the batch is packed
            (:class:`WeightedCollator` with ``pack=True``); ``None`` = padded rows.
    """
    shift_logits = logits[:, :-1, :].float()  # (B, T-1, V)
    shift_labels = labels[:, 1:].to(shift_logits.device)  # (B, T-1)
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)  # (B, T-1), 0 where ignored
    has_anchor = anchor is not None and bool(anchor.any())
    if has_anchor and ref_logits is None:
        raise ValueError("anchor rows need ref_logits")
    if segments is not None:
        per_example = _packed_per_example(
            shift_logits, shift_labels, nll, segments, weights, anchor, ref_logits
        )
    else:
        per_example = nll.sum(dim=1)  # (B,)
        if has_anchor:
            assert anchor is not None and ref_logits is not None
            rows = anchor.to(per_example.device).nonzero().squeeze(1)  # (b,)
            log_p = F.log_softmax(shift_logits[rows], dim=-1)  # (b, T-1, V)
            log_q = F.log_softmax(ref_logits[:, :-1, :].float().to(log_p.device), dim=-1)
            kl = (log_q.exp() * (log_q - log_p)).sum(dim=-1)  # (b, T-1)
            kl = (kl * (shift_labels[rows] != IGNORE_INDEX)).sum(dim=1)  # (b,)
            per_example = per_example.index_put((rows,), kl)
    if weights is not None:
        per_example = per_example * weights.to(per_example.device, per_example.dtype)
    if isinstance(num_items, torch.Tensor):
        num_items = num_items.to(per_example.device)
    return per_example.sum() / num_items


def _anchor_tokens(segments: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """``(S,)`` bool: the packed tokens that belong to anchor examples."""
    return anchor.to(segments.device)[segments[0]]


def _packed_per_example(
    shift_logits: torch.Tensor,
    shift_labels: torch.Tensor,
    nll: torch.Tensor,
    segments: torch.Tensor,
    weights: torch.Tensor | None,
    anchor: torch.Tensor | None,
    ref_logits: torch.Tensor | None,
) -> torch.Tensor:
    """Per-example sums ``(B,)`` of the token losses of a packed ``(1, S)`` batch.

    The target at position ``t + 1`` belongs to example ``segments[t + 1]``; the collator set
    every example's first label to ``-100``, so a counted target's context ``t`` is in the same
    example and, for anchor examples, ``t`` is also a position of the anchor-only reference
    sequence (its index there = the number of anchor tokens before it).
    """
    seg = segments[0, 1:].to(nll.device)  # (S-1,) example of each target
    if weights is not None:
        n_ex = weights.numel()
    elif anchor is not None:
        n_ex = anchor.numel()
    else:
        n_ex = int(segments.max()) + 1
    tok = nll[0]  # (S-1,)
    if anchor is not None and bool(anchor.any()):
        assert ref_logits is not None
        in_anchor = _anchor_tokens(segments, anchor).to(nll.device)  # (S,)
        use = (in_anchor[1:] & (shift_labels[0] != IGNORE_INDEX)).nonzero().squeeze(1)  # (k,)
        ref_row = torch.cumsum(in_anchor.long(), 0) - 1  # (S,) index in the anchor sequence
        log_p = F.log_softmax(shift_logits[0, use], dim=-1)  # (k, V)
        log_q = F.log_softmax(ref_logits[0, ref_row[use]].float().to(log_p.device), dim=-1)
        kl = (log_q.exp() * (log_q - log_p)).sum(dim=-1)  # (k,)
        tok = tok.index_put((use,), kl)
    return torch.zeros(n_ex, dtype=tok.dtype, device=tok.device).index_add(0, seg, tok)


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Random example order in which each optimizer step holds examples of similar length.

    Per epoch: a seeded permutation is cut into windows of ``window`` steps of ``group``
    examples, each window is sorted by length and cut into steps, and the full steps are
    shuffled (a short last step stays last, so step boundaries never shift). ``group`` must be
    the examples per optimizer step over all processes (batch × grad_accum × world size):
    then bs1×GA4, bs4 and 2 processes × bs2 see the same steps. Unlike transformers'
    ``LengthGroupedSampler`` the steps are not left in descending length order, which would
    tie example length to the learning-rate schedule.
    """

    def __init__(self, lengths: Sequence[int], group: int, seed: int, window: int = 16) -> None:
        if group < 1 or window < 1:
            raise ValueError("group and window must be >= 1")
        self.lengths = list(lengths)
        self.group, self.seed, self.window = group, seed, window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def order(self, epoch: int) -> list[int]:
        rng = random.Random(f"{self.seed}:{epoch}")
        idx = list(range(len(self.lengths)))
        rng.shuffle(idx)
        span = self.group * self.window
        steps: list[list[int]] = []
        for w0 in range(0, len(idx), span):
            win = sorted(idx[w0 : w0 + span], key=lambda i: self.lengths[i])
            steps.extend(win[g : g + self.group] for g in range(0, len(win), self.group))
        tail = [steps.pop()] if steps and len(steps[-1]) < self.group else []
        rng.shuffle(steps)
        return [i for step in steps + tail for i in step]

    def __iter__(self) -> Any:
        out = self.order(self.epoch)
        self.epoch += 1  # the next epoch differs even if nobody calls set_epoch
        return iter(out)


class WeightedTrainer(Trainer):
    """``transformers.Trainer`` with the per-example weighted loss of the module docstring.

    The loss returned for a micro-batch is its share of the step loss
    (``Σ w·nll / N_step``), so ``training_step`` must not divide it by GA again.
    With ``group_by_length`` the examples are ordered by :class:`LengthGroupedSampler`.
    """

    loss_is_scaled_for_ga = True
    group_by_length = False

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.group_by_length or dataset is None:
            return super()._get_train_sampler(train_dataset)
        a = self.args
        group = a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size
        lengths = [len(dataset[i]["input_ids"]) for i in range(len(dataset))]  # type: ignore[arg-type]
        return LengthGroupedSampler(lengths, group, seed=a.data_seed or a.seed)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        columns = self._signature_columns
        for extra in ("weight", "anchor"):
            if columns is not None and extra not in columns:
                columns.append(extra)

    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: Any
    ) -> tuple[list[Any], Any]:
        """Prefetch one accumulation window; ``N`` = its label tokens over all processes."""
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        if not batch_samples or "labels" not in batch_samples[0]:
            return batch_samples, None
        n = sum(
            (count_label_tokens(b["labels"]) for b in batch_samples),
            torch.zeros((), dtype=torch.long),
        ).to(device)
        if self.accelerator.num_processes > 1:
            n = self.accelerator.gather(n.reshape(1)).sum()
        # N = 0 only when every weight is 0: all numerators are 0 too, so return loss 0.
        return batch_samples, n.clamp(min=1)

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        weights = inputs.pop("weight", None)
        anchor = inputs.pop("anchor", None)
        segments = inputs.pop("segments", None)
        if segments is not None:
            inputs["use_cache"] = False  # with a cache transformers ignores the packing
        outputs = model(**inputs)  # no labels: skip the built-in loss
        ref_logits = None
        if anchor is not None and bool(anchor.any()):
            # the reference = the same network with the adapter switched off (frozen base)
            peft_model = self.accelerator.unwrap_model(model)
            if segments is not None:  # the anchor examples' tokens, still packed
                keep = _anchor_tokens(segments, anchor)
                ref_in = {
                    "input_ids": inputs["input_ids"][:, keep],
                    "position_ids": inputs["position_ids"][:, keep],
                    "use_cache": False,
                }
            else:
                rows = anchor.nonzero().squeeze(1)
                ref_in = {
                    "input_ids": inputs["input_ids"][rows],
                    "attention_mask": inputs["attention_mask"][rows],
                }
            with torch.no_grad(), peft_model.disable_adapter():
                ref_logits = peft_model(**ref_in).logits
        if num_items_in_batch is None:
            # Evaluation or a direct call: normalise by this batch alone.
            n = count_label_tokens(labels).clamp(min=1)
            scale = 1
        else:
            n = num_items_in_batch
            # DDP averages gradients over processes while N is global: undo the average.
            scale = self.accelerator.num_processes
        loss = weighted_causal_lm_loss(
            outputs.logits, labels, weights, n, anchor, ref_logits, segments
        )
        if scale != 1:
            loss = loss * scale
        return (loss, outputs) if return_outputs else loss


class _ProgressAndLossCallback(TrainerCallback):
    """Forwards step progress to a plain callable and records logged losses."""

    def __init__(self, progress: ProgressCallbackFn | None) -> None:
        self.progress = progress
        self.losses: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None and state.is_world_process_zero:
            self.progress(int(state.global_step), int(state.max_steps))

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


# ---------------------------------------------------------------------------- LoRA + run
def wrap_lora(model: Any, cfg: TrainConfig, *, init_lora_weights: bool = True) -> Any:
    """Wrap ``model`` (modified in place; pass a copy) with a trainable LoRA adapter.

    ``init_lora_weights=False`` initialises B randomly too (tests: every LoRA parameter then
    gets a gradient on the first step; the default B = 0 leaves A's first gradient at zero).
    """
    lcfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
        init_lora_weights=init_lora_weights,
    )
    return get_peft_model(model, lcfg)


def make_training_args(
    cfg: TrainConfig, output_dir: Path, *, runtime: Runtime, world_size: int = 1
) -> TrainingArguments:
    """``TrainingArguments`` for a quiet CPU run (no saving, no reporting, no tqdm)."""
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        # transformers 5 dropped `warmup_ratio`; a float in [0, 1) here is a ratio of steps.
        warmup_steps=cfg.warmup_ratio,
        max_grad_norm=cfg.max_grad_norm,
        optim=cfg.optim,
        weight_decay=0.0,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        # Keep NaN/inf in the logged losses: they are how divergence is detected.
        logging_nan_inf_filter=False,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        bf16=runtime.dtype == "bf16",
        dataloader_num_workers=0,
        seed=cfg.seed,
        data_seed=cfg.seed,
        average_tokens_across_devices=True,
        ddp_backend="gloo" if world_size > 1 else None,
    )


def make_trainer(
    model: Any,
    dataset: TokenizedDataset,
    args: TrainingArguments,
    pad_token_id: int,
    *,
    callbacks: Sequence[Any] = (),
    trainer_cls: type[WeightedTrainer] | None = None,
    group_by_length: bool = False,
    pack: bool = False,
) -> WeightedTrainer:
    """A :class:`WeightedTrainer` (or ``trainer_cls``) without transformers' stdout printer.

    ``pack``: micro-batches packed into one row (:class:`WeightedCollator`); check the model
    with :func:`packing_is_exact` first.
    """
    trainer = (trainer_cls or WeightedTrainer)(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=WeightedCollator(pad_token_id, pack=pack),
        callbacks=list(callbacks),
    )
    # disable_tqdm=True swaps the progress bar for PrinterCallback, which print()s every log.
    trainer.remove_callback(PrinterCallback)
    trainer.group_by_length = group_by_length
    return trainer


def packing_is_exact(model: Any, *, lengths: Sequence[int] = (5, 9, 7), seed: int = 0) -> bool:
    """Whether ``model`` gives packed rows the logits it gives them one at a time.

    Runs random token rows of ``lengths`` alone and packed into one row with restarting
    ``position_ids`` (fp32, no grad, eval mode; the training mode is restored). A model whose
    attention ignores packed position ids (so later rows see earlier ones) fails this by
    orders of magnitude more than the tolerance.
    """
    gen = torch.Generator().manual_seed(seed)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    rows = [torch.randint(0, vocab, (1, k), generator=gen) for k in lengths]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = torch.cat([model(input_ids=r, use_cache=False).logits.float() for r in rows], 1)
            packed = model(
                input_ids=torch.cat(rows, 1),
                position_ids=torch.cat([torch.arange(k) for k in lengths]).unsqueeze(0),
                use_cache=False,
            ).logits.float()
    finally:
        model.train(was_training)
    err = float((alone - packed).abs().max())
    scale = max(1.0, float(alone.abs().max()))
    log.debug("packing check: max |packed - alone| = %.2e (scale %.1f)", err, scale)
    return err <= 1e-4 * scale


def _training_items(examples: Sequence[TrainExample]) -> list[Sample]:
    return [
        Sample(id=ex.id or f"example[{i}]", input=ex.prompt, target=ex.completion)
        for i, ex in enumerate(examples)
    ]


def _world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _atomic_save(model: Any, payload: dict[str, Any], out_dir: Path) -> None:
    """Write the adapter + ``train_result.json`` into a temp sibling, fsync it, then swap it
    in (:func:`selfimprove.store.publish_dir`): a killed save never leaves a half adapter."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "train_result.json").write_text(json.dumps(payload, indent=2), "utf-8")
        fault("train:saved")
        publish_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def apply_weight_policy(
    loaded: LoadedModel,
    examples: Sequence[TrainExample],
    cfg: TrainConfig,
    *,
    runtime: Runtime | None = None,
    batch_size: int = 16,
    system_prompt: str | None = None,
    prompt_format: str = "auto",
) -> list[TrainExample]:
    """Multiply each example's ``weight`` by its ``cfg.weight_policy`` weight.

    The reference NLL is the mean NLL per completion token under ``loaded`` (pass the
    pre-round model: with re-training from the base each round, that is the base model).
    ``uniform`` returns the examples unchanged without running the model.

    Raises:
        DataError: an example's reference NLL is not finite.
    """
    if cfg.weight_policy == "uniform":
        return list(examples)
    engine = Engine(
        loaded, runtime=runtime, system_prompt=system_prompt, prompt_format=prompt_format
    )
    scores = engine.continuation_nll(
        [ex.prompt for ex in examples], [ex.completion for ex in examples], batch_size=batch_size
    )
    try:
        policy_w = compute_weights(
            [s.mean for s in scores],
            cfg.weight_policy,
            alpha=cfg.weight_alpha,
            clip=cfg.weight_clip,
        )
    except ValueError as err:
        raise DataError(f"Cannot weight the training examples: {err}") from err
    return [
        ex.model_copy(update={"weight": ex.weight * w})
        for ex, w in zip(examples, policy_w, strict=True)
    ]


def _checked_dataset(
    loaded: LoadedModel,
    examples: list[TrainExample],
    cfg: TrainConfig,
    engine: Engine,
    never_train: NeverTrainRegistry | None,
) -> TokenizedDataset:
    """The tokenized training set, after the checks that must fail before any training."""
    if never_train is not None:
        never_train.check(_training_items(examples))
    if not examples:
        raise DataError("No training examples were given; nothing to train on.")
    if hasattr(loaded.model, "peft_config"):
        raise ConfigError(
            f"{loaded.name} already carries a PEFT adapter; train from the base model "
            "(load it without --adapter) so the new adapter applies to the base weights."
        )
    dataset = build_dataset(
        examples,
        loaded.tokenizer,
        engine.format_prompt,
        cfg.max_length,
        add_special_tokens=not engine.use_chat_template,
    )
    if len(dataset) == 0:
        raise DataError(
            f"None of the {len(examples)} training examples fits in max_length={cfg.max_length} "
            "tokens; raise max_length."
        )
    if getattr(loaded, "base", False):
        check_base_rows(loaded.tokenizer, dataset.rows, loaded.name)
    return dataset


def train_lora(
    loaded: LoadedModel,
    examples: list[TrainExample],
    cfg: TrainConfig,
    out_dir: Path,
    *,
    runtime: Runtime | None = None,
    never_train: NeverTrainRegistry | None = None,
    progress: ProgressCallbackFn | None = None,
    system_prompt: str | None = None,
    prompt_format: str = "auto",
) -> TrainResult:
    """Fine-tune a LoRA adapter on ``examples`` and save it to ``out_dir``.

    Steps: never-train check -> tokenize -> LoRA on a deep copy of ``loaded.model`` ->
    :class:`WeightedTrainer` -> atomic save of ``adapter_config.json``,
    ``adapter_model.safetensors`` and ``train_result.json``. Works under ``torchrun`` (gloo
    DDP; only rank 0 writes).

    Args:
        loaded: base model and tokenizer; never modified. Must not already carry an adapter.
        examples: training examples, trained with their ``weight`` as given (the weight
            policy is *not* applied here; see :func:`apply_weight_policy`).
        cfg: hyper-parameters.
        out_dir: adapter folder to (re)create.
        runtime: threads/dtype; ``bf16`` trains under bf16 autocast (weights stay fp32).
        never_train: registry of evaluation items that must not be trained on.
        progress: called as ``progress(step, total_steps)`` after each optimizer step.
        prompt_format: the evaluation engine's prompt format (see :mod:`selfimprove.prompts`).
        system_prompt: the system message the evaluation engine uses (so training sees the
            same chat text as evaluation).

    Raises:
        NeverTrainViolation: an example's prompt is a registered evaluation item.
        ConfigError: ``loaded`` already has a PEFT adapter.
        DataError: no example fits in ``max_length`` (or none given).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    runtime = runtime or resolve_runtime()
    # for its chat formatting and pad id only
    engine = Engine(
        loaded, runtime=runtime, system_prompt=system_prompt, prompt_format=prompt_format
    )
    dataset = _checked_dataset(loaded, examples, cfg, engine, never_train)
    weights = [r["weight"] for r in dataset.rows]

    set_seed(cfg.seed)  # LoRA A init is random
    model = wrap_lora(copy.deepcopy(loaded.model), cfg)
    model.train()
    pack = cfg.pack and packing_is_exact(model)
    if cfg.pack and not pack:
        log.warning(
            "%s does not attend within packed rows exactly (its attention ignores restarting "
            "position ids); training on padded batches instead.",
            loaded.name,
        )
    world = _world_size()
    scratch = Path(tempfile.mkdtemp(prefix="selfimprove-trainer-"))  # Trainer's output_dir
    try:
        args = make_training_args(cfg, scratch, runtime=runtime, world_size=world)
        callback = _ProgressAndLossCallback(progress)
        trainer = make_trainer(
            model,
            dataset,
            args,
            engine.pad_id,
            callbacks=[callback],
            group_by_length=cfg.group_by_length,
            pack=pack,
        )
        with torch.enable_grad():
            trainer.train()
        losses = callback.losses
        final = losses[-1] if losses else float("nan")
        diverged = not check_losses(losses)[0]  # the gate's rule at its default ratio
        result = TrainResult(
            adapter_dir=out_dir,
            n_examples=len(dataset),
            n_anchor=sum(bool(r["anchor"]) for r in dataset.rows),
            n_dropped=dataset.n_dropped,
            n_tokens=dataset.n_label_tokens,
            losses=losses,
            final_loss=final,
            diverged=diverged,
            seconds=0.0,
            weights_summary={
                "min": min(weights),
                "mean": sum(weights) / len(weights),
                "max": max(weights),
            },
            config=cfg,
            base_model=loaded.name,
            base_weights_hash=loaded.weights_hash,
            runtime={**runtime.describe(), "world_size": world},
            packed=pack,
        )
        result.seconds = time.perf_counter() - t0
        if trainer.is_world_process_zero():
            model.eval()
            _atomic_save(model, result.model_dump(mode="json"), out_dir)
        trainer.accelerator.wait_for_everyone()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if result.diverged:
        log.warning("Training diverged (losses %s); treat the adapter as failed.", losses[:3])
    return result
