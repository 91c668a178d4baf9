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


@dataclass
class AttentionStack:
    """Self-attention of an encoder or decoder, or the decoder's cross attention over the encoder.

    Per layer the pieces softmax was computed from: ``softmax(q . k * scale + bias + mask)``.
    Queries and keys are the model's own tensors after rotary embeddings; with grouped-query attention
    ``keys[layer]`` has fewer heads than ``queries[layer]`` and query head h reads key head
    ``h // (heads // kv_heads)``.
    """

    name: str  # "self" (single-stack models), "encoder", "decoder" or "cross"
    attentions: np.ndarray  # float32[layers, heads, q, k]
    contexts: np.ndarray | None  # float32[layers, q, heads * head_dim], None if not captured
    queries: list[np.ndarray] = field(default_factory=list)  # per layer float32[heads, q, head_dim]
    keys: list[np.ndarray] = field(default_factory=list)  # per layer float32[kv_heads, k, head_dim]
    scales: list[float] = field(default_factory=list)
    masks: list[np.ndarray | None] = field(default_factory=list)  # per layer float32[q, k] additive
    biases: list[np.ndarray | None] = field(default_factory=list)  # per layer float32[heads, q, k]

    @property
    def num_layers(self) -> int:
        return int(self.attentions.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.attentions.shape[1])

    @property
    def has_query_key(self) -> bool:
        return bool(self.queries)

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
        if self.masks[layer] is not None:
            mask = self.masks[layer][token]
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
    def attentions(self) -> np.ndarray:
        return self.main_stack.attentions

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
    def decoder_attentions(self) -> np.ndarray | None:
        return self.stacks["decoder"].attentions if "decoder" in self.stacks else None

    @property
    def cross_attentions(self) -> np.ndarray | None:
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
