"""The logit lens: what each layer would predict if the model stopped there.

Every layer's hidden state goes through the model's OWN output path: its final norm and output head
(causal LMs: e.g. GPT-2 ``ln_f`` + ``lm_head``, Llama ``model.norm`` + ``lm_head``), the MLM head of
masked LMs (BERT's ``cls.predictions``: dense, activation, LayerNorm, decoder), and the decoder of
encoder-decoders (T5's ``final_layer_norm``, the ``d_model ** -0.5`` scaling of tied embeddings, then
``lm_head``; BART's ``lm_head`` + ``final_logits_bias``).

The last hidden state transformers returns is the model's ``last_hidden_state``, which already went
through the final norm: the norm is applied to every other layer and not again to the last one, so the
lens at the last layer is exactly the model's own prediction (tested against the logits of
transformers' forward pass for BERT-, GPT-2-, Llama- and T5-kind models).

    >>> from exbert_hub.analyses.lens import logit_lens, target_trace
    >>> lens = logit_lens(a, engine, top_k=5)          # every layer, every position
    >>> lens.top_ids.shape                             # (layers + 1, positions, 5); layer 0: embeddings
    >>> lens.tokens(engine.tokenizer)[30][-1]           # top-5 words at the last position, last layer
    >>> trace = target_trace(a, engine, position=-1, token_id=42)
    >>> trace.ranks, trace.probs                       # int64[layers + 1] (1 = top), float32[layers + 1]

Cost: one [positions, hidden] x [hidden, vocab] product per layer, only for the positions asked for (the
lens view asks for the rows it shows). The float32 lens (the default) computes it in chunks of positions,
so that at most ``chunk x vocab`` logits exist at once: SmolLM2 at 1k tokens, 31 products of
1,024 x 576 x 49,152, ~10 s on 2 CPU cores. The fast lens (``fast=True``: exact top-k ids, bounded
probabilities) takes ~1.2 s there on a CPU with AMX, where the fused kernel of ``lens_kernel.c`` makes the
bfloat16 products and reduces them in the cache, and ~3.7 s on its torch path elsewhere.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..analysis import CAUSAL_LM, ENCODER_DECODER, MASKED_LM, Analysis, kind_phrase
from ..errors import InputError, UnsupportedModelError
from . import lens_kernel

# final norms of causal LMs, looked up on the base model (then on its ``decoder``, OPT-style)
_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "final_norm")
MAX_TOP_K = 100
# logits held at once: chunk x vocab floats (4 MB x chunk for a 49k vocabulary)
DEFAULT_CHUNK = 128
# the fast lens (bfloat16 products, float32 rescoring; _fast_lens): blocks of FAST_ROWS positions x
# FAST_VOCAB tokens (their logits stay in the CPU's cache between product and reductions), groups of
# VOCAB_GROUP tokens share one error bound, k + FAST_EXTRA_GROUPS groups per row rescored in float32
# (at most FAST_RESCORE (row, group) pairs at once), the vocabulary size from which it is used,
# bfloat16's and float32's unit roundoff
FAST_ROWS = 256
FAST_VOCAB = 4096
VOCAB_GROUP = 128
FAST_EXTRA_GROUPS = 6
FAST_RESCORE = 1 << 17
FAST_MIN_VOCAB = 8192
BF16_U = 2.0 ** -8
F32_U = 2.0 ** -24
# the fused kernel's path (_kernel_lens, where lens_kernel.load() finds AMX): candidates kept per row by their
# upper bound (at least 2k + 8), rows per kernel call (bounds the memory of one call), and the probability
# bound above which a row is made again with x split in two bfloat16 halves (flat rows: where the errors are)
KERNEL_HEAP = 48
KERNEL_ROWS = 8192
REFINE_BOUND = 0.2


@dataclass
class LensHead:
    """The model's output path, from a hidden state to logits.

    ``logits(h, last)``: ``h`` float32[n, hidden] of one layer; ``last`` says it is the last hidden
    state (already normed by the model), so the final norm is skipped. Returns float32[n, vocab].
    """

    describe: str  # e.g. "model.norm -> lm_head" (for messages and the view's caption)
    norm: Callable | None  # final norm (None: the model has none, e.g. BERT, BART)
    head: Callable  # normed hidden state -> logits (transform, scaling, decoder, bias, softcap)
    # the same head as one linear map, where it is one: logits = ((x * pre_scale) @ weight.T + bias) * post_mult
    # (the fast lens uses it; None: the head is something else, e.g. an MLM transform or a soft-cap)
    linear: "LinearHead | None" = None

    def logits(self, h: torch.Tensor, last: bool) -> torch.Tensor:
        return self.head(self.pre(h, last)).float()

    def pre(self, h: torch.Tensor, last: bool) -> torch.Tensor:
        """The final norm (skipped for the last hidden state, which the model already normed)."""
        if self.norm is not None and not last:
            h = self.norm(h)
        return h


@dataclass
class LinearHead:
    """An output head that is one linear map: ``((x * pre_scale) @ weight.T + bias) * post_mult``."""

    weight: torch.Tensor  # [vocab, hidden]
    bias: torch.Tensor | None  # [vocab]
    pre_scale: float = 1.0
    post_mult: float = 1.0  # > 0 (a positive factor keeps the order of the logits)


def _module(root: torch.nn.Module, path: str) -> torch.nn.Module | None:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, torch.nn.Module) else None


def _as_linear(linear: torch.nn.Module, *, scale: float = 1.0, bias: torch.Tensor | None = None,
               config=None) -> LinearHead | None:
    """The head of ``_linear_head`` as a LinearHead, when it is one (a plain Linear, no soft-cap)."""
    if type(linear) is not torch.nn.Linear:
        return None
    softcap = getattr(config, "final_logit_softcapping", None) if config is not None else None
    if isinstance(softcap, (int, float)) and softcap > 0:
        return None
    mult = getattr(config, "logit_scale", None) if config is not None else None
    div = getattr(config, "logits_scaling", None) if config is not None else None
    post = 1.0
    if isinstance(mult, (int, float)) and mult not in (0, 1):
        post *= float(mult)
    if isinstance(div, (int, float)) and div not in (0, 1):
        post /= float(div)
    if post <= 0:
        return None
    b = linear.bias
    if bias is not None:
        b = bias.reshape(-1) if b is None else b + bias.reshape(-1)
    return LinearHead(weight=linear.weight, bias=b, pre_scale=scale, post_mult=post)


def _linear_head(linear: torch.nn.Module, *, scale: float = 1.0, bias: torch.Tensor | None = None,
                 config=None) -> Callable:
    """x -> linear(x * scale) + bias, then the logit scaling / soft-capping some families apply."""
    softcap = getattr(config, "final_logit_softcapping", None) if config is not None else None
    mult = getattr(config, "logit_scale", None) if config is not None else None  # Cohere multiplies
    div = getattr(config, "logits_scaling", None) if config is not None else None  # Granite divides

    def head(x: torch.Tensor) -> torch.Tensor:
        if scale != 1.0:
            x = x * scale
        out = linear(x)
        if bias is not None:
            out = out + bias.reshape(-1).to(out.dtype)
        if isinstance(mult, (int, float)) and mult not in (0, 1):
            out = out * mult
        if isinstance(div, (int, float)) and div not in (0, 1):
            out = out / div
        if isinstance(softcap, (int, float)) and softcap > 0:
            out = torch.tanh(out / softcap) * softcap
        return out

    return head


def _name_of(model: torch.nn.Module, module: torch.nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    return type(module).__name__


def lens_head(model: torch.nn.Module, kind: str) -> LensHead:
    """Find the final norm and output head of ``model`` (a loaded transformers model of kind ``kind``).

    Raises UnsupportedModelError for models without an LM head (encoders) or with a head layout
    this function does not know (it says which model type).
    """
    config = model.config
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is None:
        raise UnsupportedModelError(
            f"the logit lens needs a language-model head; this {config.model_type} model ({kind_phrase(kind)}) has none"
        )
    out_name = _name_of(model, out)
    if kind == CAUSAL_LM:
        base = model.base_model
        norm = None
        for holder in (base, getattr(base, "decoder", None)):
            for attr in _FINAL_NORMS:
                m = getattr(holder, attr, None) if holder is not None else None
                if isinstance(m, torch.nn.Module):
                    norm = m
                    break
            if norm is not None:
                break
        if norm is None:
            raise UnsupportedModelError(
                f"the logit lens cannot find the final norm of this {config.model_type} model "
                f"(looked for {', '.join(_FINAL_NORMS)} on its base model)"
            )
        return LensHead(f"{_name_of(model, norm)} -> {out_name}", norm, _linear_head(out, config=config),
                        _as_linear(out, config=config))
    if kind == MASKED_LM:
        mtype = config.model_type
        if mtype == "distilbert":
            seq = [model.vocab_transform, model.activation, model.vocab_layer_norm, model.vocab_projector]
            return LensHead("vocab_transform -> activation -> vocab_layer_norm -> vocab_projector", None,
                            torch.nn.Sequential(*seq))
        if mtype == "electra":
            return LensHead("generator_predictions -> generator_lm_head", None,
                            torch.nn.Sequential(model.generator_predictions, model.generator_lm_head))
        if mtype == "modernbert":
            return LensHead("head -> decoder", None, torch.nn.Sequential(model.head, model.decoder))
        if "." in out_name:
            # BERT cls.predictions, RoBERTa lm_head, ALBERT predictions: the module holding the decoder
            # maps a hidden state to logits (transform, then decoder with its bias)
            parent_name = out_name.rsplit(".", 1)[0]
            parent = _module(model, parent_name)
            if parent is not None and parent is not model.base_model:
                return LensHead(parent_name, None, parent)
        raise UnsupportedModelError(
            f"the logit lens does not know the MLM head of {mtype} models (its output layer is {out_name})"
        )
    if kind == ENCODER_DECODER:
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        norm = None
        for attr in ("final_layer_norm", "layer_norm"):  # T5; mBART-style final norm (plain BART has none)
            m = getattr(decoder, attr, None)
            if isinstance(m, torch.nn.Module):
                norm = m
                break
        scale = 1.0
        if config.model_type in ("t5", "mt5", "umt5", "longt5") or hasattr(config, "scale_decoder_outputs"):
            tied = getattr(config, "scale_decoder_outputs", getattr(config, "tie_word_embeddings", True))
            if tied:
                scale = float(config.d_model) ** -0.5
        bias = getattr(model, "final_logits_bias", None)
        what = (f"decoder.{_name_of(decoder, norm)} -> " if norm is not None else "") + \
            (f"x d_model^-0.5 -> " if scale != 1.0 else "") + out_name + (" + final_logits_bias" if bias is not None else "")
        return LensHead(what, norm, _linear_head(out, scale=scale, bias=bias, config=config),
                        _as_linear(out, scale=scale, bias=bias, config=config))
    raise UnsupportedModelError(
        f"the logit lens reads language-model heads; this model is {kind_phrase(kind)} without one"
    )


def _stack_states(analysis: Analysis, stack: str | None) -> tuple[str, np.ndarray]:
    """(stack name, hidden states float32[layers + 1, T, hidden]) the lens decodes."""
    if analysis.kind == ENCODER_DECODER:
        if stack not in (None, "decoder"):
            raise InputError(f"the logit lens of an encoder-decoder reads the decoder, not the {stack!r} stack")
        if analysis.decoder_hidden_states is None:
            raise InputError("this analysis has no decoder hidden states")
        return "decoder", analysis.decoder_hidden_states
    if analysis.kind not in (CAUSAL_LM, MASKED_LM):
        raise InputError(
            f"the logit lens needs a language-model head; {analysis.model_name} is {kind_phrase(analysis.kind)}"
        )
    if stack not in (None, "self"):
        raise InputError(f"the logit lens reads the {analysis.kind}'s only stack, not {stack!r}")
    return "self", analysis.hidden_states


def lens_positions(analysis: Analysis) -> int:
    """How many positions the lens has (the decoder's tokens for encoder-decoders)."""
    return int(_stack_states(analysis, None)[1].shape[1])


@dataclass
class Lens:
    """Top-k of every layer at some positions. L = layers, so L + 1 hidden states (0 = embeddings).

    ``top_ids`` int64[L + 1, P, k] and ``top_probs`` float32[L + 1, P, k] (softmax over the whole
    vocabulary, descending) at ``positions`` int64[P]; ``stack`` is "self" or "decoder".
    ``prob_error`` float32[L + 1, P] (fast lens only, else None): a bound on the relative error of every
    probability of the cell against the softmax in exact arithmetic (0 where computed in float32).
    """

    stack: str
    positions: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    head: str
    prob_error: np.ndarray | None = None

    @property
    def num_states(self) -> int:
        return int(self.top_ids.shape[0])

    def tokens(self, tokenizer) -> list[list[list[str]]]:
        """[state][p][k] the words the top ids decode to (as the engine's predictions show them)."""
        flat = self.top_ids.reshape(-1).tolist()
        words = tokenizer.batch_decode([[i] for i in flat])
        n_s, n_p, k = self.top_ids.shape
        return [[words[(s * n_p + p) * k:(s * n_p + p + 1) * k] for p in range(n_p)] for s in range(n_s)]


def _check_top_k(top_k) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= int(top_k) <= MAX_TOP_K:
        raise InputError(f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {top_k!r}")
    return int(top_k)


def _check_positions(positions, n: int) -> np.ndarray:
    if positions is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(positions, slice):
        return np.arange(n, dtype=np.int64)[positions]
    try:
        pos = np.asarray(list(positions), dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"positions must be whole numbers from 0 to {n - 1}") from None
    pos = np.where(pos < 0, pos + n, pos)
    if pos.size and (pos.min() < 0 or pos.max() >= n):
        raise InputError(f"positions must be from 0 to {n - 1} (this text has {n} tokens)")
    return pos


def bf16_matmul_supported() -> bool:
    """This CPU multiplies bfloat16 natively (AMX / AVX512-BF16), so the fast lens pays off."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class _FastWeights:
    """The output head prepared for the fast lens (made once per weight tensor, see _fast_weights).

    G = ceil(vocab / VOCAB_GROUP) groups of VOCAB_GROUP consecutive tokens; the vocabulary is padded to
    G * VOCAB_GROUP rows (zero weights, bias -inf: padded tokens have logit -inf everywhere).
    """

    version: int
    w: torch.Tensor  # float32[G, VOCAB_GROUP, hidden]: the weight (padded) for the exact rescoring
    bias: torch.Tensor | None  # float32[G * VOCAB_GROUP] (-inf on padding); None: no bias, no padding
    gmax: torch.Tensor  # float32[G, hidden]: max |weight| over each group, per hidden unit
    # made when first asked for (see _fast_weights): the torch path's bfloat16[G * VOCAB_GROUP, hidden]
    # weight rounded to nearest, and the kernel's, padded to whole AMX tiles and packed (lens_kernel.pack_head)
    wb: torch.Tensor | None = None
    packed: torch.Tensor | None = None
    gmax_b: torch.Tensor | None = None  # (with packed) gmax in bfloat16, for the kernel path's bounds


# id(weight) -> (weak reference to the weight, prepared): a few models' heads (56 MB each for SmolLM2)
_FAST_WEIGHTS: "OrderedDict[int, tuple[weakref.ref, _FastWeights]]" = OrderedDict()
_FAST_WEIGHTS_KEPT = 4
_FAST_WEIGHTS_LOCK = threading.Lock()


def _fast_weights(lin: LinearHead, form: str = "wb") -> _FastWeights:
    """Padded float32 groups, group maxima and the bfloat16 copy ``form`` ("wb": the torch path's,
    "packed": the kernel's) of ``lin``'s weight, cached per tensor (remade when the weight is changed in
    place: its version counter moves)."""
    weight = lin.weight
    with _FAST_WEIGHTS_LOCK:
        ref, got = _FAST_WEIGHTS.get(id(weight), (None, None))
        if got is not None and ref() is weight and got.version == weight._version:
            _FAST_WEIGHTS.move_to_end(id(weight))
            if getattr(got, form) is None:
                _bf16_copy(got, form)
            return got
    v, d = weight.shape
    g = -(-v // VOCAB_GROUP)
    pad = g * VOCAB_GROUP - v
    w = weight.detach().float()
    bias = None if lin.bias is None else lin.bias.detach().float().reshape(-1)
    if pad:
        w = torch.cat([w, w.new_zeros(pad, d)])
        bias = torch.cat([bias if bias is not None else w.new_zeros(v), w.new_full((pad,), float("-inf"))])
    prepared = _FastWeights(version=weight._version, w=w.view(g, VOCAB_GROUP, d), bias=bias,
                            gmax=w.abs().view(g, VOCAB_GROUP, d).amax(1))
    _bf16_copy(prepared, form)
    with _FAST_WEIGHTS_LOCK:
        _FAST_WEIGHTS[id(weight)] = (weakref.ref(weight), prepared)
        while len(_FAST_WEIGHTS) > _FAST_WEIGHTS_KEPT:
            _FAST_WEIGHTS.popitem(last=False)
    return prepared


def _bf16_copy(fw: _FastWeights, form: str) -> None:
    w = fw.w.view(-1, fw.w.shape[-1])
    if form == "wb":
        fw.wb = w.to(torch.bfloat16)
    else:
        d = w.shape[1]
        dp = -(-d // 32) * 32  # AMX tiles take 32 bfloat16 inputs a row: zero columns added
        fw.packed = lens_kernel.pack_head(w if dp == d else torch.nn.functional.pad(w, (0, dp - d)))
        fw.gmax_b = fw.gmax.to(torch.bfloat16)


def _bf16_group_stats(x: torch.Tensor, fw: _FastWeights, post: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group maxima and sums of exp of the bfloat16 logits of one layer, never the [n, vocab] logits whole.

    ``x`` float32[n, hidden] (normed and pre-scaled). Returns (gmax float32[n, G]: max bfloat16 logit
    of each group, gsum float32[n, G]: sum over each group of exp(logit - m), m float32[n]: the row's
    max bfloat16 logit). Blocks of FAST_ROWS positions x FAST_VOCAB tokens stay in the CPU's cache
    between the product and the two reductions.
    """
    n = x.shape[0]
    g = fw.w.shape[0]
    per = FAST_VOCAB // VOCAB_GROUP  # groups per block
    xb = x.to(torch.bfloat16)
    gmax = torch.empty(n, g)
    gsum = torch.empty(n, g)
    for i in range(0, n, FAST_ROWS):
        xr = xb[i:i + FAST_ROWS]
        r = xr.shape[0]
        shifts = []
        for j in range(0, g, per):
            jj = min(g, j + per)
            logits = (xr @ fw.wb[j * VOCAB_GROUP:jj * VOCAB_GROUP].T).float()  # bfloat16 products, float32 sums
            if fw.bias is not None:
                logits += fw.bias[j * VOCAB_GROUP:jj * VOCAB_GROUP]
            if post != 1.0:
                logits *= post
            grouped = logits.view(r, jj - j, VOCAB_GROUP)
            gm = grouped.amax(-1)  # [r, groups of the block]
            shift = gm.amax(-1, keepdim=True)  # [r, 1]: the block's max, so exp never overflows
            gmax[i:i + r, j:jj] = gm
            logits.sub_(shift).exp_()
            gsum[i:i + r, j:jj] = grouped.sum(-1)
            shifts.append((j, jj, shift))
        m = gmax[i:i + r].amax(-1, keepdim=True)
        for j, jj, shift in shifts:  # every block's sums relative to the row's max
            gsum[i:i + r, j:jj] *= torch.exp(shift - m)
    return gmax, gsum, gmax.amax(-1)


def _fast_lens(xs: list[torch.Tensor], head: LensHead, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k ids of every row of every layer, from bfloat16 products bounded and rescored in float32.

    ``xs``: per hidden state float32[n, hidden] (normed). Returns (ids int64[S, n, k], probabilities
    float32[S, n, k], prob_error float32[S, n]: a bound on |p - p_exact| / p_exact of every probability
    of the row, p_exact being the softmax in exact arithmetic of the float32 inputs).

    The bound. With bfloat16 inputs (rounded to nearest, unit u = 2^-8), exact products and float32
    accumulation (gamma = d 2^-24 / (1 - d 2^-24)), then a bfloat16 output (rounding u), every bfloat16
    logit b_j is within delta_j = c S_j of the exact l_j, c = 2u + u^2 + (gamma + u)(1 + u)^2 (1 + gamma),
    S_j = sum_i |x_i| |w_ji| <= sum_i |x_i| G_gi (G_g: the max |w| over token j's group g; one small
    [n, hidden] x [hidden, G] product). Per group: max b + delta bounds every exact logit of the group
    from above. The Q groups of highest bound are rescored exactly (float32); the top-k among their
    tokens is the true top-k when the best bound of the other groups is below the k-th rescored logit
    (else the row is computed in float32). The normaliser Z: the rescored tokens' exact terms plus the
    other groups' bfloat16 sums; since |exp(l) - exp(b)| <= exp(b) expm1(delta), its error is at most
    E = sum over the other groups of gsum_g expm1(delta_g), and every probability's relative error at
    most E / Z_est (plus float32 rounding).
    """
    lin = head.linear
    fw = _fast_weights(lin)
    post, pre = float(lin.post_mult), float(lin.pre_scale)
    g, _, d = fw.w.shape
    q = min(g, k + FAST_EXTRA_GROUPS)
    gamma = d * F32_U / (1 - d * F32_U)
    c = (2 * BF16_U + BF16_U ** 2 + (gamma + BF16_U) * (1 + BF16_U) ** 2 * (1 + gamma)) * 1.01 * post
    n_s, n = len(xs), xs[0].shape[0] if xs else 0
    ids = np.zeros((n_s, n, k), dtype=np.int64)
    probs = np.zeros((n_s, n, k), dtype=np.float32)
    err = np.zeros((n_s, n), dtype=np.float32)
    if n == 0:
        return ids, probs, err
    per_state = []
    for x0 in xs:  # bounds and bfloat16 sums, one layer at a time
        x = x0 * pre if pre != 1.0 else x0
        gmax, gsum, m = _bf16_group_stats(x, fw, post)
        delta = (x.abs() @ fw.gmax.T) * c  # [n, G]
        top_ub, cand = (gmax + delta).topk(min(g, q + 1), dim=-1)
        rest_ub = top_ub[:, q] if g > q else torch.full((n,), float("-inf"))
        cand = cand[:, :q].contiguous()  # [n, q] groups to rescore
        outside = torch.ones(n, g, dtype=torch.bool)
        outside.scatter_(1, cand, False)
        per_state.append(dict(x=x, x0=x0, m=m, cand=cand, rest_ub=rest_ub, z_rest=(gsum * outside).sum(-1),
                              e_bound=(gsum * torch.expm1(delta) * outside).sum(-1),
                              margin=4 * gamma * post * delta.amax(-1) / c))
    # the rescoring of several layers at once (one product per group in use), at most FAST_RESCORE rows x q
    step = max(1, FAST_RESCORE // max(1, n * q))
    for s0 in range(0, n_s, step):
        batch = per_state[s0:s0 + step]
        exact_all = _rescore(torch.cat([b["x"] for b in batch]), torch.cat([b["cand"] for b in batch]), fw, post)
        for s, b, exact in zip(range(s0, s0 + step), batch, exact_all.split(n)):
            z = b["z_rest"] + torch.exp(exact - b["m"][:, None]).sum(-1)
            top_e, slot = exact.topk(k, dim=-1)
            tok = b["cand"].gather(1, slot // VOCAB_GROUP) * VOCAB_GROUP + slot % VOCAB_GROUP
            # certain: every other group's bound is below the k-th rescored logit (minus float32 rounding)
            ok = b["rest_ub"] < top_e[:, -1] - (b["margin"] + 1e-6 * top_e[:, -1].abs())
            logp = top_e - (b["m"] + torch.log(z))[:, None]
            rel = b["e_bound"] / z
            if not bool(ok.all()):  # not certain: these rows in float32, whole
                bad = (~ok).nonzero().squeeze(-1)
                tok[bad], logp[bad] = _float32_top(head, b["x0"], bad, k)
                rel[bad] = 0.0
            ids[s], probs[s], err[s] = tok.numpy(), logp.exp().numpy(), rel.numpy()
    return ids, probs, err


def _float32_top(head: LensHead, x0: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k ids and log-probabilities of ``x0[rows]`` (normed hidden states) through the whole head in
    float32, DEFAULT_CHUNK rows at a time: the fast paths' answer for rows whose bounds cannot tell."""
    ids = torch.empty(rows.numel(), k, dtype=torch.int64)
    logp = torch.empty(rows.numel(), k)
    for i in range(0, rows.numel(), DEFAULT_CHUNK):
        top = torch.topk(torch.log_softmax(head.head(x0[rows[i:i + DEFAULT_CHUNK]]).float(), dim=-1), k=k, dim=-1)
        ids[i:i + DEFAULT_CHUNK], logp[i:i + DEFAULT_CHUNK] = top.indices, top.values
    return ids, logp


def _rescore(x: torch.Tensor, cand: torch.Tensor, fw: _FastWeights, post: float) -> torch.Tensor:
    """float32[n, q * VOCAB_GROUP]: the exact (float32) logits of every token of each row's q groups ``cand``.

    The rows asking for one group are multiplied by it together (one product per group in use), not
    one gathered weight copy per row.
    """
    n, q = cand.shape
    flat = cand.reshape(-1)
    order = torch.argsort(flat, stable=True)
    groups, counts = torch.unique_consecutive(flat[order], return_counts=True)
    rows = order // q  # the row of each (row, slot) pair, in group order
    out = torch.empty(n * q, VOCAB_GROUP)
    start = 0
    for grp, cnt in zip(groups.tolist(), counts.tolist()):
        sel = order[start:start + cnt]
        out[sel] = x[rows[start:start + cnt]] @ fw.w[grp].T
        start += cnt
    out = out.view(n, q * VOCAB_GROUP)
    if fw.bias is not None:
        out += fw.bias.view(-1, VOCAB_GROUP)[cand].reshape(n, -1)
    if post != 1.0:
        out *= post
    return out


def _kernel_lens(xs: list[torch.Tensor], head: LensHead, k: int, lib) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_fast_lens``'s result (exact top-k ids, float32 top-k logits, bounded probabilities) from the fused
    AMX kernel (lens_kernel.c): one pass per row over the vocabulary, the logits never stored.

    The bound. x rounded to bfloat16 (or split, x = hi + lo with both halves bfloat16: then x is off by at
    most u^2 |x|), the head rounded to bfloat16, exact products summed in float32 by the AMX tiles: every
    logit b_j is within delta_g = c sum_i |x_i| G_gi of the exact one (G_g: the group's max |w| per unit),
    c = 2u + u^2 + gamma_d (1 + u)^2 (split: u + u^2 + u^3 + gamma_2d (1 + u)(1 + u^2)). The kernel keeps,
    per row, the KERNEL_HEAP tokens of largest b_j + delta_g; every other token's exact logit is at most the
    heap's smallest bound. The heap's tokens are rescored in float32; the top-k among them is the true top-k
    when that smallest bound is below the k-th rescored logit minus its float32 rounding. The normaliser: the
    heap tokens' exact terms plus every other token's bfloat16 term (the kernel's sums less the heap's
    bfloat16 terms), within E = sum over the others of exp(b_j) expm1(delta_g) (groups far below the row's
    max count GROUP exp(delta - 24) instead): every probability's relative error is at most E / Z_est plus
    float32 rounding, as in _fast_lens.

    The last hidden state (the model's own prediction) always goes split (its probabilities then within
    ~5e-4 of the model's own instead of ~3e-2 on SmolLM2), and so does every row whose top-k is not
    certain or whose bound is above REFINE_BOUND (flat rows, where most of the normaliser is outside the
    heap: the split halves their bound only, as the head's rounding stays, but cuts their actual error
    ~10x); rows still not certain are computed in float32.
    """
    lin = head.linear
    fw = _fast_weights(lin, "packed")
    post, pre = float(lin.post_mult), float(lin.pre_scale)
    n_s, n = len(xs), xs[0].shape[0] if xs else 0
    if n == 0:
        return (np.zeros((n_s, 0, k), dtype=np.int64), np.zeros((n_s, 0, k), dtype=np.float32),
                np.zeros((n_s, 0), dtype=np.float32))
    x0 = torch.cat(xs)
    x = x0 * pre if pre != 1.0 else x0
    rows = x.shape[0]
    tok = torch.zeros(rows, k, dtype=torch.int64)
    logp = torch.zeros(rows, k)
    rel = torch.zeros(rows)
    ok = torch.zeros(rows, dtype=torch.bool)
    split = torch.zeros(rows, dtype=torch.bool)
    split[(n_s - 1) * n:] = True
    threads = torch.get_num_threads()

    def run(sel: torch.Tensor, halves: bool) -> None:
        for i in range(0, sel.numel(), KERNEL_ROWS):
            part = sel[i:i + KERNEL_ROWS]
            tok[part], logp[part], rel[part], ok[part] = _kernel_rows(lib, x[part], halves, fw, k, post, threads)

    run((~split).nonzero().squeeze(-1), False)
    run(split.nonzero().squeeze(-1), True)
    again = ((~ok | (rel > REFINE_BOUND)) & ~split).nonzero().squeeze(-1)
    if again.numel():
        run(again, True)
    bad = (~ok).nonzero().squeeze(-1)
    if bad.numel():  # not certain: these rows in float32, whole
        tok[bad], logp[bad] = _float32_top(head, x0, bad, k)
        rel[bad] = 0.0
    return (tok.view(n_s, n, k).numpy(), logp.exp().view(n_s, n, k).numpy(), rel.view(n_s, n).numpy())


def _kernel_rows(lib, x: torch.Tensor, halves: bool, fw: _FastWeights, k: int, post: float, threads: int):
    """(top-k ids, log-probabilities, probability bound, certain) of rows ``x`` float32[r, d] (pre-scaled)."""
    r, d = x.shape
    dp = fw.packed.shape[1] * 2
    heap = min(max(KERNEL_HEAP, 2 * k + 8), fw.w.shape[0] * VOCAB_GROUP)
    u = BF16_U
    if halves:
        gamma = 2 * dp * F32_U / (1 - 2 * dp * F32_U)
        c = u + u * u + u ** 3 + gamma * (1 + u) * (1 + u * u)
    else:
        gamma = dp * F32_U / (1 - dp * F32_U)
        c = 2 * u + u * u + gamma * (1 + u) ** 2
    c *= 1.01 * post
    gamma_r = d * F32_U / (1 - d * F32_U)  # the float32 rescoring's dot products
    rp = -(-r // 32) * 32  # the kernel takes whole 32-row tiles: zero rows added
    xp = torch.zeros(rp, dp)
    xp[:r, :d] = x
    xb = xp.to(torch.bfloat16)
    xlo = (xp - xb.float()).to(torch.bfloat16) if halves else None
    # sum_i |x_i| G_gi as a bfloat16 product (a 1/128 of the logits' work): nonnegative terms, so rounding
    # inputs, sums and output costs at most a factor (1 - u)^3 (1 - gamma): 1.02 covers it
    # made as [G, rp] and viewed as [rp, G]: the kernel reads it group by group (lens_pass copies nothing)
    delta = (fw.gmax_b @ xp[:, :d].abs().to(torch.bfloat16).T).float().T * (c * 1.02)  # [rp, G]
    bias = None if fw.bias is None else (fw.bias * post if post != 1.0 else fw.bias)
    st, hub, hb, hid = lens_kernel.lens_pass(lib, xb, xlo, fw.packed, bias, post, delta, heap, threads)
    st, hub, hb, hid, delta = st[:r], hub[:r], hb[:r], hid[:r], delta[:r]
    exact, sabs = lens_kernel.rescore(lib, x, fw.w.view(-1, d), hid, threads)
    valid = hid >= 0
    ids = hid.long().clamp_min(0)
    if fw.bias is not None:
        exact = exact + fw.bias[ids]
    exact = torch.where(valid, exact * post if post != 1.0 else exact, float("-inf"))
    m, s, e = st.unbind(-1)
    top_e, slot = exact.topk(k, dim=-1)
    tok = ids.gather(1, slot)
    kth = top_e[:, -1]
    rounding = 1.01 * gamma_r * post * sabs.gather(1, slot[:, -1:]).squeeze(-1) + 1e-6 * kth.abs()
    ok = hub.amin(-1) < kth - rounding  # (a heap that is not full: -inf, nothing outside it)
    heap_bf16 = torch.where(valid, torch.exp(hb - m[:, None]), 0.0)
    z_rest = (s - heap_bf16.sum(-1)).clamp_min(0)
    e_rest = (e - (heap_bf16 * torch.expm1(delta.gather(1, ids // VOCAB_GROUP))).sum(-1)).clamp_min(0)
    z = z_rest + torch.where(valid, torch.exp(exact - m[:, None]), 0.0).sum(-1)
    logp = top_e - (m + torch.log(z))[:, None]
    rel = (e_rest + 1e-6 * (s + e)) / z  # (+ the kernel's and these subtractions' float32 rounding)
    return tok, logp, rel, ok


def logit_lens(
    analysis: Analysis,
    engine,
    *,
    top_k: int = 5,
    positions: Sequence[int] | slice | None = None,
    stack: str | None = None,
    chunk: int = DEFAULT_CHUNK,
    fast: bool = False,
) -> Lens:
    """The top-k tokens of every layer's hidden state at ``positions`` (default: all).

    ``engine``: the Engine that made ``analysis`` (its model's head is used). For encoder-decoders the
    decoder's hidden states are read. Causal LMs predict the token after each position, masked LMs the
    token at it (as ``analysis.predictions``).

    ``fast=True`` (used where the head is one linear map on the CPU, the vocabulary has at least
    FAST_MIN_VOCAB tokens and the CPU multiplies bfloat16 natively; else the float32 lens): every layer,
    the last one included, through bfloat16 products with error bounds; the tokens that can be in the
    top-k are rescored in float32, so the top-k ids are those of exact arithmetic (rows whose bounds
    cannot tell are computed in float32, whole) and their logits are float32; the softmax normaliser
    takes the rest of the vocabulary from the bfloat16 products, within the bound ``Lens.prob_error``
    states per cell. Where lens_kernel.load() gives the AMX kernel, one fused pass per row does it
    (_kernel_lens); else torch does it in cache-sized blocks with per-group bounds (_fast_lens). No
    process-wide setting is touched.
    Default ``fast=False``: everything in float32 (the last layer then equals the model's own logits
    to float32 rounding).
    """
    top_k = _check_top_k(top_k)
    stack, states = _stack_states(analysis, stack)
    pos = _check_positions(positions, states.shape[1])
    head = lens_head(engine.model, analysis.kind)
    lin = head.linear
    vocab = None if lin is None else int(lin.weight.shape[0])
    can_fast = (lin is not None and lin.weight.dtype == torch.float32 and lin.weight.device.type == "cpu"
                and bf16_matmul_supported())
    if fast and (not can_fast or vocab < FAST_MIN_VOCAB):
        fast = False  # nothing to gain (no bfloat16 products here, or the head is not one linear map)
    n_states = states.shape[0]
    ids = np.zeros((n_states, pos.size, top_k), dtype=np.int64)
    probs = np.zeros((n_states, pos.size, top_k), dtype=np.float32)
    chunk = max(1, int(chunk))
    dev = _head_device(engine.model)
    with torch.inference_mode():
        if fast:
            k = min(top_k, vocab)
            xs = [head.pre(torch.from_numpy(np.ascontiguousarray(states[s][pos])), last=s == n_states - 1)
                  for s in range(n_states)]
            lib = lens_kernel.load()
            f_ids, f_probs, err = (_fast_lens(xs, head, k) if lib is None else _kernel_lens(xs, head, k, lib))
            ids[:, :, :k], probs[:, :, :k] = f_ids, f_probs
            return Lens(stack=stack, positions=pos, top_ids=ids, top_probs=probs, head=head.describe, prob_error=err)
        for s in range(n_states):  # float32
            layer = torch.from_numpy(np.ascontiguousarray(states[s][pos])).to(dev)
            for i in range(0, pos.size, chunk):
                logits = head.logits(layer[i:i + chunk], last=s == n_states - 1)
                logp = torch.log_softmax(logits, dim=-1)
                top = torch.topk(logp, k=min(top_k, logp.shape[-1]), dim=-1)
                ids[s, i:i + chunk, : top.indices.shape[-1]] = top.indices.cpu().numpy()
                probs[s, i:i + chunk, : top.values.shape[-1]] = top.values.exp().cpu().numpy()
    return Lens(stack=stack, positions=pos, top_ids=ids, top_probs=probs, head=head.describe)


def _head_device(model: torch.nn.Module) -> torch.device:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    try:
        return out.weight.device
    except AttributeError:
        return torch.device("cpu")


@dataclass
class TargetTrace:
    """One token's rank (1 = the top prediction) and probability at one position, layer by layer."""

    position: int
    token_id: int
    ranks: np.ndarray  # int64[L + 1]
    probs: np.ndarray  # float32[L + 1]
    logits: np.ndarray  # float32[L + 1]


def target_trace(analysis: Analysis, engine, position: int, token_id: int, *, stack: str | None = None) -> TargetTrace:
    """Rank and probability of ``token_id`` at ``position`` in every layer (exact, float32).

    Rank counts the tokens with a strictly larger logit, plus one (ties share the better rank).
    """
    stack, states = _stack_states(analysis, stack)
    (p,) = _check_positions([position], states.shape[1]).tolist()
    head = lens_head(engine.model, analysis.kind)
    vocab = None
    ranks, probs, logits_out = [], [], []
    with torch.inference_mode():
        for s in range(states.shape[0]):
            h = torch.from_numpy(np.ascontiguousarray(states[s][p:p + 1]))
            logits = head.logits(h, last=s == states.shape[0] - 1)[0]
            vocab = logits.shape[-1]
            if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)) or not 0 <= int(token_id) < vocab:
                raise InputError(f"the target token id must be a whole number from 0 to {vocab - 1}, got {token_id!r}")
            t = int(token_id)
            logp = torch.log_softmax(logits, dim=-1)
            ranks.append(int((logits > logits[t]).sum()) + 1)
            probs.append(float(logp[t].exp()))
            logits_out.append(float(logits[t]))
    return TargetTrace(position=p, token_id=int(token_id), ranks=np.asarray(ranks, dtype=np.int64),
                       probs=np.asarray(probs, dtype=np.float32), logits=np.asarray(logits_out, dtype=np.float32))


def target_id(engine, word: str) -> int:
    """The token id a typed target word stands for.

    Tried in order: the word after a space as one token (" cat": what follows a word in GPT-2 / Llama
    vocabularies), the word as typed as one token, else the first token the word splits into.
    """
    if not isinstance(word, str) or not word.strip():
        raise InputError("the target token is empty: type a word or pick a prediction")
    tok = engine.tokenizer
    tries = [tok(text, add_special_tokens=False)["input_ids"] for text in (" " + word.strip(), word)]
    for ids in tries:
        if len(ids) == 1:
            return int(ids[0])
    for ids in tries:
        if ids:
            return int(ids[0])
    raise InputError(f"the target {word[:40]!r} is no token of this model's vocabulary")


def num_hidden_states(analysis: Analysis) -> int:
    """L + 1: the embeddings and every layer."""
    return int(_stack_states(analysis, None)[1].shape[0])


__all__ = ["Lens", "LensHead", "TargetTrace", "lens_head", "logit_lens", "target_trace", "target_id",
           "lens_positions", "num_hidden_states"]

