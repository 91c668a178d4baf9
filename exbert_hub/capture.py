"""Record what each attention layer computes, by wrapping the model's own eager attention.

Every transformers 5 model family we support calls a module-level ``eager_attention_forward(module,
query, key, value, attention_mask, scaling=..., **kwargs)`` in its modeling file. We wrap that function
once per modeling module. Outside a recording the wrapper is a plain pass-through; inside one it keeps
references (no copies) to the exact tensors the softmax was computed from: query and key after any
rotary embedding (keys before grouped-query repetition), the additive mask, the scale, any position
bias (T5), the attention weights and each head's output before the output projection (the "context").
Attentions are therefore bit-identical to transformers' eager implementation.

A recording made with ``fused=True`` (what ``Engine.analyze`` uses) computes each layer's output with
``torch.nn.functional.scaled_dot_product_attention`` instead of the eager code: the same
``softmax(q.k * scale + bias + mask) @ v``, without materialising the [heads, q, k] weights (memory
O(T * head_dim) per head instead of O(T^2)). Queries, keys, mask and bias are recorded all the same,
so any head's weights can be recomputed exactly afterwards (``AttentionStack.attentions``). A causal
mask is recognised once per pass and described instead of kept (``MaskSpec``).

A recording made with ``trim=True`` hands the memory freed by each layer back to the system after the
layer's attention (``release_freed_memory``): a long pass keeps ~35 MB per layer (queries, keys, context,
hidden state) interleaved on the heap with the same layer's freed temporaries, which glibc otherwise keeps
(at 4,096 SmolLM2 tokens ~0.9 GB of the process's peak was such freed memory).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import sys
import threading
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

_ACTIVE: contextvars.ContextVar["Recording | None"] = contextvars.ContextVar("exbert_recording", default=None)
_PATCH_LOCK = threading.Lock()
_WRAPPED_FLAG = "__exbert_wrapped__"


def _load_malloc_trim():
    """glibc's malloc_trim, or None (other C libraries: musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_MALLOC_TRIM = _load_malloc_trim()


def release_freed_memory() -> bool:
    """Give the pages of freed heap memory back to the system (glibc ``malloc_trim(0)``: whole free pages,
    also in the middle of the heap). The allocator keeps what it frees below its mmap threshold (up to 32 MB
    per block), so the peak RSS of a pass that keeps tensors layer after layer would count every layer's
    freed temporaries. Costs a few milliseconds; returns False where the C library has no malloc_trim."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


@dataclass
class AttentionCall:
    """One call of a model's eager attention function (one layer of one stack)."""

    module: torch.nn.Module
    query: torch.Tensor  # [heads, q, head_dim]
    key: torch.Tensor  # [kv_heads, k, head_dim]
    mask: torch.Tensor | None  # additive, broadcastable to [heads, q, k]
    scaling: float
    position_bias: torch.Tensor | None  # [heads, q, k] (T5) or None
    weights: torch.Tensor | None  # [heads, q, k] in a recording with keep_weights, else None
    context: torch.Tensor  # [q, heads, head_dim]
    batch_context: torch.Tensor  # [batch, q, heads, head_dim]: every sequence of a batched pass (corpus builder)
    causal: bool = False  # the mask is exactly the causal pattern
    mask_fill: float = 0.0  # the mask's minimum (its fill above the diagonal when causal)
    mask_key: int = 0  # id() of the mask tensor the model passed (layers share it; ``mask`` is a view of it)


@dataclass
class Recording:
    calls: list[AttentionCall] = field(default_factory=list)
    fused: bool = False  # compute outputs with fused attention (no weights are made)
    keep_weights: bool = False  # keep a reference to each layer's weights (L x H x T x T alive at once)
    trim: bool = False  # release_freed_memory() after each recorded call (long inputs)
    # id(mask tensor) -> (the tensor, is it causal, its minimum): one check per mask tensor and pass
    # (layers share it; keyed by the tensor the model passes, not by a view of it, which is new per call)
    _causal: dict = field(default_factory=dict)

    def describe_mask(self, mask: torch.Tensor | None) -> tuple[bool, float]:
        """(is it causal, its minimum) of an additive mask [.., q, k]. Causal: 0 on and below the diagonal,
        its minimum (a very negative fill) above it; any other mask (padding, sliding window) is not."""
        if mask is None:
            return False, 0.0
        hit = self._causal.get(id(mask))
        if hit is not None and hit[0] is mask:
            return hit[1], hit[2]
        m = mask.reshape(-1, mask.shape[-2], mask.shape[-1])
        fill = m.min()
        causal = False
        if mask.shape[-1] == mask.shape[-2] >= 2:
            future = torch.ones(m.shape[-2:], dtype=torch.bool, device=m.device).triu_(1)
            causal = bool(fill < -1e4) and bool((m[:, ~future] == 0).all()) and bool((m[:, future] == fill).all())
        self._causal[id(mask)] = (mask, causal, float(fill))
        return causal, float(fill)

    def is_causal(self, mask: torch.Tensor | None) -> bool:
        """Whether an additive mask [.., q, k] is the causal pattern (see ``describe_mask``)."""
        return self.describe_mask(mask)[0]


# kwargs of an eager attention call that fused attention cannot reproduce: such calls run the eager code
_NOT_FUSABLE = ("softcap", "s_aux", "sinks")


def _fused(module, query, key, value, attention_mask, scaling, bias, causal, dropout):
    """What eager_attention_forward returns, through scaled_dot_product_attention: ([b, q, heads, d], None)."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads (repeat_kv)
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    add = attention_mask
    if bias is not None:
        add = bias if add is None else bias + add
    if add is not None:
        add = add.to(query.dtype)
    use_causal = causal and bias is None and query.shape[2] == key.shape[2]
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=None if use_causal else add, is_causal=use_causal,
        dropout_p=dropout if module.training else 0.0, scale=scaling,
    )
    return out.transpose(1, 2).contiguous(), None


def _wrap(original):
    def eager_with_recording(module, query, key, value, attention_mask, *args, **kwargs):
        rec = _ACTIVE.get()
        fused = (rec is not None and rec.fused and not args
                 and not any(kwargs.get(name) is not None for name in _NOT_FUSABLE))
        # once per mask tensor and pass (the layers share it), in eager recordings too
        causal, fill = rec.describe_mask(attention_mask) if rec is not None else (False, 0.0)
        if fused:
            scaling = kwargs.get("scaling")
            if scaling is None:
                scaling = query.size(-1) ** -0.5
            out = _fused(module, query, key, value, attention_mask, scaling, kwargs.get("position_bias"), causal,
                         float(kwargs.get("dropout", 0.0) or 0.0))
        else:
            out = original(module, query, key, value, attention_mask, *args, **kwargs)
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
                    weights=None if weights is None or not rec.keep_weights else weights[0],
                    context=attn_output[0],
                    batch_context=attn_output,
                    causal=causal,
                    mask_fill=fill,
                    mask_key=id(attention_mask),
                )
            )
            if rec.trim:
                release_freed_memory()
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
def recording(fused: bool = False, keep_weights: bool = False, trim: bool = False) -> Iterator[Recording]:
    """Collect every eager attention call made in this context (thread- and task-local).

    fused: compute the attention outputs with fused attention (no [heads, q, k] weights are made or
    kept: ``output_attentions`` returns nothing for them). keep_weights: keep each call's weights
    (``AttentionCall.weights``; otherwise None, so a layer's weights are freed as soon as it is done).
    trim: hand freed memory back to the system after each call (``release_freed_memory``).
    """
    rec = Recording(fused=fused, keep_weights=keep_weights, trim=trim)
    token = _ACTIVE.set(rec)
    try:
        yield rec
    finally:
        _ACTIVE.reset(token)

