"""The engine: the one place where the language model under study is run for its outputs.

Every generation, scoring and model-comparison pass of evaluation, data generation, training
weights and the behavior-change detector goes through :class:`Engine`, so batching, padding
side, dtype, threads and caching are decided once.

* ``generate``: batched generation with left padding and a KV cache; prompts are sorted by
  length so batches waste little padding; rows that finish (EOS or a stop pattern) leave the
  batch and the cache at once, so long ramblers do not slow short answers. Greedy or seeded
  sampling; a row's sampling noise depends only on ``(seed, prompt index)``, not on batching.
* ``continuation_nll``: per-token NLL of a given continuation after a prompt (teacher forcing).
* ``next_token_logprobs``: next-token distributions at the end of each prompt.
* ``continuation_kl``: per-position KL between two engines' next-token distributions over
  the first k tokens of given continuations (one prefill per prompt per model).

It does not know about tasks or validators (see :mod:`selfimprove.evaluate`).

Forward passes outside the engine, and why (anything else calls the engine):

* ``train/trainer.py``: training forward/backward passes (``transformers.Trainer``) and its
  packing check;
* ``interp/``: *hooked* (for saliency, differentiable) passes, on right-padded batches
  (``interp/common.forward``) or single sequences, every hook through ``interp/hooks.py``:
  interventions need gradients, hooks and stable positions, which batched, cached generation
  cannot give. Prompts are still formatted by the engine, so the text is the text
  evaluation scores;
* ``diff/explore.py``: contrastive decoding steps two engines' models token by token in
  lockstep, one KV cache each, since every token depends on *both* models' logits
  (exploratory output, never a measurement);
* ``embeddings.py``: the sentence encoder, a different model (prompt clustering).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from selfimprove import prompts
from selfimprove.errors import ConfigError
from selfimprove.models import LoadedModel
from selfimprove.runtime import Runtime, no_grad_eval, resolve_runtime
from selfimprove.tasks.base import ChatMessage

log = logging.getLogger(__name__)

Prompt = str | Sequence[ChatMessage] | Sequence[dict[str, str]]
ProgressFn = Callable[[int], None]  # called with the number of items just finished
#: A stop is a plain string (output is cut *before* it) or a compiled regex (output is cut
#: *after* the match, so e.g. ``Answer:[^\n]*\n`` keeps the answer line).
Stop = str | re.Pattern[str]


@dataclass
class Generation:
    """One generated completion.

    Attributes:
        text: decoded completion, cut at the first stop (see ``Stop``).
        n_tokens: number of generated tokens (before stop truncation).
        finish_reason: ``eos``, ``stop`` or ``length``.
        mean_entropy: mean next-token entropy (nats) over generated steps: uncertainty.
        mean_margin: mean top-1 minus top-2 probability over generated steps.
    """

    text: str
    n_tokens: int
    finish_reason: str
    mean_entropy: float
    mean_margin: float
    token_ids: list[int] = field(default_factory=list, repr=False)


@dataclass
class TokenScores:
    """Teacher-forced scores of one continuation: per-token NLL in nats."""

    nll: list[float]

    @property
    def total(self) -> float:
        return float(sum(self.nll))

    @property
    def mean(self) -> float:
        return self.total / max(1, len(self.nll))

    @property
    def logprob(self) -> float:
        return -self.total


class Engine:
    """Batched forward passes over one model.

    Args:
        loaded: the model and tokenizer (see :func:`selfimprove.models.load_model`).
        runtime: threads/dtype policy; resolved with defaults when ``None``.
        use_chat_template: format prompts with the tokenizer's chat template (default: when
            the tokenizer has one). Kept for callers that predate ``prompt_format``.
        prompt_format: ``auto`` (``chat`` when the tokenizer has a template, else
            ``plain``), ``chat``, or a base-model format ``plain`` / ``cue`` / ``urial`` (see
            :mod:`selfimprove.prompts`; base formats add their stop strings to every
            generation). ``chat`` is refused for a base model (``loaded.base``).
        system_prompt: optional system message prepended to chat prompts.
        share_prefix: prefill the batch's common token prefix once (exact up to float
            rounding; turn off to compare with a plain left-padded prefill).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        runtime: Runtime | None = None,
        use_chat_template: bool | None = None,
        system_prompt: str | None = None,
        share_prefix: bool = True,
        prefill_rows: int = 8,
        prompt_format: str = "auto",
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.runtime = runtime or resolve_runtime()
        self.prompt_format = _resolve_format(loaded, prompt_format, use_chat_template)
        self.use_chat_template = self.prompt_format == "chat"
        self.format_stops = prompts.stops(self.prompt_format)
        self.system_prompt = system_prompt
        self.share_prefix = share_prefix
        self.prefill_rows = prefill_rows
        eos = {self.tokenizer.eos_token_id}
        cfg_eos = getattr(self.model.config, "eos_token_id", None)
        if isinstance(cfg_eos, int):
            eos.add(cfg_eos)
        elif isinstance(cfg_eos, list):
            eos.update(cfg_eos)
        self.eos_ids = sorted(i for i in eos if i is not None)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.eos_ids[0])

    # ------------------------------------------------------------------ prompts
    def format_prompt(self, prompt: Prompt) -> str:
        """The exact text fed to the model for ``prompt`` (chat template applied if used)."""
        if isinstance(prompt, str) and self.prompt_format == "plain":
            return prompt
        msgs = _as_messages(prompt)
        if not self.use_chat_template:
            return prompts.render(self.prompt_format, msgs)
        if self.system_prompt and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": self.system_prompt}, *msgs]
        return str(
            self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        )

    def encode_prompts(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        texts = [self.format_prompt(p) for p in prompts]
        # The chat template already contains the special tokens.
        enc = self.tokenizer(texts, add_special_tokens=not self.use_chat_template)
        return [list(ids) for ids in enc["input_ids"]]

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        max_new_tokens: int | Sequence[int] = 64,
        stop: Sequence[Stop] = (),
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        batch_size: int = 32,
        progress: ProgressFn | None = None,
    ) -> list[Generation]:
        """Generate one completion per prompt (greedy when ``temperature == 0``).

        Results come back in the order of ``prompts``. Deterministic for a given seed and
        independent of ``batch_size`` up to floating-point effects of padding.
        ``max_new_tokens`` is one cap for all prompts or one per prompt (a row stops at its own
        cap while the rest of its batch goes on).
        """
        import torch

        ids = self.encode_prompts(prompts)
        if isinstance(max_new_tokens, int):
            caps = [max_new_tokens] * len(ids)
        else:
            caps = [int(c) for c in max_new_tokens]
            if len(caps) != len(ids):
                raise ValueError(f"{len(caps)} max_new_tokens values for {len(ids)} prompts")
        if any(c < 1 for c in caps):
            raise ValueError("max_new_tokens must be >= 1")
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        results: list[Generation | None] = [None] * len(ids)
        with no_grad_eval(self.model), self.runtime.autocast():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                outs = self._generate_batch(
                    [ids[i] for i in chunk],
                    chunk,
                    caps=[caps[i] for i in chunk],
                    stop=[*stop, *self.format_stops],
                    temperature=temperature,
                    top_p=top_p,
                    seed=seed,
                    torch=torch,
                )
                for i, g in zip(chunk, outs, strict=True):
                    results[i] = g
                if progress is not None:
                    progress(len(chunk))
        return [r for r in results if r is not None]

    def _generate_batch(
        self,
        batch_ids: list[list[int]],
        prompt_indices: list[int],
        *,
        caps: list[int],
        stop: Sequence[Stop],
        temperature: float,
        top_p: float,
        seed: int,
        torch: Any,
    ) -> list[Generation]:

        n = len(batch_ids)
        cache, attn, next_pos, logits = self._prefill(batch_ids, torch)

        active = list(range(n))  # batch row -> local index in this chunk
        gen_ids: list[list[int]] = [[] for _ in range(n)]
        entropy_sum = [0.0] * n
        margin_sum = [0.0] * n
        finish = ["length"] * n
        texts = [""] * n
        gens = None
        if temperature > 0:
            gens = [torch.Generator().manual_seed(_row_seed(seed, i)) for i in prompt_indices]

        max_new_tokens = max(caps)
        for step in range(max_new_tokens):
            logp = torch.log_softmax(logits, dim=-1)  # (B_active, V)
            probs = logp.exp()
            ent = -(probs * logp).sum(-1)  # (B_active,)
            top2 = probs.topk(2, dim=-1).values  # (B_active, 2)
            if temperature > 0:
                assert gens is not None
                nxt = _sample(logits, temperature, top_p, [gens[r] for r in active], torch)
            else:
                nxt = logits.argmax(-1)
            keep: list[int] = []
            for j, r in enumerate(active):
                tok = int(nxt[j])
                entropy_sum[r] += float(ent[j])
                margin_sum[r] += float(top2[j, 0] - top2[j, 1])
                if tok in self.eos_ids:
                    finish[r] = "eos"
                    continue
                gen_ids[r].append(tok)
                if stop:
                    text = self.tokenizer.decode(gen_ids[r], skip_special_tokens=True)
                    cut = _apply_stops(text, stop)
                    if cut is not None:
                        texts[r] = cut
                        finish[r] = "stop"
                        continue
                if len(gen_ids[r]) >= caps[r]:
                    continue  # finish stays "length"
                keep.append(j)
            if not keep or step == max_new_tokens - 1:
                break
            if len(keep) < len(active):
                idx = torch.tensor(keep, dtype=torch.long)
                cache.batch_select_indices(idx)
                attn = attn[idx]
                next_pos = next_pos[idx]
                nxt = nxt[idx]
                active = [active[j] for j in keep]
            attn = torch.cat([attn, torch.ones((len(active), 1), dtype=attn.dtype)], dim=1)
            out = self.model(
                input_ids=nxt.view(-1, 1),
                attention_mask=attn,
                position_ids=next_pos,
                cache=cache,  # transformers >= 5.24 name (past_key_values is deprecated)
                use_cache=True,
            )
            logits = out.logits[:, -1, :].float()
            next_pos = next_pos + 1

        results = []
        for r in range(n):
            steps = len(gen_ids[r]) + (1 if finish[r] == "eos" else 0)
            text = (
                texts[r]
                if finish[r] == "stop"
                else self.tokenizer.decode(gen_ids[r], skip_special_tokens=True)
            )
            results.append(
                Generation(
                    text=text,
                    n_tokens=len(gen_ids[r]),
                    finish_reason=finish[r],
                    mean_entropy=entropy_sum[r] / max(1, steps),
                    mean_margin=margin_sum[r] / max(1, steps),
                    token_ids=gen_ids[r],
                )
            )
        return results

    def _prefill(self, batch_ids: list[list[int]], torch: Any) -> tuple[Any, Any, Any, Any]:
        """Prefill a batch; returns ``(cache, attention_mask, next_positions, last_logits)``.

        Two savings, both exact up to float rounding:
        * Shared prefix: the chat template's system turn (and often an instruction) is the
          same for every prompt. It is run once at batch 1 and its KV cache is copied.
        * Length-grouped prefill: rows (already sorted by length) are prefilled in groups
          of ``prefill_rows`` so short prompts do not pay for the longest one's padding;
          the group caches are then left-padded and stacked into one decode cache.
        Layout per row: ``[pad | prefix | pad | suffix]``; the mask hides the pads and the
        explicit position ids count real tokens only, so each row sees exactly what it
        would see alone.
        """
        from transformers import DynamicCache

        n = len(batch_ids)
        n_prefix = _common_prefix_len(batch_ids) if self.share_prefix and n > 1 else 0
        n_prefix = min(n_prefix, min(len(r) for r in batch_ids) - 1)
        prefix_kv: list[tuple[Any, Any]] = []
        if n_prefix >= 4:
            pc = DynamicCache(config=self.model.config)
            prefix = torch.tensor([batch_ids[0][:n_prefix]], dtype=torch.long)  # (1, P)
            self.model(input_ids=prefix, cache=pc, use_cache=True, logits_to_keep=1)
            prefix_kv = [(layer.keys, layer.values) for layer in _kv_layers(pc)]  # (1, H_kv, P, D)
        else:
            n_prefix = 0

        groups = []
        step = max(1, self.prefill_rows)
        for g0 in range(0, n, step):
            rows = [r[n_prefix:] for r in batch_ids[g0 : g0 + step]]
            b = len(rows)
            cache = DynamicCache(config=self.model.config)
            for li, (k, v) in enumerate(prefix_kv):
                cache.update(
                    k.expand(b, -1, -1, -1).contiguous(), v.expand(b, -1, -1, -1).contiguous(), li
                )
            ids, s_attn, s_pos = _left_pad(rows, self.pad_id)
            attn = torch.cat([torch.ones((b, n_prefix), dtype=torch.long), s_attn], dim=1)
            out = self.model(
                input_ids=ids,
                attention_mask=attn,
                position_ids=s_pos + n_prefix,
                cache=cache,  # transformers >= 5.24 name (past_key_values is deprecated)
                use_cache=True,
                logits_to_keep=1,
            )
            groups.append((cache, attn, s_pos[:, -1:] + n_prefix + 1, out.logits[:, -1, :].float()))
        if len(groups) == 1:
            return groups[0]
        width = max(g[1].shape[1] for g in groups)
        merged = DynamicCache(config=self.model.config)
        for li in range(len(groups[0][0].layers)):
            ks, vs = [], []
            for cache, _attn, _p, _l in groups:
                k, v = _kv_layers(cache)[li].keys, _kv_layers(cache)[li].values  # (b, H_kv, T_g, D)
                pad = width - k.shape[2]
                if pad:
                    k = torch.nn.functional.pad(k, (0, 0, pad, 0))
                    v = torch.nn.functional.pad(v, (0, 0, pad, 0))
                ks.append(k)
                vs.append(v)
            merged.update(torch.cat(ks), torch.cat(vs), li)
        attn = torch.cat(
            [torch.nn.functional.pad(g[1], (width - g[1].shape[1], 0)) for g in groups]
        )
        return merged, attn, torch.cat([g[2] for g in groups]), torch.cat([g[3] for g in groups])

    # ------------------------------------------------------------------ scoring
    def _teacher_forced(
        self,
        prompts: Sequence[Prompt],
        continuations: Sequence[str],
        batch_size: int,
        fn: Callable[[Any, list[int], list[int], int], Any],
        progress: ProgressFn | None,
    ) -> list[Any]:
        """Run prompt+continuation through the model in length-sorted, left-padded batches.

        ``fn(logits_row, prompt_ids, cont_ids, offset)`` receives the float logits of one
        row's last positions (K, V; K = the batch's longest continuation + 1) where
        ``logits_row[offset + t]`` predicts continuation token ``t``.
        """

        if len(prompts) != len(continuations):
            raise ValueError("prompts and continuations must have the same length")
        p_ids = self.encode_prompts(prompts)
        c_ids = [
            list(self.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in continuations
        ]
        full = [p + c for p, c in zip(p_ids, c_ids, strict=True)]
        order = sorted(range(len(full)), key=lambda i: -len(full[i]))
        results: list[Any] = [None] * len(full)
        with no_grad_eval(self.model), self.runtime.autocast():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                ids, attn, pos = _left_pad([full[i] for i in chunk], self.pad_id)
                width = ids.shape[1]
                # Left padding right-aligns every continuation, so only the last `keep`
                # positions are ever read: computing the LM head there alone saves a
                # (B, T, V) logits tensor (13 GB for 128 rows of 100 tokens at Gemma's
                # 262k vocabulary).
                keep = min(width, max(len(c_ids[i]) for i in chunk) + 1)
                logits = self.model(
                    input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=keep
                ).logits
                for r, i in enumerate(chunk):
                    pad = width - len(full[i])
                    # logits at position t predict token t+1; row j of `logits` is position
                    # width - keep + j
                    offset = pad + len(p_ids[i]) - 1 - (width - keep)
                    results[i] = fn(logits[r].float(), p_ids[i], c_ids[i], offset)
                if progress is not None:
                    progress(len(chunk))
        return results

    def continuation_nll(
        self,
        prompts: Sequence[Prompt],
        continuations: Sequence[str],
        *,
        batch_size: int = 16,
        progress: ProgressFn | None = None,
    ) -> list[TokenScores]:
        """Per-token NLL (nats) of each continuation given its prompt (teacher forcing)."""
        import torch

        def fn(lg: Any, _p: list[int], c: list[int], off: int) -> TokenScores:
            if not c:
                return TokenScores([])
            lp = torch.log_softmax(lg[off : off + len(c)], dim=-1)  # (C, V)
            tgt = torch.tensor(c).view(-1, 1)
            return TokenScores((-lp.gather(1, tgt).squeeze(1)).tolist())

        return self._teacher_forced(prompts, continuations, batch_size, fn, progress)

    def continuation_logprobs(
        self,
        prompts: Sequence[Prompt],
        continuations: Sequence[str],
        *,
        k: int | None = None,
        batch_size: int = 16,
        progress: ProgressFn | None = None,
    ) -> list[Any]:
        """Full next-token log-prob tensors (C, V) over the first ``k`` continuation tokens.

        Memory: C x V floats per item (49k vocab -> 200 KB per position), so keep k small.
        """
        import torch

        def fn(lg: Any, _p: list[int], c: list[int], off: int) -> Any:
            n = len(c) if k is None else min(k, len(c))
            return torch.log_softmax(lg[off : off + n], dim=-1).clone()

        return self._teacher_forced(prompts, continuations, batch_size, fn, progress)

    def next_token_logprobs(self, prompts: Sequence[Prompt], *, batch_size: int = 16) -> Any:
        """Log-probs of the next token after each prompt: a (N, V) float tensor."""
        import torch

        ids = self.encode_prompts(prompts)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        res: list[Any] = [None] * len(ids)
        with no_grad_eval(self.model), self.runtime.autocast():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                x, attn, pos = _left_pad([ids[i] for i in chunk], self.pad_id)
                lg = self.model(
                    input_ids=x, attention_mask=attn, position_ids=pos, logits_to_keep=1
                ).logits[:, -1, :]
                lp = torch.log_softmax(lg.float(), dim=-1)  # (B, V)
                for r, i in enumerate(chunk):
                    res[i] = lp[r]
        return torch.stack(res)

    def continuation_kl(
        self,
        other: Engine,
        prompts: Sequence[Prompt],
        continuations: Sequence[str],
        *,
        k: int = 8,
        batch_size: int = 16,
    ) -> list[dict[str, list[float]]]:
        """Teacher-forced KL between this engine (A) and ``other`` (B) per position.

        For each item returns ``{"kl_ab": [...], "kl_ba": [...]}`` over the first ``k``
        continuation tokens: KL(A||B) and KL(B||A) of the next-token distributions. Both
        models must share a tokenizer.
        """
        a = self.continuation_logprobs(prompts, continuations, k=k, batch_size=batch_size)
        b = other.continuation_logprobs(prompts, continuations, k=k, batch_size=batch_size)
        out = []
        for la, lb in zip(a, b, strict=True):
            pa, pb = la.exp(), lb.exp()
            out.append(
                {
                    "kl_ab": (pa * (la - lb)).sum(-1).clamp(min=0).tolist(),
                    "kl_ba": (pb * (lb - la)).sum(-1).clamp(min=0).tolist(),
                }
            )
        return out


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any, Any]:
    """Left-pad token rows: ``(input_ids, attention_mask, position_ids)``, each (B, T).

    Position ids count real tokens only, so a padded row sees the same positions as it would
    alone (the condition for batched == per-item outputs).
    """
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attn[r, width - len(row) :] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return ids, attn, pos


def _kv_layers(cache: Any) -> list[Any]:
    """The per-layer key/value holders of a DynamicCache (``.keys``/``.values``: (B, H_kv, T, D))."""
    return list(cache.layers)


def _common_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for i in range(n):
        t = first[i]
        if any(r[i] != t for r in rows):
            return i
    return n


def _as_messages(prompt: Prompt) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    msgs = []
    for m in prompt:
        if isinstance(m, ChatMessage):
            msgs.append({"role": m.role, "content": m.content})
        else:
            msgs.append({"role": str(m["role"]), "content": str(m["content"])})
    return msgs


def _resolve_format(loaded: Any, fmt: str, use_chat_template: bool | None) -> str:
    """The prompt format an engine uses (see :class:`Engine`)."""
    if fmt not in prompts.PROMPT_FORMATS:
        raise ConfigError(f"unknown prompt format {fmt!r}; choose one of {prompts.PROMPT_FORMATS}")
    has_template = bool(getattr(loaded.tokenizer, "chat_template", None))
    base = bool(getattr(loaded, "base", False))
    if fmt == "auto":
        chat = has_template if use_chat_template is None else use_chat_template
        fmt = "chat" if chat and not base else "plain"
    if fmt == "chat" and base:
        raise ConfigError(
            f"{loaded.name} is a base model: it is never prompted through a chat template "
            f"(contamination guard). Use a base prompt format: {', '.join(prompts.BASE_FORMATS)}."
        )
    if fmt == "chat" and not has_template:
        raise ConfigError(
            f"{loaded.name}'s tokenizer has no chat template, so prompt format 'chat' cannot "
            "apply. Fix: use --prompt-format plain, cue or urial (or auto)."
        )
    return fmt


def _apply_stops(text: str, stops: Sequence[Stop]) -> str | None:
    """Earliest stop in ``text``: cut before a string, after a regex match; else ``None``."""
    best: int | None = None
    for s in stops:
        if isinstance(s, str):
            i = text.find(s)
            end = i
        else:
            m = s.search(text)
            i = m.start() if m else -1
            end = m.end() if m else -1
        if i >= 0 and (best is None or end < best):
            best = end
    return None if best is None else text[:best]


def _row_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index * 7919 + 12345) % (2**63 - 1)


def _sample(logits: Any, temperature: float, top_p: float, gens: list[Any], torch: Any) -> Any:
    probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
    if top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        cum = sp.cumsum(-1)
        mask = cum - sp > top_p
        sp = sp.masked_fill(mask, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, si, sp)
    probs = probs / probs.sum(-1, keepdim=True)
    return torch.stack([torch.multinomial(probs[j], 1, generator=g)[0] for j, g in enumerate(gens)])


def perplexity(scores: Sequence[TokenScores]) -> float:
    """Token-weighted perplexity over several continuations."""
    tot = sum(s.total for s in scores)
    n = sum(len(s.nll) for s in scores)
    return math.exp(tot / n) if n else float("nan")
