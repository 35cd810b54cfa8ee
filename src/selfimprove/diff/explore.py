"""Exploration by contrastive decoding: surface extreme differences (not a test).

Greedy decoding from the score ``log p_B(·) − λ·log p_A(·)`` (equal, up to a per-step
constant, to logits B − λ·logits A) restricted to B's plausible tokens
(``p_B ≥ β·max p_B``, Li et al. 2023), so the text is what B would say and A would not.
These outputs amplify differences and do not represent typical behavior; they are labelled
exploratory and kept out of the FDR family.

Forward passes use the two engines' models directly (batch 1, one KV cache each), one token
at a time: each next token depends on both models' logits, which no engine call combines
(the rule for passes outside the engine is in :mod:`selfimprove.engine`). Prompts are
tokenised by engine B, so they are the text evaluation sees.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from selfimprove.engine import Engine, Prompt
from selfimprove.runtime import no_grad_eval


class ExploreSample(BaseModel):
    """One contrastive generation (exploratory)."""

    prompt: str
    text: str
    lam: float
    exploratory: bool = True


def contrastive_decode(
    engine_a: Engine,
    engine_b: Engine,
    prompts: Sequence[Prompt],
    *,
    lam: float = 0.5,
    beta: float = 0.1,
    max_new_tokens: int = 24,
) -> list[ExploreSample]:
    """Greedy contrastive decoding of B against A for each prompt (see module doc)."""
    import torch
    from transformers import DynamicCache

    out: list[ExploreSample] = []
    ids_all = engine_b.encode_prompts(prompts)
    with no_grad_eval(engine_a.model), no_grad_eval(engine_b.model):
        for prompt, ids in zip(prompts, ids_all, strict=True):
            x = torch.tensor([ids], dtype=torch.long)  # (1, T)
            ca = DynamicCache(config=engine_a.model.config)
            cb = DynamicCache(config=engine_b.model.config)
            la = engine_a.model(input_ids=x, past_key_values=ca, use_cache=True).logits[0, -1]
            lb = engine_b.model(input_ids=x, past_key_values=cb, use_cache=True).logits[0, -1]
            gen: list[int] = []
            for _ in range(max_new_tokens):
                lpa = torch.log_softmax(la.float(), -1)  # (V,)
                lpb = torch.log_softmax(lb.float(), -1)
                score = lpb - lam * lpa
                score[lpb < lpb.max() + torch.log(torch.tensor(beta))] = -float("inf")
                tok = int(score.argmax())
                if tok in engine_b.eos_ids:
                    break
                gen.append(tok)
                t = torch.tensor([[tok]], dtype=torch.long)
                la = engine_a.model(input_ids=t, past_key_values=ca, use_cache=True).logits[0, -1]
                lb = engine_b.model(input_ids=t, past_key_values=cb, use_cache=True).logits[0, -1]
            text = engine_b.tokenizer.decode(gen, skip_special_tokens=True)
            shown = prompt if isinstance(prompt, str) else str(prompt)
            out.append(ExploreSample(prompt=shown, text=text, lam=lam))
    return out
