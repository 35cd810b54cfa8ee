"""Hooks: the only module that registers PyTorch hooks or temporarily changes a model.

Method. Every intervention is a context manager in the style of baukit's ``Trace``: it
registers forward (pre-)hooks on named modules, yields, and removes the hooks in ``finally``
— so an exception, a ``KeyboardInterrupt`` or a ``break`` never leaves a model changed, and
logits after the ``with`` block are bit-identical to logits before it (tested).

Where things are. One :class:`ArchLayout` per architecture family maps our vocabulary
(``n_layers``, ``n_heads``, ``n_kv_heads``, ``d_head``, ``d_model``, ``layer``, ``head``) to
module paths, so no analysis hard-codes ``model.model.layers``:

* Llama family (Llama, Qwen2, Mistral, SmolLM2): ``model.layers[i]``, attention
  ``self_attn``, output projection ``self_attn.o_proj`` (an ``nn.Linear``).
* GPT-2 family: ``transformer.h[i]``, attention ``attn``, output projection ``attn.c_proj``
  (a ``Conv1D``; its *input* is still ``(B, T, n_heads * d_head)``).

PEFT-wrapped models are unwrapped with ``get_base_model()``; LoRA wraps ``o_proj`` in a
``lora.Linear`` whose input is the same tensor, so captures and ablations agree with the
plain model (tested).

Interventions (shapes: B batch, T positions, H = n_heads, D = d_head):

* :func:`capture` — residual stream after each decoder layer (``resid.{l}``, l = 0 is the
  embedding output, l = i + 1 the output of layer i) and per-head attention outputs
  (``z.{l}``: the input of the output projection, ``(B, T, H * D)``).
* :func:`ablate_heads` — zero, mean or resample a head's slice ``[h*D:(h+1)*D]`` of the input
  of the attention output projection. This removes exactly that head's contribution; it
  equals zeroing the matching *columns* of ``o_proj.weight`` (tested). Zeroing q/k/v rows is
  a different intervention (under GQA a k/v row is shared by ``H / n_kv_heads`` heads).
* :func:`head_gates` — a differentiable gate per (example, layer, head) multiplying the same
  slice (Michel et al. 2019). At gate = 1 the forward is bit-identical to the unhooked one.
* :func:`patch_residual` — replace the residual stream at chosen layers and positions with
  stored activations (activation patching).
* :func:`steer` — add ``alpha * v`` to the residual stream after a layer (steering vectors).
* :func:`eager_attention` — switch to eager attention so ``output_attentions=True`` returns
  patterns, and switch back.
* :func:`lora_knockout` — scale the LoRA of chosen layers to 0 and restore the exact scaling.

Transformers 5 gotchas: decoder layers return a Tensor (GPT-2 blocks too), not a tuple;
``head_mask`` no longer exists; sdpa attention cannot return weights.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

AblationMode = Literal["zero", "mean", "resample"]
Head = tuple[int, int]  # (layer, head)


# ---------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class ArchLayout:
    """Where the parts of one architecture live, plus its geometry.

    Attributes:
        family: ``llama`` or ``gpt2``.
        layers_path: dotted path of the decoder-layer list inside the base model.
        embed_path: dotted path of the token embedding.
        attn_name: attribute of a decoder layer holding attention.
        out_proj_name: attribute of the attention module holding the output projection.
        n_layers, n_heads, n_kv_heads, d_head, d_model: geometry.
    """

    family: str
    layers_path: str
    embed_path: str
    attn_name: str
    out_proj_name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return _get(unwrap(model), self.layers_path)  # type: ignore[no-any-return]

    def layer(self, model: nn.Module, layer: int) -> nn.Module:
        return self.layers(model)[layer]

    def attn(self, model: nn.Module, layer: int) -> nn.Module:
        return getattr(self.layer(model, layer), self.attn_name)  # type: ignore[no-any-return]

    def out_proj(self, model: nn.Module, layer: int) -> nn.Module:
        """The attention output projection (``o_proj`` / ``c_proj``; maybe a LoRA wrapper)."""
        return getattr(self.attn(model, layer), self.out_proj_name)  # type: ignore[no-any-return]

    def head_slice(self, head: int) -> slice:
        return slice(head * self.d_head, (head + 1) * self.d_head)


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def unwrap(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def layout_for(model: nn.Module) -> ArchLayout:
    """The layout of ``model`` (plain or PEFT-wrapped).

    Raises:
        ValueError: the architecture is neither Llama- nor GPT-2-family.
    """
    base = unwrap(model)
    cfg = base.config
    if hasattr(base, "model") and hasattr(base.model, "layers"):
        layer0 = base.model.layers[0]
        if hasattr(layer0, "self_attn") and hasattr(layer0.self_attn, "o_proj"):
            n_heads = int(cfg.num_attention_heads)
            d_model = int(cfg.hidden_size)
            d_head = int(getattr(cfg, "head_dim", None) or d_model // n_heads)
            return ArchLayout(
                family="llama",
                layers_path="model.layers",
                embed_path="model.embed_tokens",
                attn_name="self_attn",
                out_proj_name="o_proj",
                n_layers=len(base.model.layers),
                n_heads=n_heads,
                n_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or n_heads),
                d_head=d_head,
                d_model=d_model,
            )
    if hasattr(base, "transformer") and hasattr(base.transformer, "h"):
        n_heads = int(cfg.n_head)
        d_model = int(cfg.n_embd)
        return ArchLayout(
            family="gpt2",
            layers_path="transformer.h",
            embed_path="transformer.wte",
            attn_name="attn",
            out_proj_name="c_proj",
            n_layers=len(base.transformer.h),
            n_heads=n_heads,
            n_kv_heads=n_heads,
            d_head=d_model // n_heads,
            d_model=d_model,
        )
    raise ValueError(
        f"interp supports Llama-family and GPT-2-family models; got {type(base).__name__}"
    )


# ---------------------------------------------------------------------------- plumbing
@contextlib.contextmanager
def _hooked(registrations: Sequence[tuple[nn.Module, str, Callable[..., Any]]]) -> Iterator[None]:
    """Register ``(module, "pre" | "pre_kw" | "post", fn)`` hooks; remove all in ``finally``."""
    handles: list[Any] = []
    try:
        for module, kind, fn in registrations:
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(fn))
            elif kind == "pre_kw":
                handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
            elif kind == "post":
                handles.append(module.register_forward_hook(fn))
            else:  # pragma: no cover - programming error
                raise ValueError(kind)
        yield
    finally:
        for h in handles:
            h.remove()


def _out_tensor(output: Any) -> torch.Tensor:
    """Transformers 5 decoder layers return a Tensor; older ones a tuple (hidden, ...)."""
    return output[0] if isinstance(output, tuple) else output  # type: ignore[no-any-return]


def _replace_out(output: Any, new: torch.Tensor) -> Any:
    return (new, *output[1:]) if isinstance(output, tuple) else new


def _layers_arg(layout: ArchLayout, layers: Sequence[int] | None) -> list[int]:
    return list(range(layout.n_layers)) if layers is None else [int(x) for x in layers]


# ---------------------------------------------------------------------------- capture
@contextlib.contextmanager
def capture(
    model: nn.Module,
    *,
    resid: Sequence[int] | Literal[False] | None = None,
    z: Sequence[int] | Literal[False] | None = False,
    detach: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """Record activations of every forward run inside the block.

    Args:
        model: plain or PEFT-wrapped causal LM.
        resid: residual-stream points to keep (0 = embeddings, ``l`` = output of layer
            ``l - 1``); ``None`` = all ``n_layers + 1``; ``False`` = none.
        z: layers whose output-projection input (per-head outputs, ``(B, T, H * D)``) to keep;
            ``None`` = all layers; ``False`` = none.
        detach: store detached tensors (set False to keep the graph for gradients).

    Yields:
        A dict filled during forward passes: ``resid.{l}`` and ``z.{l}`` -> ``(B, T, ·)``.
        A second forward inside the block overwrites the first.
    """
    layout = layout_for(model)
    store: dict[str, torch.Tensor] = {}
    regs: list[tuple[nn.Module, str, Callable[..., Any]]] = []

    def keep(name: str, t: torch.Tensor) -> None:
        store[name] = t.detach() if detach else t

    if resid is not False:
        points = list(range(layout.n_layers + 1)) if resid is None else list(resid)
        for p in points:
            if p == 0:
                # the input of layer 0: token (+ position, GPT-2) embeddings
                regs.append(
                    (layout.layer(model, 0), "pre_kw", lambda m, a, kw: _keep_input(keep, a, kw))
                )
            else:
                regs.append(
                    (
                        layout.layer(model, p - 1),
                        "post",
                        lambda m, i, o, p=p: keep(f"resid.{p}", _out_tensor(o)),
                    )
                )
    if z is not False:
        for layer in _layers_arg(layout, z):
            regs.append(
                (
                    layout.out_proj(model, layer),
                    "pre",
                    lambda m, args, layer=layer: keep(f"z.{layer}", args[0]),
                )
            )
    with _hooked(regs):
        yield store


def _keep_input(
    keep: Callable[[str, torch.Tensor], None], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    keep("resid.0", args[0] if args else kwargs["hidden_states"])


# ---------------------------------------------------------------------------- ablation
def _heads_by_layer(heads: Sequence[Head]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(int(layer), []).append(int(head))
    return out


@contextlib.contextmanager
def ablate_heads(
    model: nn.Module,
    heads: Sequence[Head],
    *,
    mode: AblationMode = "zero",
    means: Mapping[int, torch.Tensor] | None = None,
    pool: Mapping[int, torch.Tensor] | None = None,
    seed: int = 0,
) -> Iterator[None]:
    """Remove heads at the input of the attention output projection.

    Args:
        heads: ``(layer, head)`` pairs.
        mode: ``zero`` (slice := 0), ``mean`` (slice := the head's mean output, from
            ``means[layer]`` of shape ``(H, D)``) or ``resample`` (each position's slice := a
            vector drawn, seeded, from ``pool[layer]`` of shape ``(N, H, D)``: the head's
            outputs on *other* prompts, position-agnostic).
        seed: seed of the resample draws.
    """
    layout = layout_for(model)
    by_layer = _heads_by_layer(heads)
    H, D = layout.n_heads, layout.d_head
    if mode == "mean" and (means is None or any(ly not in means for ly in by_layer)):
        raise ValueError("mode='mean' needs means[layer] of shape (n_heads, d_head)")
    if mode == "resample" and (pool is None or any(ly not in pool for ly in by_layer)):
        raise ValueError("mode='resample' needs pool[layer] of shape (N, n_heads, d_head)")
    gen = torch.Generator().manual_seed(seed)

    def make(layer: int, hs: list[int]) -> Callable[..., Any]:
        idx = torch.tensor(hs, dtype=torch.long)

        def pre(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            B, T, _ = x.shape
            zz = x.view(B, T, H, D).clone()  # (B, T, H, D)
            if mode == "zero":
                zz[:, :, idx, :] = 0.0
            elif mode == "mean":
                assert means is not None
                zz[:, :, idx, :] = means[layer][idx].to(zz.dtype)  # (k, D) broadcast
            else:
                assert pool is not None
                src = pool[layer]  # (N, H, D)
                draw = torch.randint(0, src.shape[0], (B * T,), generator=gen)
                zz[:, :, idx, :] = src[draw][:, idx, :].view(B, T, len(hs), D).to(zz.dtype)
            return (zz.view(B, T, H * D), *args[1:])

        return pre

    regs = [(layout.out_proj(model, ly), "pre", make(ly, hs)) for ly, hs in by_layer.items()]
    with _hooked(regs):
        yield


@contextlib.contextmanager
def head_gates(
    model: nn.Module, gates: torch.Tensor, *, layers: Sequence[int] | None = None
) -> Iterator[torch.Tensor]:
    """Multiply each head's output-projection input slice by a gate (Michel et al. 2019).

    Args:
        gates: ``(n_layers_sel, H)`` shared by the batch, or ``(B, n_layers_sel, H)`` one per
            example (then ``∂(Σ_b loss_b)/∂gates[b] = ∂loss_b/∂gates[b]``: per-example
            gradients from one backward). Usually ones with ``requires_grad=True``.
        layers: the layers the gate rows refer to (default: all).

    Yields:
        ``gates`` itself.
    """
    layout = layout_for(model)
    sel = _layers_arg(layout, layers)
    H, D = layout.n_heads, layout.d_head

    def make(row: int) -> Callable[..., Any]:
        def pre(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            B, T, _ = x.shape
            g = gates[row] if gates.dim() == 2 else gates[:, row]  # (H,) or (B, H)
            g = g.view(1, 1, H, 1) if g.dim() == 1 else g.view(B, 1, H, 1)
            return ((x.view(B, T, H, D) * g.to(x.dtype)).view(B, T, H * D), *args[1:])

        return pre

    regs = [(layout.out_proj(model, ly), "pre", make(r)) for r, ly in enumerate(sel)]
    with _hooked(regs):
        yield gates


# ---------------------------------------------------------------------------- patching
@contextlib.contextmanager
def patch_residual(
    model: nn.Module,
    layer: int,
    values: torch.Tensor,
    positions: torch.Tensor,
) -> Iterator[None]:
    """Replace the residual stream after layer ``layer - 1`` (point ``resid.{layer}``).

    Args:
        layer: residual point, 1..n_layers (0, the embeddings, is not patchable here).
        values: ``(B, T, d_model)`` activations from the source run (e.g. the clean prompt).
        positions: ``(B, T)`` bool mask: where to write ``values``.
    """
    layout = layout_for(model)
    if not 1 <= layer <= layout.n_layers:
        raise ValueError(f"layer must be in 1..{layout.n_layers}, got {layer}")

    def post(module: nn.Module, args: Any, output: Any) -> Any:
        h = _out_tensor(output)  # (B, T, d_model)
        m = positions.to(h.device).unsqueeze(-1)  # (B, T, 1)
        return _replace_out(output, torch.where(m, values.to(h.dtype), h))

    with _hooked([(layout.layer(model, layer - 1), "post", post)]):
        yield


@contextlib.contextmanager
def steer(
    model: nn.Module,
    layer: int,
    vector: torch.Tensor,
    *,
    alpha: float = 1.0,
    positions: torch.Tensor | None = None,
) -> Iterator[None]:
    """Add ``alpha * vector`` (``(d_model,)``) to the residual stream point ``resid.{layer}``.

    ``positions`` (``(B, T)`` bool) limits where it is added; default every position.
    """
    layout = layout_for(model)
    if not 1 <= layer <= layout.n_layers:
        raise ValueError(f"layer must be in 1..{layout.n_layers}, got {layer}")

    def post(module: nn.Module, args: Any, output: Any) -> Any:
        h = _out_tensor(output)  # (B, T, d_model)
        add = (alpha * vector).to(h.dtype).view(1, 1, -1)
        if positions is not None:
            add = add * positions.to(h.dtype).unsqueeze(-1)
        return _replace_out(output, h + add)

    with _hooked([(layout.layer(model, layer - 1), "post", post)]):
        yield


# ---------------------------------------------------------------------------- model state
@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Use eager attention inside the block (needed for ``output_attentions=True``)."""
    base = unwrap(model)
    before = base.config._attn_implementation
    try:
        if before != "eager":
            base.set_attn_implementation("eager")
        yield
    finally:
        if base.config._attn_implementation != before:
            base.set_attn_implementation(before)


def lora_modules_by_layer(model: Any) -> dict[int, list[tuple[str, Any]]]:
    """LoRA-wrapped modules of a PEFT model grouped by decoder layer: ``{layer: [(name, m)]}``."""
    from peft.tuners.lora import LoraLayer

    layout = layout_for(model)
    out: dict[int, list[tuple[str, Any]]] = {}
    for li, layer_mod in enumerate(layout.layers(model)):
        for name, mod in layer_mod.named_modules():
            if isinstance(mod, LoraLayer):
                out.setdefault(li, []).append((name, mod))
    return out


@contextlib.contextmanager
def lora_knockout(model: nn.Module, layers: Sequence[int], *, scale: float = 0.0) -> Iterator[None]:
    """Scale the LoRA update of every adapted module in ``layers`` by ``scale`` (0 = off).

    Uses peft's ``scale_layer`` and then restores the saved ``scaling`` values exactly (not
    ``unscale_layer()``, which recomputes alpha / r and could differ from a custom scaling).
    """
    mods: list[Any] = [
        m for ly in layers for _n, m in lora_modules_by_layer(model).get(int(ly), [])
    ]
    saved = [dict(m.scaling) for m in mods]
    try:
        for m in mods:
            m.scale_layer(scale)
        yield
    finally:
        for m, s in zip(mods, saved, strict=True):
            m.scaling.clear()
            m.scaling.update(s)
