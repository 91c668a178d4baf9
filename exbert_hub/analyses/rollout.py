"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

Each layer's attention, averaged over heads, is mixed with the identity for the residual connection
and row-normalised: ``Â_l = rownorm(0.5 * mean_h A_l + 0.5 * I)``. The rollout up to layer l is the
product ``R_l = Â_l · Â_{l-1} · ... · Â_0``: ``R_l[i, j]`` is how much of token j's input reaches
token i's output of layer l when attention is followed through every layer. Rows sum to 1.

    >>> from exbert_hub.analyses.rollout import attention_rollout
    >>> r = attention_rollout(a)        # float32[layers, T, T]; r[-1] is the rollout of the whole stack

Only self-attention stacks roll out ("self", "encoder", "decoder"): cross attention is not square.
Layers are read one at a time (``stack.attentions[l]``), so an engine that computes attention per
layer on demand never holds more than one layer here. The product is accumulated in float64.
"""

from __future__ import annotations

import numpy as np

from ..analysis import Analysis
from ..errors import InputError

ROLLOUT = "rollout"  # the name views use for this pseudo-layer


def rollout_stack_name(analysis: Analysis, stack: str | None) -> str:
    name = stack or ("encoder" if "encoder" in analysis.stacks else next(iter(analysis.stacks)))
    analysis.stack(name)  # raises InputError naming the stacks it has
    if name == "cross":
        raise InputError("attention rollout follows self-attention; cross attention is not square (pick encoder or decoder)")
    return name


def attention_rollout(analysis: Analysis, stack: str | None = None, *, residual: float = 0.5,
                      heads: list[int] | None = None) -> np.ndarray:
    """float32[layers, T, T]: the rollout after each layer (see the module docstring).

    residual: weight of the identity (0.5 in the paper). heads: the heads averaged (default all).
    """
    if not 0.0 <= float(residual) <= 1.0:
        raise InputError(f"residual must be between 0 and 1, got {residual!r}")
    name = rollout_stack_name(analysis, stack)
    st = analysis.stack(name)
    n_layers = st.num_layers
    first = np.asarray(st.attentions[0])
    t = int(first.shape[-1])
    if heads is not None:
        heads = sorted({int(h) for h in heads})
        if not heads or heads[0] < 0 or heads[-1] >= st.num_heads:
            raise InputError(f"heads must be a non-empty list from 0 to {st.num_heads - 1}")
    eye = np.eye(t, dtype=np.float64)
    out = np.empty((n_layers, t, t), dtype=np.float32)
    acc = eye
    for layer in range(n_layers):
        att = first if layer == 0 else np.asarray(st.attentions[layer])
        if heads is not None:
            att = att[heads]
        a_hat = (1.0 - residual) * att.mean(axis=0, dtype=np.float64) + residual * eye
        a_hat /= a_hat.sum(axis=-1, keepdims=True)
        acc = a_hat @ acc
        out[layer] = acc
    return out


__all__ = ["ROLLOUT", "attention_rollout", "rollout_stack_name"]
