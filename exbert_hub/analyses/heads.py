"""Statistics of attention heads, per (layer, head), over ONE example's attention.

Every function takes ``attn: float32[..., n, n]`` (rows = queries, columns = keys, each row sums to 1;
the leading axes are usually ``[layers, heads]``) of one example WITHOUT padding (``exbert_hub.batching``
hands over unpadded matrices) and returns ``float32[...]`` (one number per head). Averages over a set of
examples are left to the caller (``ExamplesAnalysis.head_summary``).

Removing tokens (``keep``, e.g. the special tokens [CLS]/[SEP]/BOS) takes the kept rows and columns and
renormalises each kept row to sum to 1 (InterpreT and exBERT zeroed them without renormalising, so a
head that mostly looks at [SEP] seemed to attend to nothing). A row whose kept weights are all 0 stays 0.
"""

from __future__ import annotations

import numpy as np

STATISTICS = ("std", "entropy", "std_words", "entropy_words", "grammar_directed", "grammar_symmetric",
              "span_a_to_b", "span_b_to_a", "to_special", "to_previous", "to_next", "to_self")


def restrict(attn: np.ndarray, keep: np.ndarray | None, renormalise: bool = True) -> np.ndarray:
    """float32[..., k, k]: the rows and columns of the ``keep`` tokens (bool[n]), rows renormalised."""
    if keep is None:
        return attn
    keep = np.asarray(keep, dtype=bool)
    sub = attn[..., keep, :][..., keep]
    if renormalise:
        total = sub.sum(axis=-1, keepdims=True)
        sub = np.divide(sub, total, out=np.zeros_like(sub), where=total > 0)
    return sub


def attention_std(attn: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Standard deviation of the k x k entries of each head's matrix (population std, ddof=0).

    A head spreading attention evenly has std near 0; one that puts each row on one key has the largest
    std (InterpreT's statistic, here without padding, and without specials when ``keep`` drops them).
    """
    sub = restrict(attn, keep)
    if sub.shape[-1] == 0:
        return np.full(attn.shape[:-2], np.nan, dtype=np.float32)
    return sub.reshape(*sub.shape[:-2], -1).std(axis=-1, dtype=np.float64).astype(np.float32)


def attention_entropy(attn: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Mean over query rows of the row's entropy -sum_k p_k ln p_k (nats; 0 ln 0 = 0).

    0 when every row looks at a single key; ln(k) when every row is uniform over the k kept keys.
    """
    sub = restrict(attn, keep).astype(np.float64)
    if sub.shape[-1] == 0:
        return np.full(attn.shape[:-2], np.nan, dtype=np.float32)
    logs = np.log(sub, out=np.zeros_like(sub), where=sub > 0)
    return (-(sub * logs).sum(axis=-1)).mean(axis=-1).astype(np.float32)


def dependency_matrix(token_words: np.ndarray, word_heads: np.ndarray) -> np.ndarray:
    """float32[n, n] directed dependency matrix mapped onto the model's tokens.

    ``token_words``: int[n], the spaCy word of each token (-1: none, e.g. special tokens);
    ``word_heads``: int[words], the word index of each word's syntactic head (the root is its own head).
    ``D[i, j] = 1`` when token i belongs to a word w, token j to another word v, and v is w's head: every
    subword of a dependent points at every subword of its head. Tokens of the same word, the root's
    self-loop and tokens without a word give 0.
    """
    tw = np.asarray(token_words, dtype=np.int64)
    heads = np.asarray(word_heads, dtype=np.int64)
    has = tw >= 0
    head_of = np.where(has, heads[np.where(has, tw, 0)] if heads.size else -1, -2)
    d = (head_of[:, None] == tw[None, :]) & has[:, None] & has[None, :] & (tw[:, None] != tw[None, :])
    return d.astype(np.float32)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of x[..., m] with y[m] along the last axis (NaN when either is constant)."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean()
    num = (xc * yc).sum(axis=-1)
    den = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return r.astype(np.float32)


def grammar_correlation(attn: np.ndarray, dep: np.ndarray, keep: np.ndarray | None = None,
                        symmetric: bool = False) -> np.ndarray:
    """Pearson correlation between a head's attention and the dependency matrix (see ``dependency_matrix``).

    ``keep`` (bool[n], default all) chooses the tokens that take part: pass ``token_words >= 0`` (tokens
    with a word; ``head_statistics`` does). Raw attention weights are used (not renormalised: the
    correlation compares where the weight goes, the scale does not matter).

    - directed (``symmetric=False``): over all ordered pairs (i, j), i != j, correlate ``attn[i, j]``
      with ``dep[i, j]`` (1 when j's word is the head of i's word): high when dependents attend to their
      heads.
    - symmetric: correlate ``(attn[i, j] + attn[j, i]) / 2`` with ``max(dep[i, j], dep[j, i])`` over the
      unordered pairs i < j: high when a head links syntactically related words in either direction.

    NaN when there is no dependency edge among the kept tokens (or the attention is constant there).
    """
    a = attn if keep is None else attn[..., keep, :][..., keep]
    d = dep if keep is None else dep[np.ix_(keep, keep)]
    n = d.shape[-1]
    if symmetric:
        a = (a + np.swapaxes(a, -1, -2)) / 2
        d = np.maximum(d, d.T)
        pairs = np.triu(np.ones((n, n), dtype=bool), 1)
    else:
        pairs = ~np.eye(n, dtype=bool)
    if pairs.sum() < 2:
        return np.full(attn.shape[:-2], np.nan, dtype=np.float32)
    return _pearson(a[..., pairs], d[pairs])


def span_intensity(attn: np.ndarray, span_a: np.ndarray, span_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max attention from a token of span A to a token of span B, max from B to A), each float32[...].

    ``span_a``/``span_b``: token indexes (int[]) or bool[n]. NaN when a span has no token (e.g. the
    example has no such span). Coreference heads: the pronoun (A) attends strongly to its antecedent (B).
    """
    a = np.flatnonzero(span_a) if np.asarray(span_a).dtype == bool else np.asarray(span_a, dtype=np.int64)
    b = np.flatnonzero(span_b) if np.asarray(span_b).dtype == bool else np.asarray(span_b, dtype=np.int64)
    if a.size == 0 or b.size == 0:
        nan = np.full(attn.shape[:-2], np.nan, dtype=np.float32)
        return nan, nan.copy()
    ab = attn[..., a, :][..., b].reshape(*attn.shape[:-2], -1).max(axis=-1)
    ba = attn[..., b, :][..., a].reshape(*attn.shape[:-2], -1).max(axis=-1)
    return ab.astype(np.float32), ba.astype(np.float32)


def clark_statistics(attn: np.ndarray, special: np.ndarray) -> dict[str, np.ndarray]:
    """Clark et al. 2019 ("What does BERT look at?"), averaged over every query token (specials included):

    - ``to_special``: total weight on the special tokens (``special``: bool[n]),
    - ``to_previous``: weight on the token just before (queries 1..n-1),
    - ``to_next``: weight on the token just after (queries 0..n-2),
    - ``to_self``: weight on itself.
    Each float32[...]; previous/next are NaN for a 1-token example.
    """
    special = np.asarray(special, dtype=bool)
    n = attn.shape[-1]
    diag = np.diagonal(attn, axis1=-2, axis2=-1)  # [..., n]
    out = {
        "to_special": attn[..., special].sum(axis=-1).mean(axis=-1) if special.any()
        else np.zeros(attn.shape[:-2]),
        "to_self": diag.mean(axis=-1),
    }
    if n > 1:
        out["to_previous"] = np.diagonal(attn, offset=-1, axis1=-2, axis2=-1).mean(axis=-1)
        out["to_next"] = np.diagonal(attn, offset=1, axis1=-2, axis2=-1).mean(axis=-1)
    else:
        out["to_previous"] = out["to_next"] = np.full(attn.shape[:-2], np.nan)
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def head_statistics(attn: np.ndarray, special: np.ndarray, token_words: np.ndarray | None = None,
                    word_heads: np.ndarray | None = None, span_a: np.ndarray | None = None,
                    span_b: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every statistic of ``STATISTICS`` for one example: name -> float32[...] (``[layers, heads]``).

    ``std``/``entropy``: over all real tokens; ``std_words``/``entropy_words``: special tokens removed
    (rows renormalised); ``grammar_*``: see ``grammar_correlation`` (NaN without a parse);
    ``span_*``: see ``span_intensity`` (NaN without spans); the rest: ``clark_statistics``.
    """
    special = np.asarray(special, dtype=bool)
    words = ~special
    out = {
        "std": attention_std(attn),
        "entropy": attention_entropy(attn),
        "std_words": attention_std(attn, words),
        "entropy_words": attention_entropy(attn, words),
    }
    nan = np.full(attn.shape[:-2], np.nan, dtype=np.float32)
    if token_words is not None and word_heads is not None:
        tw = np.asarray(token_words)
        dep = dependency_matrix(tw, word_heads)
        has = tw >= 0
        out["grammar_directed"] = grammar_correlation(attn, dep, has)
        out["grammar_symmetric"] = grammar_correlation(attn, dep, has, symmetric=True)
    else:
        out["grammar_directed"], out["grammar_symmetric"] = nan, nan.copy()
    if span_a is not None and span_b is not None:
        out["span_a_to_b"], out["span_b_to_a"] = span_intensity(attn, span_a, span_b)
    else:
        out["span_a_to_b"], out["span_b_to_a"] = nan.copy(), nan.copy()
    out.update(clark_statistics(attn, special))
    return {k: out[k] for k in STATISTICS}
