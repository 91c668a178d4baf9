"""Load any transformer by name once, and analyze texts with it: one forward pass -> one Analysis.

    >>> import exbert_hub
    >>> engine = exbert_hub.load("bert-base-uncased")
    >>> a = engine.analyze("The cat sat on the mat.")
    >>> a.attentions.shape            # (layers, heads, tokens, tokens)
    >>> q, k = engine.query_key(a, layer=3, head=5)
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from . import capture
from .analysis import (
    CAUSAL_LM,
    ENCODER,
    ENCODER_DECODER,
    MASKED_LM,
    Analysis,
    AttentionStack,
    TokenSequence,
)
from .errors import InputError, ModelNotFoundError, UnsupportedModelError
from .resolve import LOAD_LOCK, Resolved, resolve

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 1024
DEFAULT_MAX_CHARS = 100_000
# All attention arrays of one analysis together (layers * heads * tokens^2 * 4 bytes per stack)
DEFAULT_MAX_ATTENTION_BYTES = 2_000_000_000

_CROSS_NAMES = ("encoder_attn", "EncDecAttention", "crossattention", "cross_attn")


def detect_kind(config) -> str:
    """The kind of model a config describes, from its architecture names (the heads its weights have)."""
    if getattr(config, "is_encoder_decoder", False):
        return ENCODER_DECODER
    archs = list(getattr(config, "architectures", None) or [])
    if any("MaskedLM" in a for a in archs) or (config.model_type == "bert" and "BertForPreTraining" in archs):
        return MASKED_LM
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return CAUSAL_LM
    if not archs:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )

        if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            return MASKED_LM
        if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            return CAUSAL_LM
    return ENCODER


def _model_class(kind: str):
    import transformers as tf

    return {
        MASKED_LM: tf.AutoModelForMaskedLM,
        CAUSAL_LM: tf.AutoModelForCausalLM,
        ENCODER_DECODER: tf.AutoModelForSeq2SeqLM,
        ENCODER: tf.AutoModel,
    }[kind]


def _position_limit(config, tokenizer) -> int | None:
    """Longest input the model's position embeddings allow (None for relative positions such as T5)."""
    limit = None
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            limit = value
            break
    if limit is not None and config.model_type in {"roberta", "xlm-roberta", "camembert", "longformer"}:
        limit -= (config.pad_token_id or 0) + 1  # positions start after the padding index
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limit = tok_limit if limit is None else min(limit, tok_limit)
    return limit


@dataclass
class LoadedModel:
    """A model and tokenizer loaded once and shared by every Engine that asks for the same name."""

    resolved: Resolved
    model: torch.nn.Module
    tokenizer: object
    kind: str
    captures: bool  # eager attention is wrapped: queries, keys and contexts are recorded
    module_names: dict[int, str]
    forward_args: frozenset[str]
    nbytes: int
    lock: threading.Lock = field(default_factory=threading.Lock)


def _load_model(resolved: Resolved, kind: str | None, revision: str | None, trust_remote_code: bool) -> LoadedModel:
    with LOAD_LOCK:  # one from_pretrained at a time in this process (see resolve.LOAD_LOCK)
        return _load_model_locked(resolved, kind, revision, trust_remote_code)


def _load_model_locked(resolved: Resolved, kind: str | None, revision: str | None, trust_remote_code: bool):
    from transformers import AutoConfig, AutoTokenizer

    source = resolved.source
    # trust_remote_code is always passed explicitly: left unset, transformers asks on stdin whether to run
    # the code of a local folder whose config has an auto_map (and runs it if the user types "y")
    common = {"trust_remote_code": bool(trust_remote_code)}
    if resolved.origin == "hub":
        common["revision"] = revision
    try:
        config = AutoConfig.from_pretrained(source, **common)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise UnsupportedModelError(
            f"{resolved.name!r} needs its own Python code to run (its config.json has an auto_map); exbert-hub "
            "does not run a model's code unless you opt in with trust_remote_code=True (read that code first)."
        ) from err
    kind = kind or detect_kind(config)
    if kind not in (MASKED_LM, CAUSAL_LM, ENCODER, ENCODER_DECODER):
        raise InputError(f"unknown model kind {kind!r}: use one of masked-lm, causal-lm, encoder, encoder-decoder")
    try:
        model = _model_class(kind).from_pretrained(
            source, config=config, attn_implementation="eager", dtype=torch.float32, **common
        )
    except ValueError as err:
        raise UnsupportedModelError(
            f"{resolved.name!r} ({config.model_type}) cannot be loaded as a {kind} with eager attention, which "
            f"exbert-hub needs to read attention weights: {str(err).splitlines()[0]}"
        ) from err
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except Exception as err:  # noqa: BLE001
        raise ModelNotFoundError(f"{resolved.name!r} has no usable tokenizer in {source}: {err}") from err
    captures = capture.instrument(model)
    if not captures:
        log.warning("%s: attention code not recognised; queries, keys and contexts will be unavailable", resolved.name)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return LoadedModel(
        resolved=resolved,
        model=model,
        tokenizer=tokenizer,
        kind=kind,
        captures=captures,
        module_names={id(m): n for n, m in model.named_modules()},
        forward_args=frozenset(inspect.signature(model.forward).parameters),
        nbytes=nbytes,
    )


class ModelCache:
    """Thread-safe LRU cache of loaded models, bounded by count and by parameter memory.

    A model being loaded by one thread is waited for, never loaded a second time by another.
    """

    def __init__(self, max_models: int = 3, max_bytes: int = 8_000_000_000):
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self.loads = 0  # how many times a model was actually loaded (for tests)

    def get(self, key: tuple, loader) -> LoadedModel:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:  # loaded by another thread while we waited
                    self._items.move_to_end(key)
                    return self._items[key]
            loaded = loader()
            with self._lock:
                self.loads += 1
                self._items[key] = loaded
                self._evict(keep=key)
                self._key_locks.pop(key, None)
            return loaded

    def _evict(self, keep: tuple) -> None:
        def over() -> bool:
            total = sum(m.nbytes for m in self._items.values())
            return len(self._items) > self.max_models or total > self.max_bytes

        for key in list(self._items):
            if not over():
                break
            if key != keep:
                del self._items[key]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


MODEL_CACHE = ModelCache()


def load(
    name: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    kind: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    max_chars: int = DEFAULT_MAX_CHARS,
    cache: ModelCache | None = None,
) -> "Engine":
    """An Engine for ``name``: a Hugging Face Hub id, a local folder, or a packaged model when offline.

    The model is loaded once per process and shared (see ModelCache). ``trust_remote_code`` stays off
    unless you opt in; safetensors weights are preferred when a repository has both formats.
    ``kind`` forces one of "masked-lm", "causal-lm", "encoder", "encoder-decoder".
    """
    resolved = resolve(name, revision=revision, trust_remote_code=trust_remote_code)
    key = (resolved.source, revision, trust_remote_code, kind)
    # "cache or MODEL_CACHE" would ignore an empty cache (ModelCache has __len__, so it is falsy when empty)
    cache = MODEL_CACHE if cache is None else cache
    loaded = cache.get(key, lambda: _load_model(resolved, kind, revision, trust_remote_code))
    return Engine(loaded, max_tokens=max_tokens, max_chars=max_chars)


class Engine:
    """Analyzes texts with one loaded model. Cheap to create; the model itself is shared."""

    def __init__(self, loaded: LoadedModel, *, max_tokens: int = DEFAULT_MAX_TOKENS, max_chars: int = DEFAULT_MAX_CHARS):
        self._loaded = loaded
        self.max_tokens = max_tokens
        self.max_chars = max_chars

    # --- what the model is -----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._loaded.resolved.name

    @property
    def origin(self) -> str:
        """'local', 'hub' or 'packaged'."""
        return self._loaded.resolved.origin

    @property
    def kind(self) -> str:
        return self._loaded.kind

    @property
    def model(self) -> torch.nn.Module:
        return self._loaded.model

    @property
    def tokenizer(self):
        return self._loaded.tokenizer

    @property
    def config(self):
        return self._loaded.model.config

    @property
    def num_layers(self) -> int:
        c = self.config
        return int(getattr(c, "num_hidden_layers", None) or getattr(c, "num_layers", None) or getattr(c, "n_layer"))

    @property
    def num_heads(self) -> int:
        c = self.config
        return int(getattr(c, "num_attention_heads", None) or getattr(c, "num_heads", None) or getattr(c, "n_head"))

    @property
    def position_limit(self) -> int | None:
        return _position_limit(self.config, self.tokenizer)

    @property
    def token_limit(self) -> int:
        """The most tokens one analysis may have: the model's limit, the engine's cap, and a memory bound."""
        layers, heads = max(self.num_layers, 1), max(self.num_heads, 1)
        stacks = 3 if self.kind == ENCODER_DECODER else 1
        by_memory = int((DEFAULT_MAX_ATTENTION_BYTES / (4 * layers * heads * stacks)) ** 0.5)
        limits = [self.max_tokens, by_memory] + ([self.position_limit] if self.position_limit else [])
        return min(limits)

    @property
    def can_mask(self) -> bool:
        return self.kind == MASKED_LM and self.tokenizer.mask_token_id is not None

    def __repr__(self) -> str:
        return f"Engine({self.name!r}, kind={self.kind!r}, layers={self.num_layers}, heads={self.num_heads}, origin={self.origin!r})"

    # --- analysis --------------------------------------------------------------------------------
    def analyze(
        self,
        text: str,
        *,
        pair: str | None = None,
        mask: Sequence[int] | None = None,
        target: str | None = None,
        top_k: int = 5,
        truncate: bool = False,
    ) -> Analysis:
        """Run the model once over ``text`` and return everything the views need.

        pair: a second sentence (encoders), its tokens have segment 1.
        mask: token positions replaced by the mask token before the pass (masked LMs).
        target: decoder text of an encoder-decoder (default: the text itself).
        truncate: cut text longer than ``token_limit`` (reported in the Analysis) instead of raising.
        """
        text = self._check_text(text, "text")
        if pair is not None:
            pair = self._check_text(pair, "pair")
            if self.kind not in (MASKED_LM, ENCODER):
                raise InputError(f"sentence pairs are for encoders; {self.name} is a {self.kind} model")
        if mask and not self.can_mask:
            raise InputError(
                f"masking needs a masked language model with a mask token; {self.name} is a {self.kind} model"
            )
        if target is not None and self.kind != ENCODER_DECODER:
            raise InputError(f"a decoder target is for encoder-decoders; {self.name} is a {self.kind} model")
        if not 1 <= top_k <= 100:
            raise InputError(f"top_k must be between 1 and 100, got {top_k}")

        seq, dropped, extra = self._tokenize(text, pair, truncate)
        original_tokens = list(seq.tokens)
        masked = self._apply_mask(seq, mask or [])
        decoder_seq, decoder_dropped = None, 0
        if self.kind == ENCODER_DECODER:
            target = self._check_text(target, "target") if target is not None else text
            decoder_seq, decoder_dropped = self._decoder_tokens(target, truncate)

        inputs = {"input_ids": torch.as_tensor(seq.ids)[None], "attention_mask": torch.ones(1, len(seq), dtype=torch.long)}
        if extra.get("token_type_ids") is not None and "token_type_ids" in self._loaded.forward_args:
            inputs["token_type_ids"] = torch.as_tensor(extra["token_type_ids"])[None]
        if decoder_seq is not None:
            inputs["decoder_input_ids"] = torch.as_tensor(decoder_seq.ids)[None]

        with self._loaded.lock, torch.inference_mode(), capture.recording() as rec:
            out = self.model(**inputs, output_attentions=True, output_hidden_states=True, return_dict=True)
            stacks = self._stacks(out, rec.calls)
            hidden, decoder_hidden = self._hidden_states(out)
            predictions, note = self._predictions(out, top_k)

        return Analysis(
            model_name=self.name,
            kind=self.kind,
            text=text,
            pair=pair,
            input=seq,
            stacks=stacks,
            hidden_states=hidden,
            predictions=predictions,
            prediction_note=note,
            masked=masked,
            original_tokens=original_tokens,
            truncated=dropped > 0 or decoder_dropped > 0,
            dropped_tokens=dropped,
            decoder_dropped_tokens=decoder_dropped,
            target=target,
            decoder_input=decoder_seq,
            decoder_hidden_states=decoder_hidden,
        )

    def query_key(self, analysis: Analysis, layer: int, head: int, stack: str | None = None):
        """float32[q, head_dim], float32[k, head_dim]: exactly the vectors whose scaled dot product gave the attention."""
        return analysis.query_key(layer, head, stack)

    # --- steps of analyze ------------------------------------------------------------------------
    def _check_text(self, text, what: str) -> str:
        if not isinstance(text, str):
            raise InputError(f"the {what} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError(f"the {what} is empty: type a sentence to analyze")
        if len(text) > self.max_chars:
            raise InputError(
                f"the {what} has {len(text):,} characters; the limit is {self.max_chars:,}. Shorten it "
                "(or raise max_chars when loading)."
            )
        return text

    def _too_long(self, n: int, what: str) -> InputError:
        limit = self.token_limit
        why = []
        if self.position_limit and limit == self.position_limit:
            why.append(f"{self.name} has {self.position_limit} positions")
        if limit == self.max_tokens:
            why.append(f"the engine's cap is max_tokens={self.max_tokens}")
        if not why:
            why.append("more would need over 2 GB of attention arrays")
        return InputError(
            f"the {what} is {n:,} tokens; at most {limit:,} fit ({'; '.join(why)}). "
            "Shorten it, or pass truncate=True to analyze only the first tokens."
        )

    def _tokenize(self, text: str, pair: str | None, truncate: bool) -> tuple[TokenSequence, int, dict]:
        tok = self.tokenizer
        enc = tok(text, pair, return_offsets_mapping=bool(tok.is_fast), return_special_tokens_mask=True)
        n = len(enc["input_ids"])
        limit = self.token_limit
        dropped = 0
        if n > limit:
            if not truncate:
                raise self._too_long(n, "text" if pair is None else "text pair")
            enc = tok(
                text, pair, return_offsets_mapping=bool(tok.is_fast), return_special_tokens_mask=True,
                truncation=True, max_length=limit,
            )
            dropped = n - len(enc["input_ids"])
        sequence_ids = enc.sequence_ids() if tok.is_fast else [0] * len(enc["input_ids"])
        seq = self._sequence(enc, sequence_ids, [text, pair])
        return seq, dropped, {"token_type_ids": enc.get("token_type_ids")}

    def _sequence(self, enc, sequence_ids, texts: list[str | None]) -> TokenSequence:
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        tokens = self.tokenizer.convert_ids_to_tokens(ids.tolist())
        special = np.asarray(enc["special_tokens_mask"], dtype=bool)
        offsets = np.asarray(enc.get("offset_mapping") or [(0, 0)] * len(ids), dtype=np.int32).reshape(-1, 2)
        # segment: 1 from the first token of sentence B on (its closing special tokens included)
        segments = np.zeros(len(ids), dtype=np.int8)
        b = [i for i, s in enumerate(sequence_ids) if s == 1]
        if b:
            segments[b[0]:] = 1
        display = []
        for i, t in enumerate(tokens):
            s, e = offsets[i]
            src = texts[segments[i]] if sequence_ids[i] is not None else None
            if special[i] or src is None:
                display.append(t)
            elif e <= s:
                # a token covering no characters after offset trimming, e.g. GPT-2's lone "Ġ" (a space):
                # show what it decodes to, not the byte-level symbol
                display.append(self.tokenizer.decode([int(ids[i])]) or t)
            else:
                display.append(src[s:e])
            if special[i]:
                offsets[i] = (0, 0)
        return TokenSequence(tokens=tokens, display=display, ids=ids, offsets=offsets, special=special, segments=segments)

    def _apply_mask(self, seq: TokenSequence, positions: Sequence[int]) -> list[int]:
        masked = sorted({int(p) for p in positions})
        for p in masked:
            if not 0 <= p < len(seq):
                raise InputError(f"cannot mask token {p}: the text has {len(seq)} tokens (0 to {len(seq) - 1})")
            if seq.special[p]:
                raise InputError(f"token {p} ({seq.tokens[p]}) is a special token; mask a word piece instead")
        mask_token = self.tokenizer.mask_token
        for p in masked:
            seq.ids[p] = self.tokenizer.mask_token_id
            seq.tokens[p] = mask_token
            seq.display[p] = mask_token
        return masked

    def _decoder_tokens(self, target: str, truncate: bool) -> tuple[TokenSequence, int]:
        """Teacher forcing: the decoder reads the start token then the target shifted right by one."""
        tok = self.tokenizer
        enc = tok(target, return_offsets_mapping=bool(tok.is_fast), return_special_tokens_mask=True)
        limit = self.token_limit
        labels = list(enc["input_ids"])
        if len(labels) > limit:
            if not truncate:
                raise self._too_long(len(labels), "target")
        start = self.config.decoder_start_token_id
        if start is None:
            start = self.config.pad_token_id if self.config.bos_token_id is None else self.config.bos_token_id
        keep = min(len(labels), limit)
        shifted = {
            "input_ids": [start] + labels[: keep - 1],
            "special_tokens_mask": [1] + list(enc["special_tokens_mask"])[: keep - 1],
        }
        if "offset_mapping" in enc:
            shifted["offset_mapping"] = [(0, 0)] + list(enc["offset_mapping"])[: keep - 1]
        seq_ids = [None] + (enc.sequence_ids()[: keep - 1] if tok.is_fast else [0] * (keep - 1))
        return self._sequence(shifted, seq_ids, [target, None]), len(labels) - keep

    def _stacks(self, out, calls: list[capture.AttentionCall]) -> dict[str, AttentionStack]:
        if self.kind == ENCODER_DECODER:
            weights = {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions, "cross": out.cross_attentions}
        else:
            weights = {"self": out.attentions}
        for name, w in weights.items():
            if not w:
                raise UnsupportedModelError(
                    f"{self.name} returned no {name} attention weights even with eager attention; "
                    "its architecture does not expose attention outputs"
                )
        by_stack: dict[str, list[capture.AttentionCall]] = {name: [] for name in weights}
        for call in calls:
            by_stack[self._stack_of(call)].append(call)
        stacks = {}
        for name, w in weights.items():
            attn = torch.cat([x.float() for x in w], dim=0).numpy()
            layer_calls = by_stack.get(name, [])
            stack = AttentionStack(name=name, attentions=attn, contexts=None)
            if self._loaded.captures and len(layer_calls) == len(w):
                stack.contexts = torch.stack([c.context.reshape(c.context.shape[0], -1) for c in layer_calls]).float().numpy()
                for c in layer_calls:
                    stack.queries.append(c.query.float().numpy())
                    stack.keys.append(c.key.float().numpy())
                    stack.scales.append(c.scaling)
                    q, k = c.query.shape[-2], c.key.shape[-2]
                    stack.masks.append(None if c.mask is None else np.broadcast_to(c.mask.float().numpy()[0], (q, k)))
                    bias = None if c.position_bias is None else c.position_bias.float().numpy()
                    stack.biases.append(None if bias is None else np.broadcast_to(bias, (attn.shape[1], q, k)))
            elif self._loaded.captures:
                log.warning("%s: captured %d %s attention calls for %d layers; queries and keys dropped",
                            self.name, len(layer_calls), name, len(w))
            stacks[name] = stack
        return stacks

    def _stack_of(self, call: capture.AttentionCall) -> str:
        if self.kind != ENCODER_DECODER:
            return "self"
        name = self._loaded.module_names.get(id(call.module), "")
        if any(s in name for s in _CROSS_NAMES):
            return "cross"
        return "decoder" if "decoder" in name.split(".") else "encoder"

    def _hidden_states(self, out) -> tuple[np.ndarray, np.ndarray | None]:
        if self.kind == ENCODER_DECODER:
            enc = torch.cat(out.encoder_hidden_states, dim=0).float().numpy()
            dec = torch.cat(out.decoder_hidden_states, dim=0).float().numpy()
            return enc, dec
        return torch.cat(out.hidden_states, dim=0).float().numpy(), None

    def _predictions(self, out, top_k: int) -> tuple[list[list[tuple[str, float]]] | None, str]:
        logits = getattr(out, "logits", None)
        if self.kind == ENCODER or logits is None:
            return None, (
                f"{self.name} is an encoder without a language-model head, so it makes no token predictions"
            )
        probs = torch.softmax(logits[0].float(), dim=-1)
        top = torch.topk(probs, k=min(top_k, probs.shape[-1]), dim=-1)
        ids = top.indices.tolist()
        words = self.tokenizer.batch_decode([[i] for row in ids for i in row])
        values = top.values.tolist()
        preds = [
            [(words[r * len(row) + j], float(values[r][j])) for j in range(len(row))]
            for r, row in enumerate(ids)
        ]
        note = {
            MASKED_LM: "top predictions for each position",
            CAUSAL_LM: "top predictions for the token that follows each position",
            ENCODER_DECODER: "top predictions of the decoder for the token that follows each decoder position",
        }[self.kind]
        return preds, note
