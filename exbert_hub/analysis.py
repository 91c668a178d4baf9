"""One forward pass of one model over one text, as numpy arrays with documented shapes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

# The kinds of model the engine tells apart (from the config and the heads the checkpoint has).
MASKED_LM = "masked-lm"
CAUSAL_LM = "causal-lm"
ENCODER = "encoder"  # an encoder without a language-model head: no predictions
ENCODER_DECODER = "encoder-decoder"
SEQUENCE_CLASSIFICATION = "sequence-classification"  # one label for the whole text (sentiment, NLI...)
TOKEN_CLASSIFICATION = "token-classification"  # one label per token (NER, POS...)
CLASSIFIERS = (SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION)


def kind_phrase(kind: str) -> str:
    """'an encoder model', 'a causal-lm model' (the article follows the kind's first letter)."""
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind} model"


@dataclass
class TokenSequence:
    """The tokens one stack reads.

    ``offsets[i]`` are character offsets into ``text`` (segment 0) or ``pair`` (segment 1) of the
    Analysis, ``(0, 0)`` for special tokens. ``segments[i]`` is 0 for sentence A, 1 for sentence B.
    """

    tokens: list[str]  # raw tokenizer tokens, e.g. "Ġcat" or "##s"
    display: list[str]  # readable text of each token (the text it covers, or the special token)
    ids: np.ndarray  # int64[n]
    offsets: np.ndarray  # int32[n, 2]
    special: np.ndarray  # bool[n]
    segments: np.ndarray  # int8[n]

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class Classification:
    """What a classification head says: label names (``config.id2label``) and their probabilities.

    ``logits`` and ``probabilities`` are float32[labels] for a sequence classifier (one prediction for
    the text) and float32[T, labels] for a token classifier (one per token). Probabilities are the
    softmax over labels, or each label's sigmoid for multi-label models (``config.problem_type ==
    "multi_label_classification"``; ``activation`` says which; "none" for regression heads).
    """

    labels: list[str]  # label names by id
    logits: np.ndarray
    probabilities: np.ndarray
    per_token: bool
    activation: str = "softmax"  # "softmax", "sigmoid" or "none"

    def top(self, k: int | None = None, position: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` most probable (label, probability), best first: of the text, or of token ``position``."""
        if self.per_token:
            if position is None:
                raise InputError("this is a token classifier: give the token position whose labels you want")
            if not 0 <= position < self.probabilities.shape[0]:
                raise InputError(f"token {position} is out of range: the text has {self.probabilities.shape[0]} tokens")
            row = self.probabilities[position]
        else:
            row = self.probabilities
        order = np.argsort(-row, kind="stable")[: len(self.labels) if k is None else k]
        return [(self.labels[i], float(row[i])) for i in order]

    @property
    def predicted(self) -> str | list[str]:
        """The most probable label of the text (sequence), or of each token (list, token classifiers)."""
        best = np.argmax(self.probabilities, axis=-1)
        return [self.labels[i] for i in best.tolist()] if self.per_token else self.labels[int(best)]


# Materialising more than this through np.asarray(stack.attentions) raises (index by layer or head instead)
MAX_DENSE_ATTENTION_BYTES = 2_000_000_000


@dataclass
class MaskSpec:
    """The additive mask of one layer, described rather than stored when a description suffices.

    kind "none": nothing masked; "causal": ``fill`` above the diagonal (key j > query i), 0 elsewhere;
    "dense": ``dense`` float32[q, k] (padding, sliding windows: whatever the model used).
    """

    kind: str
    fill: float = 0.0
    dense: np.ndarray | None = None

    def additive(self, q: int, k: int, rows=None) -> np.ndarray | None:
        """float32[q, k] (or the rows ``rows`` of it) as the model added it to the scores; None for "none"."""
        if self.kind == "none":
            return None
        if self.kind == "dense":
            return self.dense if rows is None else self.dense[rows]
        i = np.arange(q)[:, None] if rows is None else np.atleast_1d(np.arange(q)[rows])[:, None]
        out = np.where(np.arange(k)[None, :] > i, np.float32(self.fill), np.float32(0.0)).astype(np.float32)
        return out[0] if rows is not None and np.ndim(np.arange(q)[rows]) == 0 else out

    @property
    def nbytes(self) -> int:
        return 0 if self.dense is None else int(self.dense.nbytes)


class _Masks:
    """``stack.masks[layer]``: float32[q, k] additive or None, made on demand from the MaskSpecs."""

    def __init__(self, stack: "AttentionStack"):
        self._stack = stack

    def __len__(self) -> int:
        return len(self._stack.mask_specs)

    def __getitem__(self, layer: int) -> np.ndarray | None:
        q, k = self._stack.q_len, self._stack.k_len
        return self._stack.mask_specs[layer].additive(q, k)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class LazyAttention:
    """Attention weights float32[layers, heads, q, k] computed on demand from queries and keys.

    Nothing of size q x k is kept: ``att[l]`` (float32[heads, q, k]), ``att[l, h]`` ([q, k]) and
    ``att[l, h, i]`` ([k], one query row: O(k * head_dim) work) compute
    ``softmax(q . k * scale + bias + mask)`` exactly as the eager implementation does, in float32.
    ``att[l][...]``, slices and lists of layers or heads work like numpy indexing. ``np.asarray(att)``
    materialises everything (refused above MAX_DENSE_ATTENTION_BYTES); any other numpy attribute
    (``att.sum(-1)``, ``att.max()``) does so too. ``nbytes`` and ``size`` are those of the dense array.
    """

    dtype = np.dtype(np.float32)
    ndim = 4

    def __init__(self, stack: "AttentionStack"):
        self._stack = stack

    @property
    def shape(self) -> tuple[int, int, int, int]:
        s = self._stack
        return (s.num_layers, s.num_heads, s.q_len, s.k_len)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * 4

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"LazyAttention(shape={self.shape}, stack={self._stack.name!r})"

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis or k is None for k in key):
            return np.asarray(self)[key]
        layer, rest = key[0], key[1:]
        layers = np.arange(self.shape[0])[layer]
        if np.ndim(layers) > 0:  # several layers: stack them, then index the rest of each
            return np.stack([self[(int(i),) + rest] for i in layers]) if len(layers) else \
                np.zeros((0,) + self.shape[1:], np.float32)[(slice(None),) + rest]
        heads_key = rest[0] if rest else slice(None)
        rows_key = rest[1] if len(rest) > 1 else slice(None)
        heads = np.arange(self.shape[1])[heads_key]
        rows = np.arange(self.shape[2])[rows_key] if isinstance(rows_key, (int, np.integer)) else None
        out = self._stack.compute(int(layers), np.atleast_1d(heads), None if rows is None else int(rows))
        # out: float32[h, q or 1, k]
        if rows is not None:
            out = out[:, 0]
        else:
            out = out[:, rows_key] if len(rest) > 1 else out
        if np.ndim(heads) == 0:
            out = out[0]
        tail = rest[2:]
        return out[(Ellipsis,) + tail] if tail else out

    def __array__(self, dtype=None, copy=None):
        if self.nbytes > MAX_DENSE_ATTENTION_BYTES:
            raise InputError(
                f"all the attention of this analysis would take {self.nbytes / 1e9:.1f} GB; "
                "index it by layer or head (attentions[layer, head]) instead"
            )
        out = np.stack([self[i] for i in range(self.shape[0])]) if self.shape[0] else np.zeros(self.shape, np.float32)
        return out if dtype is None else out.astype(dtype)

    def __getattr__(self, name):  # numpy methods on the materialised array (small inputs)
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(np.asarray(self), name)


@dataclass
class AttentionStack:
    """Self-attention of an encoder or decoder, or the decoder's cross attention over the encoder.

    Per layer the pieces softmax was computed from: ``softmax(q . k * scale + bias + mask)``.
    Queries and keys are the model's own tensors after rotary embeddings; with grouped-query attention
    ``keys[layer]`` has fewer heads than ``queries[layer]`` and query head h reads key head
    ``h // (heads // kv_heads)``. ``attentions`` computes the weights from these on demand
    (LazyAttention), unless ``weights`` were materialised by the model (attention code the engine
    could not record): memory is O(layers x heads x T x head_dim), not O(layers x heads x T^2).
    """

    name: str  # "self" (single-stack models), "encoder", "decoder" or "cross"
    contexts: np.ndarray | None  # float32[layers, q, heads * head_dim], None if not captured
    queries: list[np.ndarray] = field(default_factory=list)  # per layer float32[heads, q, head_dim]
    keys: list[np.ndarray] = field(default_factory=list)  # per layer float32[kv_heads, k, head_dim]
    scales: list[float] = field(default_factory=list)
    mask_specs: list[MaskSpec] = field(default_factory=list)  # per layer
    biases: list[np.ndarray | None] = field(default_factory=list)  # per layer float32[heads, q, k] (T5)
    weights: np.ndarray | None = None  # float32[layers, heads, q, k] only when not computable from q and k

    @property
    def attentions(self) -> "LazyAttention | np.ndarray":
        """float32[layers, heads, q, k]: index it (``[l]``, ``[l, h]``, ``[l, h, i]``); see LazyAttention."""
        return self.weights if self.weights is not None else LazyAttention(self)

    @property
    def masks(self) -> _Masks:
        """Per layer float32[q, k] additive mask or None, made on demand (see ``mask_specs``)."""
        return _Masks(self)

    @property
    def num_layers(self) -> int:
        return int(self.weights.shape[0]) if self.weights is not None else len(self.queries)

    @property
    def num_heads(self) -> int:
        return int(self.weights.shape[1]) if self.weights is not None else int(self.queries[0].shape[0])

    @property
    def q_len(self) -> int:
        return int(self.weights.shape[2]) if self.weights is not None else int(self.queries[0].shape[1])

    @property
    def k_len(self) -> int:
        return int(self.weights.shape[3]) if self.weights is not None else int(self.keys[0].shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes this stack holds (not the size of the dense attention it can compute)."""
        arrays = [self.contexts, self.weights, *self.queries, *self.keys]
        total = sum(int(a.nbytes) for a in arrays if a is not None)
        total += sum(m.nbytes for m in {id(m): m for m in self.mask_specs}.values())
        seen = {}
        for b in self.biases:  # T5 shares one bias between layers: count its memory once
            if b is not None:
                seen[(b.__array_interface__["data"][0], b.shape)] = b
        return total + sum(int(np.prod(b.shape)) * 4 for b in seen.values())

    @property
    def has_query_key(self) -> bool:
        return bool(self.queries)

    def compute(self, layer: int, heads: np.ndarray, row: int | None = None) -> np.ndarray:
        """float32[len(heads), q (or 1 for ``row``), k]: ``softmax(q . k * scale + bias + mask)`` of a layer's heads."""
        if self.weights is not None:
            w = self.weights[layer][heads]
            return w if row is None else w[:, row:row + 1]
        import torch  # the same kernels as the eager implementation (bit-identical on the same machine)

        q_all, k_all = self.queries[layer], self.keys[layer]
        group = q_all.shape[0] // k_all.shape[0]
        heads = np.asarray(heads, dtype=np.int64)
        rows = slice(None) if row is None else slice(row, row + 1)
        n_q = self.q_len if row is None else 1
        out = np.empty((len(heads), n_q, self.k_len), np.float32)
        spec = self.mask_specs[layer] if self.mask_specs else MaskSpec("none")
        bias = self.biases[layer] if self.biases else None
        with torch.inference_mode():
            add = None  # the additive mask of these rows, made once for all heads
            if spec.kind == "causal":
                i = torch.arange(self.q_len)[rows][:, None]
                add = torch.where(torch.arange(self.k_len)[None, :] > i, torch.tensor(spec.fill), torch.tensor(0.0))
            elif spec.kind == "dense":
                add = torch.from_numpy(np.ascontiguousarray(spec.dense[rows]))
            # head by head: the temporaries are [q, k], not [heads, q, k] (600 MB per layer at 4k tokens)
            for j, h in enumerate(heads.tolist()):
                q = torch.from_numpy(np.ascontiguousarray(q_all[h][rows]))
                k = torch.from_numpy(k_all[h // group])
                scores = torch.matmul(q, k.transpose(0, 1)) * self.scales[layer]
                if bias is not None:
                    scores = scores + torch.from_numpy(np.array(bias[h][rows], dtype=np.float32))  # a copy: a broadcast view is read-only
                if add is not None:
                    scores = scores + add
                torch.softmax(scores, dim=-1, out=torch.from_numpy(out[j]))
        return out

    def query_key(self, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
        """float32[q, head_dim], float32[k, head_dim]: the vectors whose scaled dot product gave head ``head``."""
        if not self.has_query_key:
            raise InputError(
                f"queries and keys were not captured for the {self.name!r} attention of this model "
                "(its attention code does not go through transformers' eager attention function)"
            )
        self._check(layer, head)
        q = self.queries[layer]
        k = self.keys[layer]
        group = q.shape[0] // k.shape[0]
        return q[head], k[head // group]

    def score_terms(self, layer: int, head: int, token: int) -> dict:
        """Every term of the attention of query ``token`` in one head, for the neuron view.

        Keys: query[d], keys[k, d], products[k, d] (query * key elementwise), dot[k] (= products summed),
        scale, scaled[k], bias[k] or None, mask[k] or None, logits[k] (scaled + bias + mask), softmax[k].
        """
        q, k = self.query_key(layer, head)
        if not 0 <= token < q.shape[0]:
            raise InputError(f"token {token} is out of range: this attention has {q.shape[0]} query tokens")
        query = q[token]
        products = k * query[None, :]
        dot = products.sum(axis=1, dtype=np.float64).astype(np.float32)
        scale = self.scales[layer]
        scaled = dot * np.float32(scale)
        logits = scaled.copy()
        bias = mask = None
        if self.biases[layer] is not None:
            bias = self.biases[layer][head, token]
            logits = logits + bias
        if self.mask_specs and self.mask_specs[layer].kind != "none":
            mask = self.mask_specs[layer].additive(self.q_len, self.k_len, rows=token)
            logits = logits + mask
        shifted = logits.astype(np.float64) - logits.max()
        soft = np.exp(shifted)
        soft = (soft / soft.sum()).astype(np.float32)
        return {
            "query": query,
            "keys": k,
            "products": products,
            "dot": dot,
            "scale": scale,
            "scaled": scaled,
            "bias": bias,
            "mask": mask,
            "logits": logits,
            "softmax": soft,
        }

    def _check(self, layer: int, head: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise InputError(f"layer {layer} is out of range: the {self.name!r} attention has {self.num_layers} layers")
        if not 0 <= head < self.num_heads:
            raise InputError(f"head {head} is out of range: each layer has {self.num_heads} heads")


@dataclass
class Analysis:
    """Everything one forward pass shows. Shapes use T = number of tokens.

    ``attentions`` float32[layers, heads, T, T], ``hidden_states`` float32[layers + 1, T, hidden],
    ``contexts`` float32[layers, T, heads * head_dim]. For encoder-decoders these are the encoder's;
    the decoder's are in ``decoder_*`` and the cross attention in ``cross_attentions``.
    ``predictions[i]`` is the top-k ``(token, probability)`` at position i (masked LMs) or for the
    token following i (causal LMs, and the decoder of encoder-decoders), the top-k ``(label,
    probability)`` of token i (token classifiers); None without an LM head and for sequence
    classifiers, whose one prediction for the text is ``classification``.
    """

    model_name: str
    kind: str
    text: str
    pair: str | None
    input: TokenSequence
    stacks: dict[str, AttentionStack]
    hidden_states: np.ndarray
    predictions: list[list[tuple[str, float]]] | None
    prediction_note: str
    masked: list[int] = field(default_factory=list)
    original_tokens: list[str] = field(default_factory=list)  # before masking
    truncated: bool = False  # True when truncate=True cut the text, the pair or the decoder target
    dropped_tokens: int = 0  # tokens cut from the end of the text (and pair) when truncation was asked for
    decoder_dropped_tokens: int = 0  # tokens cut from the end of the decoder target
    target: str | None = None  # decoder text of encoder-decoders
    decoder_input: TokenSequence | None = None
    decoder_hidden_states: np.ndarray | None = None
    classification: Classification | None = None  # classification kinds only

    # --- the main (encoder or only) stack -------------------------------------------------------
    @property
    def main_stack(self) -> AttentionStack:
        return self.stacks["encoder"] if "encoder" in self.stacks else self.stacks["self"]

    @property
    def tokens(self) -> list[str]:
        return self.input.tokens

    @property
    def display_tokens(self) -> list[str]:
        return self.input.display

    @property
    def ids(self) -> np.ndarray:
        return self.input.ids

    @property
    def offsets(self) -> np.ndarray:
        return self.input.offsets

    @property
    def special(self) -> np.ndarray:
        return self.input.special

    @property
    def segments(self) -> np.ndarray:
        return self.input.segments

    @property
    def pair_start(self) -> int | None:
        """Index of the first token of sentence B, None without a pair."""
        if self.pair is None:
            return None
        idx = np.flatnonzero(self.input.segments == 1)
        return int(idx[0]) if idx.size else None

    @property
    def attentions(self) -> "LazyAttention | np.ndarray":
        """float32[layers, heads, T, T] of the main stack, computed on demand (see LazyAttention)."""
        return self.main_stack.attentions

    @property
    def nbytes(self) -> int:
        """Bytes this analysis holds: vectors, queries and keys (attention is computed on demand)."""
        total = self.hidden_states.nbytes
        if self.decoder_hidden_states is not None:
            total += self.decoder_hidden_states.nbytes
        return int(total + sum(s.nbytes for s in self.stacks.values()))

    @property
    def contexts(self) -> np.ndarray | None:
        return self.main_stack.contexts

    @property
    def num_layers(self) -> int:
        return self.main_stack.num_layers

    @property
    def num_heads(self) -> int:
        return self.main_stack.num_heads

    # --- encoder-decoders ----------------------------------------------------------------------
    @property
    def decoder_tokens(self) -> list[str] | None:
        return None if self.decoder_input is None else self.decoder_input.tokens

    @property
    def decoder_attentions(self) -> "LazyAttention | np.ndarray | None":
        return self.stacks["decoder"].attentions if "decoder" in self.stacks else None

    @property
    def cross_attentions(self) -> "LazyAttention | np.ndarray | None":
        return self.stacks["cross"].attentions if "cross" in self.stacks else None

    @property
    def decoder_contexts(self) -> np.ndarray | None:
        return self.stacks["decoder"].contexts if "decoder" in self.stacks else None

    # --- queries and keys ----------------------------------------------------------------------
    def stack(self, name: str | None = None) -> AttentionStack:
        if name is None:
            return self.main_stack
        if name not in self.stacks:
            raise InputError(f"no {name!r} attention in this analysis; it has: {', '.join(self.stacks)}")
        return self.stacks[name]

    def query_key(self, layer: int, head: int, stack: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """float32[q, head_dim], float32[k, head_dim] whose scaled dot product (plus mask and bias) gave the attention."""
        return self.stack(stack).query_key(layer, head)

    def score_terms(self, layer: int, head: int, token: int, stack: str | None = None) -> dict:
        """See :meth:`AttentionStack.score_terms`."""
        return self.stack(stack).score_terms(layer, head, token)
