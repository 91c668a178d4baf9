"""Record what each attention layer computes, by wrapping the model's own eager attention.

Every transformers 5 model family we support calls a module-level ``eager_attention_forward(module,
query, key, value, attention_mask, scaling=..., **kwargs)`` in its modeling file. We wrap that function
once per modeling module. Outside a recording the wrapper is a plain pass-through; inside one it keeps
references (no copies) to the exact tensors the softmax was computed from: query and key after any
rotary embedding (keys before grouped-query repetition), the additive mask, the scale, any position
bias (T5), the attention weights and each head's output before the output projection (the "context").
Attentions are therefore bit-identical to transformers' eager implementation.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from dataclasses import dataclass, field
from typing import Iterator

import torch

_ACTIVE: contextvars.ContextVar["Recording | None"] = contextvars.ContextVar("exbert_recording", default=None)
_PATCH_LOCK = threading.Lock()
_WRAPPED_FLAG = "__exbert_wrapped__"


@dataclass
class AttentionCall:
    """One call of a model's eager attention function (one layer of one stack)."""

    module: torch.nn.Module
    query: torch.Tensor  # [heads, q, head_dim]
    key: torch.Tensor  # [kv_heads, k, head_dim]
    mask: torch.Tensor | None  # additive, broadcastable to [heads, q, k]
    scaling: float
    position_bias: torch.Tensor | None  # [heads, q, k] (T5) or None
    weights: torch.Tensor  # [heads, q, k]
    context: torch.Tensor  # [q, heads, head_dim]
    batch_context: torch.Tensor  # [batch, q, heads, head_dim]: every sequence of a batched pass (corpus builder)


@dataclass
class Recording:
    calls: list[AttentionCall] = field(default_factory=list)


def _wrap(original):
    def eager_with_recording(module, query, key, value, attention_mask, *args, **kwargs):
        out = original(module, query, key, value, attention_mask, *args, **kwargs)
        rec = _ACTIVE.get()
        if rec is not None:
            # scaling is passed by keyword by every family; fall back to the default the eager code uses
            scaling = kwargs.get("scaling", args[0] if args else None)
            if scaling is None:
                scaling = query.size(-1) ** -0.5
            bias = kwargs.get("position_bias")
            attn_output, weights = out[0], out[1]
            rec.calls.append(
                AttentionCall(
                    module=module,
                    query=query[0],
                    key=key[0],
                    mask=None if attention_mask is None else attention_mask[0],
                    scaling=float(scaling),
                    position_bias=None if bias is None else bias[0],
                    weights=weights[0],
                    context=attn_output[0],
                    batch_context=attn_output,
                )
            )
        return out

    setattr(eager_with_recording, _WRAPPED_FLAG, True)
    eager_with_recording.__wrapped__ = original
    return eager_with_recording


def instrument(model: torch.nn.Module) -> bool:
    """Wrap the eager attention function of every modeling module ``model`` uses.

    Returns False when no module of the model has a wrappable eager attention function (then
    attentions still come from ``output_attentions`` but queries, keys and contexts are unavailable).
    """
    found = False
    with _PATCH_LOCK:
        for mod in {type(m).__module__ for m in model.modules()}:
            pymod = sys.modules.get(mod)
            fn = getattr(pymod, "eager_attention_forward", None)
            if fn is None:
                continue
            found = True
            if not getattr(fn, _WRAPPED_FLAG, False):
                setattr(pymod, "eager_attention_forward", _wrap(fn))
    return found


@contextlib.contextmanager
def recording() -> Iterator[Recording]:
    """Collect every eager attention call made in this context (thread- and task-local)."""
    rec = Recording()
    token = _ACTIVE.set(rec)
    try:
        yield rec
    finally:
        _ACTIVE.reset(token)

