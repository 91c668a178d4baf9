"""Compact transport of attention (and other) arrays to the browser: uint8 in base64, never float JSON.

Float JSON costs ~19 characters per weight and made BertViz pages hundreds of MB; one byte per weight
(4/3 of that in base64) draws in a fraction of a second. The browser side is
``window.exbertHub.decodeAttention(payload)`` in ``common.js``.

Payload (a JSON-safe dict)::

    {"shape": [L, H, T, T], "b64": "...", "encoding": "uint8", "transform": "sqrt", "scale": 0.98}

Precision choice -- square-root quantisation. Attention rows are softmax outputs: a few large weights
and many small ones. Linear uint8 would round every weight below 1/510 (~0.002) to zero, which at 500+
tokens is *most* weights (uniform attention over 1,000 tokens is 0.001). We store instead
``q = round(255 * sqrt(v / scale))`` and decode ``v = scale * (q / 255) ** 2``:

* the smallest non-zero weight kept is ``scale * (0.5 / 255) ** 2`` ~= 3.8e-6 (linear: 2e-3);
* the absolute error is at most ~``scale * sqrt(v) / 255`` (0.4 % of the scale at v = 1, 0.04 % at
  v = 0.01, i.e. about 4 % relative there), so large weights stay accurate to the eye and small
  weights stay visible and ordered;
* ``scale`` is the array's maximum (1.0 for an all-zero array), so arrays whose values stay well
  below 1 (rollout, averages) still use the whole byte range.

Views that need exact numbers fetch one head at full precision lazily (a server function).

``encode_signed`` does the same for signed data (queries, keys, products of the neuron view): linear,
symmetric around 128, ``scale`` = max |x|.
"""

from __future__ import annotations

import base64

import numpy as np

UINT8 = "uint8"
SQRT = "sqrt"
LINEAR = "linear"
SIGNED = "signed"


def _finite(arr) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    return a


def _payload(q: np.ndarray, shape, transform: str, scale: float) -> dict:
    return {
        "shape": [int(s) for s in shape],
        "b64": base64.b64encode(np.ascontiguousarray(q, dtype=np.uint8).tobytes()).decode("ascii"),
        "encoding": UINT8,
        "transform": transform,
        "scale": float(scale),
    }


def encode_attention(arr: np.ndarray, *, transform: str = SQRT) -> dict:
    """Quantise non-negative weights (attention in [0, 1]) to one byte each; see the module docstring.

    ``transform`` is "sqrt" (default, small weights stay visible) or "linear". Negative values and NaN
    are stored as 0.
    """
    if transform not in (SQRT, LINEAR):
        raise ValueError(f"transform must be {SQRT!r} or {LINEAR!r}, got {transform!r}")
    a = np.clip(_finite(arr), 0.0, None)
    peak = float(a.max()) if a.size else 0.0
    scale = peak if peak > 0 else 1.0
    x = a / np.float32(scale)
    if transform == SQRT:
        x = np.sqrt(x)
    q = np.rint(x * 255.0).clip(0, 255).astype(np.uint8)
    return _payload(q, a.shape, transform, scale)


def encode_signed(arr: np.ndarray) -> dict:
    """Quantise signed values linearly to one byte: ``q = round(127 * x / scale) + 128``, scale = max |x|."""
    a = _finite(arr)
    peak = float(np.abs(a).max()) if a.size else 0.0
    scale = peak if peak > 0 else 1.0
    q = (np.rint(a / np.float32(scale) * 127.0) + 128).clip(1, 255).astype(np.uint8)
    return _payload(q, a.shape, SIGNED, scale)


def decode_attention(payload: dict) -> np.ndarray:
    """The float32 array a payload encodes (what the browser sees), for tests and Python clients."""
    if payload.get("encoding", UINT8) != UINT8:
        raise ValueError(f"unknown encoding {payload.get('encoding')!r}")
    shape = tuple(int(s) for s in payload["shape"])
    q = np.frombuffer(base64.b64decode(payload["b64"]), dtype=np.uint8)
    if q.size != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"payload has {q.size} bytes for shape {shape}")
    q = q.reshape(shape).astype(np.float32)
    scale = np.float32(payload.get("scale", 1.0))
    transform = payload.get("transform", SQRT)
    if transform == SQRT:
        return scale * (q / 255.0) ** 2
    if transform == LINEAR:
        return scale * (q / 255.0)
    if transform == SIGNED:
        return scale * (q - 128.0) / 127.0
    raise ValueError(f"unknown transform {transform!r}")


def max_abs_error(v: np.ndarray | float, scale: float = 1.0) -> np.ndarray | float:
    """An upper bound of |decode(encode(v)) - v| for sqrt-encoded weights ``v`` (documentation and tests)."""
    v = np.asarray(v, dtype=np.float64) / scale
    step = 0.5 / 255.0
    return scale * (2 * np.sqrt(v) * step + step * step)
