"""Generation: a causal LM continues the text, then the whole text is analysed so every view shows the
generated tokens (marked) with their attention, and the logit lens covers them.

    >>> from exbert_hub.generation import generate
    >>> g = generate(engine, "The cat sat on the", max_new_tokens=8)              # greedy
    >>> g = generate(engine, "Once upon a time", max_new_tokens=20, sample=True, seed=3, temperature=0.8)
    >>> g.continuation, g.analysis.tokens, g.generated    # bool[T]: True for the generated tokens

The decoding loop is ours (one forward pass per new token with the model's key/value cache), so that
a seed makes sampling reproducible without touching torch's global random state. Greedy decoding picks
the argmax of the model's logits, as ``model.generate(do_sample=False)`` does (tested).

Which tokens are generated: the text is analysed again as prompt + continuation; a token is generated
when its characters start at or after the end of the prompt (``g.generated``; the same flags are set on
the analysis as ``analysis.generated``, see :func:`generated_flags`). Re-tokenising can merge a token
across the boundary; ``g.same_tokens`` says whether the analysed ids are exactly prompt + new ids.
"""

from __future__ import annotations

import inspect
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from .analysis import CAUSAL_LM, Analysis, kind_phrase
from .errors import InputError
from .inputs import as_text

# The most tokens one request may generate (a served app's visitors included): each is a forward pass.
MAX_NEW_TOKENS = 64
DEFAULT_NEW_TOKENS = 20


@dataclass
class Generation:
    """What :func:`generate` returns."""

    prompt: str
    continuation: str  # the decoded new tokens (special tokens skipped)
    new_ids: list[int]  # the token ids the model chose, in order (an end-of-text id included if it stopped)
    stopped: bool  # True when the model produced its end-of-text token before max_new_tokens
    analysis: Analysis  # of prompt + continuation
    generated: np.ndarray  # bool[T] over analysis.tokens
    same_tokens: bool  # analysis ids == prompt ids + new ids (no merge across the boundary)
    sample: bool
    seed: int | None


# (model name, prompt + continuation) -> characters of the prompt, for the generations of this process:
# an analysis of that text run again later (the app's store re-runs evicted analyses from their text)
# still knows which of its tokens were generated.
_BOUNDARIES: "OrderedDict[tuple[str, str], int]" = OrderedDict()
_MAX_BOUNDARIES = 1024
_BOUNDARY_LOCK = threading.Lock()


def _remember(model_name: str, text: str, prompt_chars: int) -> None:
    with _BOUNDARY_LOCK:
        _BOUNDARIES[(model_name, text)] = prompt_chars
        _BOUNDARIES.move_to_end((model_name, text))
        while len(_BOUNDARIES) > _MAX_BOUNDARIES:
            _BOUNDARIES.popitem(last=False)


def flags_after(analysis: Analysis, prompt_chars: int) -> np.ndarray:
    """bool[T]: the non-special tokens whose characters start at or after ``prompt_chars``."""
    starts = np.asarray(analysis.offsets)[:, 0]
    return (starts >= int(prompt_chars)) & ~np.asarray(analysis.special, dtype=bool)


def generated_flags(analysis: Analysis) -> np.ndarray:
    """bool[T]: which tokens of ``analysis`` were generated (all False for an analysis of typed text).

    From ``analysis.generated`` (set by :func:`generate`), else from the generations this process made
    of the same model and text."""
    flags = getattr(analysis, "generated", None)
    if flags is not None:
        return np.asarray(flags, dtype=bool)
    with _BOUNDARY_LOCK:
        boundary = _BOUNDARIES.get((analysis.model_name, analysis.text))
    if boundary is None:
        return np.zeros(len(analysis.tokens), dtype=bool)
    return flags_after(analysis, boundary)


def _check(engine, text, max_new_tokens, sample, seed, temperature, top_k, top_p, limit) -> None:
    if engine.kind != CAUSAL_LM:
        raise InputError(f"generation continues text with a causal LM; {engine.name} is {kind_phrase(engine.kind)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
            or not 1 <= int(max_new_tokens) <= limit:
        raise InputError(f"new tokens must be a whole number from 1 to {limit}, got {max_new_tokens!r}")
    if not isinstance(sample, (bool, np.bool_)):
        raise InputError(f"sample must be True or False, got {sample!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63):
        raise InputError(f"the seed must be a whole number from 0, got {seed!r}")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 < temperature <= 10:
        raise InputError(f"temperature must be a number above 0 and at most 10, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise InputError(f"top_k must be a whole number of at least 1 (or None), got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1):
        raise InputError(f"top_p must be a number above 0 and at most 1 (or None), got {top_p!r}")


def _eos_ids(engine) -> set[int]:
    ids = set()
    for source in (getattr(engine.model, "generation_config", None), engine.config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(x) for x in eos)
    if engine.tokenizer.eos_token_id is not None:
        ids.add(int(engine.tokenizer.eos_token_id))
    return ids


def _choose(logits: torch.Tensor, sample: bool, gen: torch.Generator | None, temperature: float,
            top_k: int | None, top_p: float | None) -> int:
    """The next token id from float32[vocab] logits."""
    if not sample:
        return int(torch.argmax(logits))
    logits = logits / float(temperature)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, int(top_k)).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < float(top_p)  # the smallest set reaching top_p
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask[order[keep]] = True
        probs = torch.where(mask, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=gen))


def continue_ids(engine, prompt_ids: list[int], max_new_tokens: int, *, sample: bool = False,
                 seed: int | None = None, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None) -> tuple[list[int], bool]:
    """(new ids, stopped at end-of-text): the decoding loop, one cached forward pass per token."""
    gen = None
    if sample:
        gen = torch.Generator()
        gen.manual_seed(int(seed) if seed is not None else int(torch.seed()))
    eos = _eos_ids(engine)
    model = engine.model
    new: list[int] = []
    with torch.inference_mode():
        ids = torch.as_tensor([prompt_ids], dtype=torch.long)
        out = model(input_ids=ids, use_cache=True, return_dict=True)
        for step in range(int(max_new_tokens)):
            nxt = _choose(out.logits[0, -1].float(), sample, gen, temperature, top_k, top_p)
            new.append(nxt)
            if nxt in eos:
                return new, True
            if step + 1 < max_new_tokens:
                # transformers 5.2x renamed past_key_values to cache (the old name warns)
                cache = getattr(out, "cache", None) or out.past_key_values
                name = "cache" if "cache" in _forward_args(model) else "past_key_values"
                out = model(input_ids=torch.as_tensor([[nxt]]), use_cache=True, return_dict=True, **{name: cache})
    return new, False


def _forward_args(model) -> frozenset[str]:
    return frozenset(inspect.signature(model.forward).parameters)


_LOCK = threading.Lock()  # one generation at a time per process: each is up to 64 forward passes


def generate(
    engine,
    text: str,
    *,
    max_new_tokens: int = DEFAULT_NEW_TOKENS,
    sample: bool = False,
    seed: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    limit: int = MAX_NEW_TOKENS,
    analyze_top_k: int = 5,
) -> Generation:
    """Continue ``text`` with the causal LM of ``engine``, then analyse prompt + continuation.

    Greedy by default; ``sample=True`` draws from the softmax (``temperature``, ``top_k``, ``top_p``)
    with a ``seed`` (None: a random one). At most ``limit`` new tokens (MAX_NEW_TOKENS), and never more
    than the engine's token limit leaves after the prompt. Wrong values raise InputError (one line).
    """
    _check(engine, text, max_new_tokens, sample, seed, temperature, top_k, top_p, int(limit))
    text = as_text(text, "the text", max_chars=engine.max_chars)
    if not text.strip():
        raise InputError("the text is empty: type the beginning of a text to continue")
    prompt_ids = list(engine.tokenizer(text)["input_ids"])
    room = engine.token_limit - len(prompt_ids)
    if room < 1:
        raise InputError(f"the text is {len(prompt_ids):,} tokens: no room left to generate within the "
                         f"{engine.token_limit:,}-token limit; shorten it")
    n_new = min(int(max_new_tokens), room)
    with _LOCK:
        new_ids, stopped = continue_ids(engine, prompt_ids, n_new, sample=bool(sample), seed=seed,
                                        temperature=float(temperature), top_k=top_k, top_p=top_p)
    continuation = engine.tokenizer.decode(new_ids, skip_special_tokens=True)
    if not continuation:
        # only an end-of-text token (or nothing visible): analyse the prompt; nothing is marked
        a = engine.analyze(text, top_k=analyze_top_k)
        a.generated = np.zeros(len(a.tokens), dtype=bool)
        return Generation(text, "", new_ids, stopped, a, a.generated, False, bool(sample), seed)
    a = engine.analyze(text + continuation, top_k=analyze_top_k)
    flags = flags_after(a, len(text))
    _remember(a.model_name, a.text, len(text))
    a.generated = flags  # read with generated_flags(analysis); the views mark these tokens
    visible = [i for i in new_ids if i not in engine.tokenizer.all_special_ids]
    same = a.ids.tolist() == prompt_ids + visible
    return Generation(text, continuation, new_ids, stopped, a, flags, same, bool(sample), seed)


__all__ = ["Generation", "MAX_NEW_TOKENS", "DEFAULT_NEW_TOKENS", "generate", "generated_flags", "flags_after",
           "continue_ids"]
