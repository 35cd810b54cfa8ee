"""Benchmark: engine generation vs naive per-item HF ``generate`` on the same 64 prompts.

Both run greedy decoding on the same model, under the same run-time dtype policy, threads and
stop rule (EOS only, same max_new_tokens), measured side by side in one process (min of N
repeats for the fast path). Prints generated tokens/s for each, the speed ratio, how many
outputs are token-for-token identical, and the fraction of this CPU's matmul throughput
(bf16 and fp32, measured here) that the engine reaches.

    python bench/engine.py [--model embedded] [--n 64] [--max-new-tokens 48] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from selfimprove.config import DEFAULT_EVAL_SUITES
from selfimprove.doctor import calibrate_bf16
from selfimprove.engine import Engine
from selfimprove.evaluate import plan_items, resolve_suites
from selfimprove.models import load_model
from selfimprove.runtime import resolve_runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    rt = resolve_runtime(args.threads, args.dtype)
    loaded = load_model(args.model)
    eng = Engine(loaded, runtime=rt)
    per_suite = -(-args.n // len(DEFAULT_EVAL_SUITES))
    items = [
        s
        for _su, _t, xs in plan_items(resolve_suites(DEFAULT_EVAL_SUITES), per_suite, 0)
        for s in xs
    ]
    prompts = [s.messages() for s in items][: args.n]
    model, tok = loaded.model, loaded.tokenizer

    # naive: one HF generate call per prompt
    t0 = time.perf_counter()
    naive_ids: list[list[int]] = []
    with torch.inference_mode(), rt.autocast():
        for p in prompts:
            enc = tok(eng.format_prompt(p), return_tensors="pt", add_special_tokens=False)
            out = model.generate(
                **enc,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                eos_token_id=eng.eos_ids,
                pad_token_id=eng.pad_id,
            )
            ids = out[0, enc.input_ids.shape[1] :].tolist()
            naive_ids.append([t for t in ids if t not in eng.eos_ids])
    t_naive = time.perf_counter() - t0
    n_tok = sum(len(x) for x in naive_ids)

    best = float("inf")
    gens = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        gens = eng.generate(prompts, max_new_tokens=args.max_new_tokens, batch_size=len(prompts))
        best = min(best, time.perf_counter() - t0)
    e_tok = sum(g.n_tokens for g in gens)
    same = sum(g.token_ids == ref for g, ref in zip(gens, naive_ids, strict=True))

    # FLOPs actually needed: every prompt+generated token passes the decoder layers;
    # the LM head runs once per generated token. Attention score FLOPs are ignored (small here).
    cfg = model.config
    n_embed = cfg.vocab_size * cfg.hidden_size
    layer_params = loaded.n_params - n_embed * (1 if cfg.tie_word_embeddings else 2)
    prompt_tok = sum(len(x) for x in eng.encode_prompts(prompts))
    flops = 2 * layer_params * (prompt_tok + e_tok) + 2 * n_embed * (e_tok + len(prompts))
    cal = calibrate_bf16(size=1024)
    achieved = flops / best / 1e9

    print(
        f"model={loaded.name} dtype={rt.dtype} threads={rt.threads} prompts={len(prompts)} "
        f"max_new_tokens={args.max_new_tokens} prompt_tokens={prompt_tok}"
    )
    print(f"{'path':<28}{'seconds':>10}{'gen tokens':>12}{'tok/s':>10}")
    print(f"{'naive HF generate (bs=1)':<28}{t_naive:>10.2f}{n_tok:>12}{n_tok / t_naive:>10.1f}")
    print(f"{'engine (batched, min of N)':<28}{best:>10.2f}{e_tok:>12}{e_tok / best:>10.1f}")
    print(f"identical greedy outputs: {same}/{len(prompts)}")
    print(
        f"engine compute: {achieved:.1f} GFLOP/s; matmul peak here: bf16 {cal['bf16_gflops']:.0f}, "
        f"fp32 {cal['fp32_gflops']:.0f} GFLOP/s -> {achieved / cal['bf16_gflops']:.1%} of bf16, "
        f"{achieved / cal['fp32_gflops']:.1%} of fp32"
    )
    print(
        f"SUMMARY speedup={(e_tok / best) / (n_tok / t_naive):.1f}x identical={same}/{len(prompts)} "
        f"wall_ratio={t_naive / best:.1f}x"
    )


if __name__ == "__main__":
    main()
