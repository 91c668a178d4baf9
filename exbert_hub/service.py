"""What the app's tabs and its HTTP API share: engines, the one analysis store, and plain functions
over an analysis (``summarize``, ``attention_matrix``, ``model_info``). No Gradio components here.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from . import engine as _engine
from .analysis import CLASSIFIERS, ENCODER, ENCODER_DECODER, MASKED_LM, Analysis
from .budget import Budget, analysis_bytes, release_freed_memory
from .errors import InputError
from .policy import Policy

# the kinds of model that read a sentence pair (B after A): encoders, masked LMs, classifiers (NLI...)
PAIR_KINDS = (MASKED_LM, ENCODER, *CLASSIFIERS)


def get_engine(model, *, policy: Policy | None = None, remote: bool = False) -> "_engine.Engine":
    """The engine of ``model``; with a policy, a visitor's name is checked before anything is loaded."""
    if model is not None and not isinstance(model, str):
        raise InputError(f"the model must be a name (a Hub id such as bert-base-uncased), got {type(model).__name__}")
    model = (model or "").strip()
    if not model:
        raise InputError("enter a model name: a Hugging Face Hub id such as bert-base-uncased, or a local folder")
    if len(model) > 300:
        raise InputError(f"the model name has {len(model)} characters; a Hub id has at most 96")
    if policy is None:
        return _engine.load(model)
    return _engine.load(model, policy=policy, remote=remote)


def analysis_nbytes(a: Analysis) -> int:
    """Bytes an analysis holds (what the store counts against its limit): attention is computed on demand,
    so this is its queries, keys, contexts and hidden states, never a dense T x T array."""
    return int(a.nbytes)


@dataclass(frozen=True)
class Request:
    """What one analysis was asked for; enough to run it again."""

    model: str
    text: str
    pair: str | None = None
    mask: tuple[int, ...] = ()
    truncate: bool = False  # cut text longer than the model's limit (the UI) instead of failing (the API)
    target: str | None = None  # the decoder's text of an encoder-decoder (None: the text itself)

    @property
    def key(self) -> str:
        fields = [self.model, self.text, self.pair, list(self.mask), self.truncate]
        if self.target is not None:  # (keys of requests without a target stay what they were)
            fields.append(["target", self.target])
        blob = json.dumps(fields, ensure_ascii=False)
        return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


class AnalysisStore:
    """Recent analyses by key (LRU, bounded by count and bytes), shared by all sessions.

    The browser refers to an analysis by its key (lazy layers, masking); an evicted analysis is run
    again from its request, which is kept much longer than the arrays.
    """

    def __init__(self, max_items: int = 32, max_bytes: int = 3_000_000_000, max_requests: int = 2_000,
                 budget: Budget | None = None):
        self.max_items, self.max_bytes, self.max_requests = max_items, max_bytes, max_requests
        self.budget = budget  # work in progress is reserved here before it runs (None: not counted)
        self._items: OrderedDict[str, tuple[Analysis, int]] = OrderedDict()
        self._requests: OrderedDict[str, Request] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, req: Request, eng: "_engine.Engine | None" = None) -> tuple[str, Analysis]:
        """(key, analysis) of ``req``: kept, or computed with ``eng`` (default: the engine of req.model)."""
        key = req.key
        with self._lock:
            self._requests[key] = req
            self._requests.move_to_end(key)
            while len(self._requests) > self.max_requests:
                self._requests.popitem(last=False)
            if key in self._items:
                self._items.move_to_end(key)
                return key, self._items[key][0]
        eng = eng or get_engine(req.model)
        pair = req.pair if req.pair and eng.kind in PAIR_KINDS else None
        # encoder-decoders: the second text (the app's second box, the API's `pair`) is the decoder's text
        target = req.target if req.target is not None or eng.kind != ENCODER_DECODER else req.pair
        extra = {"target": target} if target is not None else {}  # (other kinds: the engine says no)
        if self.budget is None:
            analysis = eng.analyze(req.text, pair=pair, mask=list(req.mask) or None, top_k=5, truncate=req.truncate,
                                   **extra)
        else:
            # an upper bound of the tokens before tokenizing: every token covers at least one character
            tokens = min(eng.token_limit, len(req.text) + len(pair or "") + 4)
            with self.budget.reserve(analysis_bytes(eng, tokens)):
                analysis = eng.analyze(req.text, pair=pair, mask=list(req.mask) or None, top_k=5,
                                       truncate=req.truncate, **extra)
        with self._lock:
            self._items[key] = (analysis, analysis_nbytes(analysis))
            self._evict(keep=key)
        release_freed_memory()  # the forward pass's buffers and any evicted analysis are free now
        return key, analysis

    def request(self, key: str) -> Request:
        with self._lock:
            if key not in self._requests:
                raise InputError("this analysis is no longer available: press Analyze again")
            return self._requests[key]

    def get(self, key: str) -> Analysis:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        return self.run(self.request(key))[1]

    def model_of(self, key: str | None) -> str | None:
        """The model of the analysis ``key`` (None when unknown)."""
        with self._lock:
            req = self._requests.get(key) if key else None
        return req.model if req else None

    def _evict(self, keep: str) -> None:
        while len(self._items) > 1:
            total = sum(n for _, n in self._items.values())
            if len(self._items) <= self.max_items and total <= self.max_bytes:
                break
            oldest = next(k for k in self._items if k != keep)
            del self._items[oldest]

    def __len__(self) -> int:
        return len(self._items)


STORE = AnalysisStore()



class StoreRef:
    """What a view component keeps of the app's AnalysisStore: ``get(key)`` and ``put(analysis)``.

    Gradio copies every constructor argument a component keeps as an attribute into the page config
    and deep-copies that config on each page request; a plain store there would deep-copy every cached
    analysis (GBs at 1k tokens: page loads took 20+ s). Copies of this reference are itself.
    """

    def __init__(self, store: "AnalysisStore"):
        self._store = store

    def get(self, key: str) -> Analysis:
        return self._store.get(key)

    def put(self, analysis: Analysis) -> str:
        raise NotImplementedError("the app builds view values with its own keys (AnalysisStore.run)")

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __repr__(self) -> str:
        return "StoreRef(AnalysisStore)"


def _predictions_json(preds) -> list | None:
    if preds is None:
        return None
    return [[{"token": str(w), "prob": float(p)} for w, p in row] for row in preds]


def stack_of(a: Analysis, stack: str | None) -> str:
    """The name of the attention stack ``stack`` of an analysis: None is the main one (the encoder or the
    only stack); a name it does not have (or not a short string) raises InputError listing its stacks."""
    if stack is None or (isinstance(stack, str) and not stack.strip()):
        return a.main_stack.name
    name = stack.strip().lower() if isinstance(stack, str) and len(stack) <= 20 else None
    if name not in a.stacks:
        shown = stack[:20] if isinstance(stack, str) else type(stack).__name__
        raise InputError(f"stack {shown!r} is not in this analysis; choose one of: {', '.join(a.stacks)}")
    return name


def link_stack(analysis, view: dict) -> tuple[str, str | None]:
    """(stack, note) of a view state: its ``stack`` (or the deep link's ``stack`` parameter) when the
    analysis has it; otherwise the main stack, and a note saying why (a link is never an error page)."""
    wanted = view.get("stack") or (view.get("query") or {}).get("stack")
    main = analysis.main_stack.name
    if not wanted:
        return main, None
    try:
        return stack_of(analysis, str(wanted)), None
    except InputError:
        return main, (f"The link asks for the {str(wanted)[:20]!r} attention; this analysis has "
                      f"{', '.join(analysis.stacks)}: showing the {main} attention.")


def _stack_tokens(a: Analysis, seq: str) -> list[str]:
    return list((a.decoder_input if seq == "decoder" else a.input).tokens)


def summarize(eng: "_engine.Engine", a: Analysis, stack: str | None = None) -> dict:
    """The JSON returned by /analyze: tokens, shapes, kind and top predictions of one analysis.

    ``stack`` (one of ``out["stacks"]``; default the main one) chooses what ``layers``/``heads`` and
    ``query_tokens``/``key_tokens`` describe: for "cross" the queries are the decoder's tokens and the keys
    the encoder's."""
    from .views.head_view import stack_sequences

    name = stack_of(a, stack)
    st = a.stack(name)
    q_seq, k_seq = stack_sequences(name)
    out = {
        "model": a.model_name,
        "kind": a.kind,
        "tokens": list(a.tokens),
        "display_tokens": list(a.display_tokens),
        "special": [bool(x) for x in a.special],
        "segments": [int(x) for x in a.segments],
        "layers": int(st.num_layers),
        "heads": int(st.num_heads),
        "stacks": list(a.stacks),
        "stack": name,
        "query_tokens": _stack_tokens(a, q_seq),
        "key_tokens": _stack_tokens(a, k_seq),
        "masked": [int(x) for x in a.masked],
        "can_mask": bool(eng.can_mask),
        "token_limit": int(eng.token_limit),
        "truncated": bool(a.truncated),
        "predictions": _predictions_json(a.predictions),
        "prediction_note": a.prediction_note,
    }
    if a.decoder_input is not None:
        out["decoder_tokens"] = list(a.decoder_input.tokens)
        out["decoder_display_tokens"] = list(a.decoder_input.display)
    return out


def model_info(model) -> dict:
    """/model_info's dict for a model name or an Engine."""
    eng = model if isinstance(model, _engine.Engine) else get_engine(model)
    return {
        "model": eng.name,
        "kind": eng.kind,
        "origin": eng.origin,
        "layers": eng.num_layers,
        "heads": eng.num_heads,
        "token_limit": eng.token_limit,
        "can_mask": eng.can_mask,
    }


def check_layer_head(a: Analysis, layer: int, head: int, stack: str | None = None) -> None:
    s = a.stack(stack_of(a, stack))
    if not 0 <= int(layer) < s.num_layers:
        raise InputError(f"layer {layer} is out of range: the model has {s.num_layers} layers (0 to {s.num_layers - 1})")
    if not -1 <= int(head) < s.num_heads:
        raise InputError(f"head {head} is out of range: each layer has {s.num_heads} heads (0 to {s.num_heads - 1}, or -1 for their mean)")


def attention_matrix(a: Analysis, layer: int, head: int, stack: str | None = None) -> np.ndarray:
    """float32[q, k] attention of one head (head = -1: the mean of all heads) of ``stack`` (default the main
    one; "cross": decoder queries x encoder keys) at full precision."""
    check_layer_head(a, layer, head, stack)
    att = a.stack(stack_of(a, stack)).attentions[int(layer)]
    return att.mean(axis=0) if int(head) == -1 else att[int(head)]
