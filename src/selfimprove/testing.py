"""Tiny random models and tokenizers for fast tests (no downloads).

``tiny_model("tiny-llama")`` builds a Llama with SmolLM2's attention geometry (9 query heads,
3 KV heads, head_dim 64, d_model 576) but only a few layers and a small FFN;
``tiny_model("tiny-gpt2")`` builds a small GPT-2. Both share a byte-level BPE tokenizer
trained in memory on a small corpus, with ChatML special tokens and a chat template like
SmolLM2's, so every code path (chat template, stop strings, padding) is exercised.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "What is 7 plus 5? Answer: 12",
    "Sort these words alphabetically: pear apple mango. Answer: apple mango pear",
    "How many times does the word cat appear? Answer: 3",
    "The quick brown fox jumps over the lazy dog.",
    "Finish your reply with a final line of the form 'Answer: <answer>'.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000 - + * / = ?",
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday 2024-03-05",
    "I cannot help with that. Sure, here is how you do it.",
]


@lru_cache(maxsize=2)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 512) -> Any:
    """A fast tokenizer (byte-level BPE, ChatML specials, chat template), left padding."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.padding_side = "left"
    return tok


def tiny_model(kind: str = "tiny-llama", *, n_layers: int = 2, seed: int = 0) -> tuple[Any, Any]:
    """Random model + tokenizer. ``kind`` is ``tiny-llama`` or ``tiny-gpt2``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    vocab = len(tok)
    cfg: Any
    model: Any
    torch.manual_seed(seed)
    if kind == "tiny-llama":
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=576,
            intermediate_size=384,
            num_hidden_layers=n_layers,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        model = LlamaForCausalLM(cfg)
    elif kind == "tiny-gpt2":
        cfg = GPT2Config(
            vocab_size=vocab,
            n_embd=128,
            n_layer=n_layers,
            n_head=4,
            n_positions=1024,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(f"unknown tiny model {kind!r}")
    model.eval()
    return model, tok
