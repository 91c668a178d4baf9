"""Bounds for comparing two float32 evaluations of the same function that round differently.

Two float32 paths (a batch with padding vs one sentence, another matmul kernel or CPU) add the same
terms in another order. Each dot product of n terms carries a rounding error of about sqrt(n) * eps
relative to its scale (errors of random sign add like a random walk; eps = 2**-23 = 1.19e-7), and a
stack of `depth` layers passes its errors on, adding each layer's own. The bound below is that
estimate times a margin of 2; the same difference on another CPU measured 1.056e-6 for MiniLM
(6 layers, n = 384), against a bound of 2.8e-5, while a real bug (a padding token attended to, a
wrong mask) moves values by 1e-2 or more.
"""

import math

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def f32_rel_bound(reduction: int, depth: int = 1, margin: float = 2.0) -> float:
    """Relative bound (difference / max(|values|, 1)) for `depth` chained layers of `reduction`-term sums."""
    return margin * EPS32 * math.sqrt(reduction) * max(depth, 1)


def f32_close(got, want, reduction: int, depth: int = 1, err_msg: str = "") -> None:
    """assert_allclose with an absolute bound scaled to the values: f32_rel_bound * max(|want|, 1)."""
    want = np.asarray(want)
    scale = max(float(np.abs(want).max()) if want.size else 0.0, 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=f32_rel_bound(reduction, depth) * scale, err_msg=err_msg)
