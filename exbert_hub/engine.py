"""Load any transformer by name once, and analyze texts with it: one forward pass -> one Analysis.

    >>> import exbert_hub
    >>> engine = exbert_hub.load("bert-base-uncased")
    >>> a = engine.analyze("The cat sat on the mat.")
    >>> a.attentions.shape            # (layers, heads, tokens, tokens)
    >>> q, k = engine.query_key(a, layer=3, head=5)
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from . import capture
from .linear_kernels import fast_linear
from .analysis import (
    kind_phrase,
    CAUSAL_LM,
    CLASSIFIERS,
    ENCODER,
    ENCODER_DECODER,
    MASKED_LM,
    SEQUENCE_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    Analysis,
    AttentionStack,
    Classification,
    MaskSpec,
    TokenSequence,
)
from . import resolve as _resolve
from .errors import InputError, ModelNotFoundError, UnsupportedModelError
from .policy import Policy, PolicyError, _shown
from .resolve import LOAD_LOCK, Resolved, resolve

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 8192
# What one analysis may hold and make while it runs (queries, keys, contexts, hidden states, logits;
# estimate_bytes): the memory bound of token_limit. Attention is computed on demand, never kept whole.
DEFAULT_MAX_ANALYSIS_BYTES = 4_000_000_000
# From this many tokens on, the forward pass uses fused attention (scaled_dot_product_attention: no
# [heads, T, T] weights at all). Below, transformers' eager code runs (its weights, one layer at a time,
# are small), so recomputed attention is bit-identical to model(..., output_attentions=True).
FUSED_FROM_TOKENS = 1024
DEFAULT_MAX_CHARS = 100_000
# Positions whose logits are made (causal LMs, long inputs) and reduced to top-k at a time: 256 x 49,152
# float32 = 50 MB (SmolLM2), plus as much for logsumexp's temporary
LOGIT_ROWS = 256
# Models whose attention the engine cannot record keep every weight: (layers * heads * tokens^2 * 4 bytes per stack)
DEFAULT_MAX_ATTENTION_BYTES = 2_000_000_000

DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Placement:
    """Where a model runs: device ("cpu", "cuda" or "cuda:N"), dtype name, and accelerate's device_map."""

    device: str = "cpu"
    dtype: str = "float32"
    device_map: str | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def placement(device: str | None = None, dtype: str | None = None, device_map: str | None = None) -> Placement:
    """Resolve ``device``/``dtype`` ("auto": CUDA when present with bfloat16 (float16 where bfloat16 is not
    supported), else CPU float32). None takes the process default: the EXBERT_HUB_DEVICE and
    EXBERT_HUB_DTYPE variables (the CLI's --device and --dtype), else "auto"."""
    device = os.environ.get("EXBERT_HUB_DEVICE", "auto") if device is None else device
    dtype = os.environ.get("EXBERT_HUB_DTYPE", "auto") if dtype is None else dtype
    if not isinstance(device, str) or not (device in DEVICES or re.fullmatch(r"cuda:\d+", device)):
        raise InputError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {_short_repr(device)}")
    if not isinstance(dtype, str) or dtype not in ("auto", *DTYPES):
        raise InputError(f"dtype must be one of auto, {', '.join(DTYPES)}, got {_short_repr(dtype)}")
    if device_map not in (None, "auto"):
        raise InputError(f"device_map must be None or 'auto', got {_short_repr(device_map)}")
    cuda = torch.cuda.is_available()
    if device.startswith("cuda") and not cuda:
        raise InputError(f"device={device!r} needs a CUDA GPU and none is available here: use device='cpu' or 'auto'")
    if device_map == "auto" and not cuda:
        raise InputError("device_map='auto' spreads a model over GPUs and none is available here: leave it out")
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    if device_map == "auto":
        device = "cuda"
    if dtype == "auto":
        if device == "cpu":
            dtype = "float32"
        else:
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return Placement(device=device, dtype=dtype, device_map=device_map)

_CROSS_NAMES = ("encoder_attn", "EncDecAttention", "crossattention", "cross_attn")
KINDS = (MASKED_LM, CAUSAL_LM, ENCODER, ENCODER_DECODER, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION)
_KINDS_TEXT = ", ".join(KINDS)

# Sanity bounds of a visitor's config, checked before anything is built from it (even on the meta device)
MAX_CONFIG_BYTES = 5_000_000  # config.json
MAX_DECLARED_LAYERS = 1024  # any config value named *layers*; real models have at most a few hundred
MAX_DECLARED_EXPERTS = 1024  # any config value named *experts*
MAX_DECLARED_MODULES = 65_536  # layers x experts
ROUGH_MARGIN = 50  # a rough count above 50x the limit is refused without building anything


def detect_kind(config) -> str:
    """The kind of model a config describes, from its architecture names (the heads its weights have)."""
    if getattr(config, "is_encoder_decoder", False):
        return ENCODER_DECODER
    archs = list(getattr(config, "architectures", None) or [])
    # a classification head is what the checkpoint was fine-tuned for: it wins over the base model's kind
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return SEQUENCE_CLASSIFICATION
    if any(a.endswith("ForTokenClassification") for a in archs):
        return TOKEN_CLASSIFICATION
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
        SEQUENCE_CLASSIFICATION: tf.AutoModelForSequenceClassification,
        TOKEN_CLASSIFICATION: tf.AutoModelForTokenClassification,
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
    nparams: int = 0
    place: Placement = field(default_factory=Placement)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def input_device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings (the first of several with a device_map)."""
        try:
            return self.model.get_input_embeddings().weight.device
        except (AttributeError, NotImplementedError):
            return next(self.model.parameters()).device


def _load_model(resolved: Resolved, kind: str | None, revision: str | None, trust_remote_code: bool,
                policy: Policy | None = None, place: Placement | None = None) -> LoadedModel:
    """Load ``resolved`` (config, model, tokenizer).

    LOAD_LOCK is held around each from_pretrained (and the meta-device size estimate), never across a
    network look-up. With a ``policy`` (a visitor's request), the model's size is checked before any
    weights are downloaded or allocated: the Hub's own counts (``model_info``, skipped offline), the
    safetensors headers of a local folder, and always the parameters of the model built from its config
    on the meta device. The operator (policy None, or a name in ``policy.operator_models``) is not checked.
    """
    checked = policy is not None and resolved.name not in policy.operator_models
    hub = resolved.origin == "hub"
    # trust_remote_code is always passed explicitly: left unset, transformers asks on stdin whether to run
    # the code of a local folder whose config has an auto_map (and runs it if the user types "y")
    common: dict = {"trust_remote_code": bool(trust_remote_code)}
    if hub:
        common["revision"] = revision
        if _resolve.hub_offline():  # HF_HUB_OFFLINE=1, or the Hub was found unreachable: never wait on retries
            common["local_files_only"] = True
    weights: list[str] = []
    if checked:
        if hub and not common.get("local_files_only"):
            weights = _check_hub_size(resolved.name, revision, policy)
        elif not hub:
            _check_local_size(resolved, policy)
    with LOAD_LOCK:  # one from_pretrained at a time in this process (see resolve.LOAD_LOCK)
        config = _load_config(resolved, common)
        kind = kind or detect_kind(config)
        if kind not in KINDS:
            raise InputError(f"unknown model kind {kind!r}: use one of {_KINDS_TEXT}")
        if checked:
            _check_config_size(resolved.name, config, kind, trust_remote_code, policy)
    if weights:
        _prefetch(resolved.name, revision, weights)  # the big download, outside LOAD_LOCK
    place = place or Placement()
    # straight onto the device (no CPU copy first); accelerate splits a model over GPUs with "auto"
    device_map = place.device_map or (place.device if place.device != "cpu" else None)
    with LOAD_LOCK:
        try:
            model = _model_class(kind).from_pretrained(
                resolved.source, config=config, attn_implementation="eager", dtype=place.torch_dtype,
                **({"device_map": device_map} if device_map else {}), **common
            )
        except ValueError as err:
            raise UnsupportedModelError(
                f"{resolved.name!r} ({config.model_type}) cannot be loaded as a {kind} with eager attention, which "
                f"exbert-hub needs to read attention weights: {str(err).splitlines()[0]}"
            ) from err
    model.eval()
    with LOAD_LOCK:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(resolved.source, **common)
        except Exception as err:  # noqa: BLE001
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ModelNotFoundError(f"{resolved.name!r} has no usable tokenizer: {first}") from err
    captures = capture.instrument(model)
    if not captures:
        log.warning("%s: attention code not recognised; queries, keys and contexts will be unavailable", resolved.name)
    params = list(model.parameters())
    return LoadedModel(
        resolved=resolved,
        model=model,
        tokenizer=tokenizer,
        kind=kind,
        captures=captures,
        module_names={id(m): n for n, m in model.named_modules()},
        forward_args=frozenset(inspect.signature(model.forward).parameters),
        nbytes=sum(p.numel() * p.element_size() for p in params),
        nparams=sum(p.numel() for p in params),
        place=place,
    )


def _load_config(resolved: Resolved, common: dict):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolved.source, **common)
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise UnsupportedModelError(
            f"{resolved.name!r} needs its own Python code to run (its config.json has an auto_map); exbert-hub "
            "does not run a model's code unless you opt in with trust_remote_code=True (read that code first)."
        ) from err


# --- sizes, checked before loading (policy) --------------------------------------------------------------
def _count_text(n: int, limit: int | None = None) -> str:
    """7_241_732_096 -> '7.2B' (exact digits when the rounded figure would equal the limit's)."""
    def short(x: int) -> str:
        for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
            if x >= scale:
                return f"{x / scale:.1f}{suffix}"
        return str(x)

    return f"{n:,}" if limit is not None and short(n) == short(limit) else short(n)


def _bytes_text(n: int) -> str:
    for scale, suffix in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if n >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{n} bytes"


def _refuse_params(name: str, n: int, policy: Policy) -> None:
    if n > policy.max_params:
        raise PolicyError(
            f"the model {_shown(name)} has {_count_text(n, policy.max_params)} parameters; this server loads at most "
            f"{_count_text(policy.max_params, n)} (EXBERT_HUB_MAX_PARAMS): pick a smaller model"
        )


def _weight_files(names: dict[str, int | None]) -> list[str]:
    """The top-level weight files from_pretrained downloads, in its order of preference."""
    top = [n for n in names if "/" not in n]

    def shards(pattern: str, ext: str) -> list[str]:
        return sorted(n for n in top if re.fullmatch(pattern, n)) or sorted(n for n in top if n.endswith(ext))

    if "model.safetensors" in top:
        return ["model.safetensors"]
    if "model.safetensors.index.json" in top:
        return shards(r"model-\d+-of-\d+\.safetensors", ".safetensors")
    if "pytorch_model.bin" in top:
        return ["pytorch_model.bin"]
    if "pytorch_model.bin.index.json" in top:
        return shards(r"pytorch_model-\d+-of-\d+\.bin", ".bin")
    return []


def _check_hub_size(name: str, revision: str | None, policy: Policy) -> list[str]:
    """Refuse a Hub model whose parameters or weight download exceed the policy; return its weight files.

    Uses ``HfApi().model_info(files_metadata=True)``: the Hub's safetensors parameter count and the sizes
    of the files that would be downloaded. A failed look-up checks nothing here (the config check still runs).
    """
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(name, revision=revision, files_metadata=True, timeout=15)
    except Exception as err:  # noqa: BLE001 - gated, private, network...: from_pretrained says it better
        log.info("model_info(%s) failed (%s); its size is checked from its config only", name, err)
        return []
    sizes: dict[str, int | None] = {}
    for sibling in getattr(info, "siblings", None) or []:
        size = getattr(sibling, "size", None)
        if size is None:
            size = getattr(getattr(sibling, "lfs", None), "size", None)
        sizes[sibling.rfilename] = size
    total = getattr(getattr(info, "safetensors", None), "total", None)
    if isinstance(total, int) and total > 0:
        _refuse_params(name, total, policy)
    if (sizes.get("config.json") or 0) > MAX_CONFIG_BYTES:
        raise PolicyError(f"the config.json of {_shown(name)} is {_bytes_text(sizes['config.json'])}; this server "
                          f"reads configs of at most {_bytes_text(MAX_CONFIG_BYTES)}")
    files = _weight_files(sizes)
    download = sum(sizes.get(f) or 0 for f in files)
    if download > policy.max_download_bytes:
        raise PolicyError(
            f"the model {_shown(name)} would download {_bytes_text(download)} of weights; this server downloads at "
            f"most {_bytes_text(policy.max_download_bytes)} (EXBERT_HUB_MAX_DOWNLOAD): pick a smaller model"
        )
    return files


def safetensors_params(path) -> int:
    """Elements of every tensor in a safetensors file, from its header alone (no tensor is read).

    The format: an 8-byte little-endian header length, then that many bytes of JSON mapping each tensor
    name to its dtype, shape and offsets. Raises ValueError for a file that is not safetensors.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("too short for a safetensors header")
        size = int.from_bytes(head, "little")
        if size > 100_000_000:
            raise ValueError("implausible safetensors header length")
        header = json.loads(f.read(size))
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    total = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"tensor {key!r} has no valid shape")
        total += math.prod(shape)
    return total


def _local_weight_files(folder) -> list[str]:
    """The weight files from_pretrained would read in a local folder (the index's shards when sharded)."""
    from pathlib import Path

    folder = Path(folder)
    try:
        names = dict.fromkeys(os.listdir(folder))
    except OSError:
        return []
    if "model.safetensors" not in names and "model.safetensors.index.json" in names:
        index = folder / "model.safetensors.index.json"
        try:
            if index.stat().st_size < 50_000_000:
                weight_map = json.loads(index.read_text()).get("weight_map", {})
                shards = sorted({v for v in weight_map.values() if isinstance(v, str)})
                # only plain file names of this folder (an index cannot point the check elsewhere)
                return [n for n in shards if n in names]
        except (OSError, ValueError, AttributeError):
            pass
    return _weight_files(names)


def _check_local_size(resolved: Resolved, policy: Policy) -> None:
    """Refuse a folder whose config.json is huge or whose safetensors headers declare too many parameters."""
    from pathlib import Path

    folder = Path(resolved.source)
    try:
        config_bytes = (folder / "config.json").stat().st_size
    except OSError:
        config_bytes = 0
    if config_bytes > MAX_CONFIG_BYTES:
        raise PolicyError(f"the config.json of {_shown(resolved.name)} is {_bytes_text(config_bytes)}; this server "
                          f"reads configs of at most {_bytes_text(MAX_CONFIG_BYTES)}")
    total = 0
    for name in _local_weight_files(folder):
        if name.endswith(".safetensors"):
            try:
                total += safetensors_params(folder / name)
            except (OSError, ValueError) as err:
                log.info("%s: %s unreadable (%s); from_pretrained will say why", resolved.name, name, err)
    if total:
        _refuse_params(resolved.name, total, policy)


def _declared(tree, words: tuple[str, ...]) -> int:
    """The largest integer in a config dict (nested configs included) under a key containing one of ``words``."""
    best = 0
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, (dict, list)):
                    stack.append(value)
                elif isinstance(value, int) and not isinstance(value, bool) and any(w in str(key) for w in words):
                    best = max(best, value)
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return best


def _rough_params(tree: dict) -> int | None:
    """A rough parameter count from a config dict's sizes (embeddings + attention + MLP per layer)."""
    def first(d, *keys):
        for k in keys:
            v = d.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
        return None

    total, found = 0, False
    for node in [tree] + [v for v in tree.values() if isinstance(v, dict)]:
        h = first(node, "hidden_size", "d_model", "n_embd", "dim", "embed_dim")
        if h is None:
            continue
        if "encoder_layers" in node or "decoder_layers" in node:
            layers = (first(node, "encoder_layers") or 0) + (first(node, "decoder_layers") or 0)
        elif "num_decoder_layers" in node:
            layers = (first(node, "num_layers") or 0) + (first(node, "num_decoder_layers") or 0)
        else:
            layers = first(node, "num_hidden_layers", "num_layers", "n_layer", "n_layers") or 0
        ff = first(node, "intermediate_size", "d_ff", "n_inner", "hidden_dim", "ffn_dim", "encoder_ffn_dim") or 4 * h
        vocab = first(node, "vocab_size") or 0
        total += vocab * h + layers * (4 * h * h + 2 * h * ff)
        found = True
    return total if found else None


def _meta_params(config, kind: str, trust_remote_code: bool) -> int | None:
    """Parameters (and buffer elements) of the model ``config`` describes, built on the meta device:
    no memory is allocated for them. None when the model cannot be built that way."""
    try:
        with torch.device("meta"):
            model = _model_class(kind).from_config(copy.deepcopy(config), trust_remote_code=bool(trust_remote_code))
    except Exception as err:  # noqa: BLE001
        log.info("could not build %s on the meta device to count its parameters: %s", config.model_type, err)
        return None
    try:
        return int(sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()))
    finally:
        del model


def _check_config_size(name: str, config, kind: str, trust_remote_code: bool, policy: Policy) -> None:
    """Refuse a model whose config describes more parameters than the policy allows (call under LOAD_LOCK).

    This is what catches a folder with a tiny weights file and a huge config: from_pretrained would
    allocate (and randomly initialise) every parameter the config declares.
    """
    tree = config.to_dict()
    layers, experts = _declared(tree, ("layers",)), _declared(tree, ("experts",))
    if layers > MAX_DECLARED_LAYERS or experts > MAX_DECLARED_EXPERTS or layers * max(experts, 1) > MAX_DECLARED_MODULES:
        what = f"{layers:,} layers" + (f" and {experts:,} experts" if experts else "")
        raise PolicyError(f"the model {_shown(name)} declares {what}; this server loads at most "
                          f"{_count_text(policy.max_params)} parameters (EXBERT_HUB_MAX_PARAMS): pick a smaller model")
    rough = _rough_params(tree)
    if rough is not None and rough > ROUGH_MARGIN * policy.max_params:
        _refuse_params(name, rough, policy)
    counted = _meta_params(config, kind, trust_remote_code)
    if counted is None:
        if rough is None:
            raise PolicyError(f"cannot tell the size of {_shown(name)} from its config; this server only loads "
                              "models whose size it can check")
        counted = rough
    _refuse_params(name, counted, policy)


def _prefetch(name: str, revision: str | None, files: list[str]) -> None:
    """Download a Hub model's weight files into the cache outside LOAD_LOCK (from_pretrained then finds them)."""
    from huggingface_hub.file_download import hf_hub_download

    for filename in files:
        try:
            hf_hub_download(name, filename, revision=revision)
        except Exception as err:  # noqa: BLE001 - from_pretrained retries and reports it
            log.info("prefetching %s of %s failed (%s)", filename, name, err)
            return


class ModelCache:
    """Thread-safe LRU cache of loaded models, bounded by count and by parameter memory.

    A model being loaded by one thread is waited for, never loaded a second time by another.

    Models are keyed by what is loaded (a Hub id and revision, or the real path of a folder, so a symlink
    or another spelling of the same folder shares one copy). Requests (the name as asked, with the load
    options) are remembered separately, so that asking again for a loaded model finds it without
    resolving the name again: no Hub look-up, no LOAD_LOCK (``find``).
    """

    max_requests = 1024  # remembered request -> model mappings

    def __init__(self, max_models: int = 3, max_bytes: int = 8_000_000_000):
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._requests: OrderedDict[tuple, tuple[tuple, Resolved]] = OrderedDict()
        self.loads = 0  # how many times a model was actually loaded (for tests)

    def find(self, request: tuple) -> tuple[LoadedModel | None, Resolved | None]:
        """The loaded model a request was answered with before (or None), and how its name resolved."""
        with self._lock:
            hit = self._requests.get(request)
            if hit is None:
                return None, None
            key, resolved = hit
            self._requests.move_to_end(request)
            loaded = self._items.get(key)
            if loaded is not None:
                self._items.move_to_end(key)
            return loaded, resolved

    def remember(self, request: tuple, key: tuple, resolved: Resolved) -> None:
        with self._lock:
            self._requests[request] = (key, resolved)
            self._requests.move_to_end(request)
            while len(self._requests) > self.max_requests:
                self._requests.popitem(last=False)

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
            self._requests.clear()

    def __len__(self) -> int:
        return len(self._items)


MODEL_CACHE = ModelCache()


def _request_key(name, revision, trust_remote_code, kind, allow_local, place: Placement) -> tuple | None:
    """What a load asks for, before resolving: the name (as an absolute path when it may be a folder, so
    a relative name follows the working directory) and the options."""
    if not isinstance(name, str) or not name.strip():
        return None
    name = name.strip()
    shown = os.path.abspath(os.path.expanduser(name)) if allow_local else name
    return (shown, name, revision, bool(trust_remote_code), kind, bool(allow_local), place)


def _model_key(resolved: Resolved, revision, trust_remote_code, kind, place: Placement) -> tuple:
    """What is loaded: a Hub id and revision, or the real path of a folder (symlinks and aliases resolved),
    on a device in a dtype."""
    if resolved.origin == "hub":
        return ("hub", resolved.source, revision, bool(trust_remote_code), kind, place)
    return ("folder", os.path.realpath(resolved.source), bool(trust_remote_code), kind, place)


def _check_load_args(revision, trust_remote_code, kind, max_tokens, max_chars, policy, remote) -> None:
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown model kind {kind!r}: use one of {_KINDS_TEXT}")
    if revision is not None and not isinstance(revision, str):
        raise InputError(f"revision must be a branch, tag or commit id (a string), got {type(revision).__name__}")
    for what, value in (("max_tokens", max_tokens), ("max_chars", max_chars)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"{what} must be a whole number of at least 1, got {_short_repr(value)}")
    for what, value in (("trust_remote_code", trust_remote_code), ("remote", remote)):
        if not isinstance(value, (bool, np.bool_)):
            raise InputError(f"{what} must be True or False, got {_short_repr(value)}")
    if policy is not None and not isinstance(policy, Policy):
        raise InputError(f"policy must be an exbert_hub.policy.Policy or None, got {type(policy).__name__}")


def _short_repr(value, limit: int = 40) -> str:
    text = " ".join(repr(value).split())
    return (text if len(text) <= limit else text[: limit - 1] + "…") + f" ({type(value).__name__})"


def load(
    name: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    kind: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    max_chars: int = DEFAULT_MAX_CHARS,
    cache: ModelCache | None = None,
    policy: Policy | None = None,
    remote: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    device_map: str | None = None,
) -> "Engine":
    """An Engine for ``name``: a Hugging Face Hub id, a local folder, or a packaged model when offline.

    The model is loaded once per process and shared (see ModelCache). Asking again for a loaded model
    (same name and options) returns at once: the name is not resolved again, the Hub is not asked and
    LOAD_LOCK is not taken, so a slow load of another model never delays it. ``trust_remote_code``
    stays off unless you opt in; safetensors weights are preferred when a repository has both formats.
    ``kind`` forces one of "masked-lm", "causal-lm", "encoder", "encoder-decoder", "sequence-classification",
    "token-classification".

    policy: an ``exbert_hub.policy.Policy`` for names chosen by a visitor of a served app; None (the
        default) is the operator: no checks. With a policy, before anything is downloaded or allocated:
        ``policy.check_model(name, remote=remote)`` (allow-list; local folders off for remote visitors,
        in which case the disk is never looked at and no message says whether a path exists); then the
        model's size against ``policy.max_params`` and ``policy.max_download_bytes`` (the Hub's
        ``model_info`` when online, the safetensors headers of a folder, and always the parameter count
        of the model built from its config on the meta device). Refusals raise ``PolicyError`` with one line.
        Names in ``policy.operator_models`` are not size-checked.
    remote: the visitor is on another machine (see ``policy.is_remote``); only used with a policy.
    device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N"; dtype: "auto" (bfloat16 on a GPU that
        supports it, else float16; float32 on CPU), "float32", "bfloat16" or "float16". None: the process
        default (EXBERT_HUB_DEVICE / EXBERT_HUB_DTYPE, set by the CLI's --device / --dtype; else "auto").
        Part of the cache key: the same model in two dtypes is two models.
    device_map: "auto" spreads a model too large for one GPU over the GPUs (and CPU) through accelerate.
    """
    _check_load_args(revision, trust_remote_code, kind, max_tokens, max_chars, policy, remote)
    place = placement(device, dtype, device_map)
    allow_local = True
    if policy is not None:
        allow_local = policy.check_model(name, remote=bool(remote))
    # "cache or MODEL_CACHE" would ignore an empty cache (ModelCache has __len__, so it is falsy when empty)
    cache = MODEL_CACHE if cache is None else cache
    request = _request_key(name, revision, trust_remote_code, kind, allow_local, place)
    loaded, resolved = cache.find(request) if request is not None else (None, None)
    if loaded is None:
        if resolved is None or resolved.origin == "local":  # a folder is looked at again: it may have changed
            resolved = resolve(name, revision=revision, trust_remote_code=trust_remote_code, allow_local=allow_local)
        key = _model_key(resolved, revision, trust_remote_code, kind, place)
        loaded = cache.get(key, lambda: _load_model(resolved, kind, revision, trust_remote_code, policy=policy,
                                                    place=place))
        if request is not None:
            cache.remember(request, key, resolved)
    if policy is not None and resolved.name not in policy.operator_models:
        # a model loaded earlier without checks (by the operator) is still refused to a visitor if too big
        _refuse_params(resolved.name, loaded.nparams, policy)
    return Engine(loaded, max_tokens=int(max_tokens), max_chars=int(max_chars), resolved=resolved)


def _check_positions(mask) -> list[int]:
    """Mask positions as a list of ints: None, one int, or a sequence of ints (numpy ints included)."""
    if mask is None:
        return []
    if isinstance(mask, (int, np.integer)) and not isinstance(mask, (bool, np.bool_)):
        return [int(mask)]
    if isinstance(mask, (str, bytes, dict)) or not hasattr(mask, "__iter__"):
        raise InputError(f"mask must be a list of token positions (whole numbers), got {_short_repr(mask)}")
    positions = []
    for p in mask:
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer)):
            raise InputError(f"mask positions must be whole numbers (token indexes from 0), got {_short_repr(p)}")
        positions.append(int(p))
    return positions


class Engine:
    """Analyzes texts with one loaded model. Cheap to create; the model itself is shared."""

    def __init__(self, loaded: LoadedModel, *, max_tokens: int = DEFAULT_MAX_TOKENS, max_chars: int = DEFAULT_MAX_CHARS,
                 resolved: Resolved | None = None):
        self._loaded = loaded
        # the name as this engine's caller asked for it (the shared model may have been loaded under another
        # spelling of the same folder)
        self._resolved = resolved or loaded.resolved
        self.max_tokens = max_tokens
        self.max_chars = max_chars

    # --- what the model is -----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._resolved.name

    @property
    def origin(self) -> str:
        """'local', 'hub' or 'packaged'."""
        return self._resolved.origin

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
    def device(self) -> str:
        """"cpu", "cuda"... where the model runs (its input embeddings, with a device_map)."""
        return str(self._loaded.input_device)

    @property
    def dtype(self) -> str:
        """"float32", "bfloat16" or "float16": the precision of the weights and the forward pass."""
        return self._loaded.place.dtype

    def estimate_bytes(self, tokens: int) -> int:
        """Peak bytes of one analysis of ``tokens`` tokens besides the model: what it keeps (queries, keys,
        contexts, hidden states, float32) plus what the pass makes on the way (the logits and their softmax
        statistics, the model's own activations, one additive mask). Models whose attention cannot be
        recorded keep every weight: layers x heads x T^2 more."""
        c = self.config
        t = max(int(tokens), 1)
        layers, heads = max(self.num_layers, 1), max(self.num_heads, 1)
        hidden = int(getattr(c, "hidden_size", 0) or getattr(c, "d_model", 0) or getattr(c, "n_embd", 0) or 1024)
        kv = int(getattr(c, "num_key_value_heads", 0) or heads)
        head_dim = int(getattr(c, "head_dim", 0) or hidden // heads)
        stacks = 3 if self.kind == ENCODER_DECODER else 1
        vocab = int(getattr(c, "vocab_size", 0) or 0) if self.kind not in (ENCODER, *CLASSIFIERS) else 0
        kept = stacks * layers * t * 4 * (heads * head_dim * 2 + kv * head_dim + hidden)  # q, contexts, k, hidden
        fused = t >= FUSED_FROM_TOKENS and self._loaded.captures
        logit_rows = min(t, LOGIT_ROWS) if fused and self._chunked_head() else t  # the output head, in chunks or whole
        eager = 0 if fused else 3 * heads * t * t * 4  # one layer's scores, weights and a temporary
        moving = logit_rows * vocab * 4 + t * t * 4 + t * hidden * 4 * 16 + eager  # + one mask, activations
        if not self._loaded.captures:
            kept += stacks * layers * heads * t * t * 4
        return int(kept + moving)

    @property
    def token_limit(self) -> int:
        """The most tokens one analysis may have: the model's limit, the engine's cap, and a memory bound
        (estimate_bytes within DEFAULT_MAX_ANALYSIS_BYTES)."""
        lo, hi = 1, max(self.max_tokens, 1)
        while lo < hi:  # the largest T whose estimate fits (estimate_bytes grows with T)
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.estimate_bytes(mid) <= DEFAULT_MAX_ANALYSIS_BYTES else (lo, mid - 1)
        limits = [self.max_tokens, lo] + ([self.position_limit] if self.position_limit else [])
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
        top_k: predictions kept per position (a whole number from 1 to 100).
        truncate: cut text longer than ``token_limit`` (reported in the Analysis) instead of raising.

        Wrong types or values raise InputError with one line (texts with a lone surrogate, mask positions
        that are not whole numbers, a top_k that is not one...).
        """
        mask = _check_positions(mask)
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
            raise InputError(f"top_k must be a whole number between 1 and 100, got {_short_repr(top_k)}")
        top_k = int(top_k)
        if not isinstance(truncate, (bool, np.bool_)):
            raise InputError(f"truncate must be True or False, got {_short_repr(truncate)}")
        text = self._check_text(text, "text")
        if pair is not None:
            pair = self._check_text(pair, "pair")
            if self.kind not in (MASKED_LM, ENCODER, *CLASSIFIERS):
                raise InputError(f"sentence pairs are for encoders; {self.name} is {kind_phrase(self.kind)}")
        if mask and not self.can_mask:
            raise InputError(
                f"masking needs a masked language model with a mask token; {self.name} is {kind_phrase(self.kind)}"
            )
        if target is not None and self.kind != ENCODER_DECODER:
            raise InputError(f"a decoder target is for encoder-decoders; {self.name} is {kind_phrase(self.kind)}")
        if not 1 <= top_k <= 100:
            raise InputError(f"top_k must be between 1 and 100, got {top_k}")

        seq, dropped, extra = self._tokenize(text, pair, truncate)
        original_tokens = list(seq.tokens)
        masked = self._apply_mask(seq, mask or [])
        decoder_seq, decoder_dropped = None, 0
        if self.kind == ENCODER_DECODER:
            target = self._check_text(target, "target") if target is not None else text
            decoder_seq, decoder_dropped = self._decoder_tokens(target, truncate)

        dev = self._loaded.input_device
        inputs = {"input_ids": torch.as_tensor(seq.ids)[None],
                  "attention_mask": torch.ones(1, len(seq), dtype=torch.long)}
        if extra.get("token_type_ids") is not None and "token_type_ids" in self._loaded.forward_args:
            inputs["token_type_ids"] = torch.as_tensor(extra["token_type_ids"])[None]
        if decoder_seq is not None:
            inputs["decoder_input_ids"] = torch.as_tensor(decoder_seq.ids)[None]
        inputs = {k: v.to(dev) for k, v in inputs.items()}

        with self._loaded.lock, torch.inference_mode():
            # queries and keys recorded, attention weights never kept (fused from FUSED_FROM_TOKENS on). If
            # some layer's attention did not go through the recorded function: the model's own weights.
            mode = "materialise"
            if self._loaded.captures:
                mode = "fused" if max(len(seq), len(decoder_seq or ())) >= FUSED_FROM_TOKENS else "eager"
            chunked = mode == "fused" and self._chunked_head()
            if chunked:  # the output head over LOGIT_ROWS positions at a time, not one [T, vocab] array (800 MB at 4k)
                inputs["logits_to_keep"] = 1
            out, stacks = self._forward(inputs, mode)
            if stacks is None:
                inputs.pop("logits_to_keep", None)
                chunked = False
                out, stacks = self._forward(inputs, "materialise")
            classification = self._classification(out)
            predictions, note = self._predictions(out, top_k, classification, chunked=chunked)
            hidden, decoder_hidden = self._hidden_states(out, trim=mode == "fused")  # last: it lets go of the model's tensors

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
            classification=classification,
        )

    def query_key(self, analysis: Analysis, layer: int, head: int, stack: str | None = None):
        """float32[q, head_dim], float32[k, head_dim]: exactly the vectors whose scaled dot product gave the attention."""
        return analysis.query_key(layer, head, stack)

    # --- steps of analyze ------------------------------------------------------------------------
    def _check_text(self, text, what: str) -> str:
        if not isinstance(text, str):
            raise InputError(f"the {what} must be a string, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate (e.g. half of an emoji cut by a client)
            raise InputError(
                f"the {what} contains an invalid character (a lone surrogate at position {err.start}): "
                "remove it, or copy the text again from its source"
            ) from None
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
            why.append(f"more would need over {DEFAULT_MAX_ANALYSIS_BYTES / 1e9:.0f} GB while the analysis runs")
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

    def _forward(self, inputs: dict, mode: str) -> tuple[object, dict[str, AttentionStack] | None]:
        """One pass: (model output, stacks); stacks None when a pass that keeps no weights did not record
        every layer. mode: "fused", "eager" (weights made one layer at a time, not kept) or "materialise"
        (the model's own output_attentions, kept: attention code the engine cannot record). Float32
        products on oneDNN where that is the fast kernel (``linear_kernels``)."""
        keep = mode == "materialise"
        if "use_cache" in self._loaded.forward_args:  # no key/value cache: the values would stay alive with `out`
            inputs = {**inputs, "use_cache": False}
        # long inputs (fused): freed memory goes back to the system layer by layer (see capture.py)
        with fast_linear(), capture.recording(fused=mode == "fused", trim=mode == "fused") as rec:
            out = self.model(**inputs, output_attentions=keep, output_hidden_states=True, return_dict=True)
        return out, self._stacks(out, rec, fused=not keep, trim=mode == "fused")

    def _stacks(self, out, rec: capture.Recording, fused: bool, trim: bool = False) -> dict[str, AttentionStack] | None:
        """The stacks of a pass; fused=True: no weights came out of the model (computed from q and k).
        trim: give each copied context's memory back to the system (capture.release_freed_memory)."""
        if self.kind == ENCODER_DECODER:
            enc, dec = len(out.encoder_hidden_states) - 1, len(out.decoder_hidden_states) - 1
            layers = {"encoder": enc, "decoder": dec, "cross": dec}
            weights = {} if fused else {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions,
                                        "cross": out.cross_attentions}
        else:
            layers = {"self": len(out.hidden_states) - 1}
            weights = {} if fused else {"self": out.attentions}
        for name, w in weights.items():
            if not w:
                raise UnsupportedModelError(
                    f"{self.name} returned no {name} attention weights even with eager attention; "
                    "its architecture does not expose attention outputs"
                )
        by_stack: dict[str, list[capture.AttentionCall]] = {name: [] for name in layers}
        for call in rec.calls:
            by_stack[self._stack_of(call)].append(call)
        if fused and any(len(by_stack[name]) != n for name, n in layers.items()):
            log.warning("%s: the pass recorded %s attention calls for %s layers; keeping the model's weights",
                        self.name, {k: len(v) for k, v in by_stack.items()}, layers)
            return None
        # one description per mask tensor the model passed (layers share it; c.mask is a view, new per call).
        # The calls keep views of those tensors alive, so their ids stay unique while this runs.
        specs: dict[int, MaskSpec] = {}

        def spec_of(c: capture.AttentionCall) -> MaskSpec:
            m = c.mask
            if m is None:
                return MaskSpec("none")
            if c.mask_key not in specs:
                if c.causal:
                    specs[c.mask_key] = MaskSpec("causal", fill=c.mask_fill)
                elif not bool(m.any()):
                    specs[c.mask_key] = MaskSpec("none")
                else:
                    q, k = c.query.shape[-2], c.key.shape[-2]
                    specs[c.mask_key] = MaskSpec("dense", dense=np.broadcast_to(_numpy(m)[0], (q, k)))
            return specs[c.mask_key]

        stacks = {}
        for name, n in layers.items():
            layer_calls = by_stack[name]
            stack = AttentionStack(name=name, contexts=None)
            if not fused:
                stack.weights = torch.cat([x.float() for x in weights[name]], dim=0).cpu().numpy()
            if self._loaded.captures and len(layer_calls) == n:
                first = layer_calls[0].context
                stack.contexts = np.empty((n, first.shape[0], first.shape[1] * first.shape[2]), np.float32)
                for i, c in enumerate(layer_calls):  # layer by layer, each freed once copied (no second whole copy)
                    stack.contexts[i] = _numpy(c.context.reshape(c.context.shape[0], -1))
                    c.context = c.batch_context = None
                    if trim:
                        capture.release_freed_memory()
                for c in layer_calls:
                    stack.queries.append(_numpy(c.query))
                    stack.keys.append(_numpy(c.key))
                    stack.scales.append(c.scaling)
                    stack.mask_specs.append(spec_of(c))
                    q, k = c.query.shape[-2], c.key.shape[-2]
                    bias = None if c.position_bias is None else _numpy(c.position_bias)
                    stack.biases.append(None if bias is None else np.broadcast_to(bias, (c.query.shape[0], q, k)))
            elif self._loaded.captures:
                log.warning("%s: captured %d %s attention calls for %d layers; queries and keys dropped",
                            self.name, len(layer_calls), name, n)
            stacks[name] = stack
        return stacks

    def _stack_of(self, call: capture.AttentionCall) -> str:
        if self.kind != ENCODER_DECODER:
            return "self"
        name = self._loaded.module_names.get(id(call.module), "")
        if any(s in name for s in _CROSS_NAMES):
            return "cross"
        return "decoder" if "decoder" in name.split(".") else "encoder"

    def _hidden_states(self, out, trim: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        if self.kind == ENCODER_DECODER:
            return (_take_layers(out, "encoder_hidden_states", trim), _take_layers(out, "decoder_hidden_states", trim))
        return _take_layers(out, "hidden_states", trim), None

    def _classification(self, out) -> Classification | None:
        """Label names and probabilities of a classification head (None for other kinds)."""
        return self.classify(out.logits[0]) if self.kind in CLASSIFIERS else None

    def classify(self, logits) -> Classification:
        """Label names and probabilities of this classifier's ``logits``: float[labels] (sequence
        classification) or float[T, labels] (token classification), a tensor or an array."""
        if self.kind not in CLASSIFIERS:
            raise InputError(f"{self.name} is {kind_phrase(self.kind)}, not a classifier: it has no labels")
        logits = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits)
        logits = logits.float().cpu()
        problem = getattr(self.config, "problem_type", None)
        if problem == "multi_label_classification":
            activation, probs = "sigmoid", torch.sigmoid(logits)
        elif problem == "regression":
            activation, probs = "none", logits
        else:
            activation, probs = "softmax", torch.softmax(logits, dim=-1)
        id2label = getattr(self.config, "id2label", None) or {}
        labels = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(logits.shape[-1])]
        return Classification(labels=labels, logits=logits.numpy().copy(), probabilities=probs.numpy().copy(),
                              per_token=self.kind == TOKEN_CLASSIFICATION, activation=activation)

    def _chunked_head(self) -> bool:
        """Whether the causal LM's logits can be made from its last hidden state by its output head alone
        (``logits_to_keep`` keeps the model from making all of them; no soft-capping or logit scale)."""
        c = self.config
        return (self.kind == CAUSAL_LM and "logits_to_keep" in self._loaded.forward_args
                and self.model.get_output_embeddings() is not None
                and not any(getattr(c, a, None) for a in ("final_logit_softcapping", "logit_scale", "logits_scaling")))

    def _predictions(self, out, top_k: int, classification: Classification | None = None, chunked: bool = False
                     ) -> tuple[list[list[tuple[str, float]]] | None, str]:
        if classification is not None:
            k = min(top_k, len(classification.labels))
            if classification.per_token:
                n = classification.probabilities.shape[0]
                return [classification.top(k, position=i) for i in range(n)], "top labels of each token"
            best = ", ".join(f"{label} {p:.1%}" for label, p in classification.top(k))
            return None, f"the whole text is classified: {best}"
        logits = getattr(out, "logits", None)
        if self.kind == ENCODER or logits is None:
            return None, (
                f"{self.name} is an encoder without a language-model head, so it makes no token predictions"
            )
        # top-k of the logits, probabilities exp(logit - logsumexp): no second [T, vocab] array (800 MB at 4k)
        if chunked:
            head, last = self.model.get_output_embeddings(), out.hidden_states[-1][0]
            chunks = (head(h) for h in last.split(LOGIT_ROWS))
        else:
            chunks = iter(logits[0].split(LOGIT_ROWS))
        tops, lses = [], []
        for chunk in chunks:
            tops.append(torch.topk(chunk, k=min(top_k, chunk.shape[-1]), dim=-1))
            lses.append(torch.logsumexp(chunk.float(), dim=-1))
        top_values = torch.cat([t.values for t in tops])
        lse = torch.cat(lses)[:, None]
        ids = torch.cat([t.indices for t in tops]).tolist()
        words = self.tokenizer.batch_decode([[i] for row in ids for i in row])
        values = torch.exp(top_values.float() - lse).cpu().tolist()
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


def _numpy(t: torch.Tensor) -> np.ndarray:
    """float32 numpy of a tensor: no copy for a float32 CPU tensor (the model's own), else one copy."""
    return t.detach().float().cpu().numpy()


def _take_layers(out, name: str, trim: bool = False) -> np.ndarray:
    """float32[layers + 1, T, hidden] from ``out.<name>`` (a tuple of [1, T, hidden]), copied layer by layer
    and each of the model's tensors let go once copied (no second whole copy at once); ``out.<name>`` is None after.
    trim: give each freed tensor's memory back to the system (else the heap keeps it: capture.release_freed_memory)."""
    layers = list(getattr(out, name))
    # out[name] = None: a ModelOutput's setattr(..., None) leaves its dict entry (the tuple) alive
    out[name] = None
    first = layers[0]
    arr = np.empty((len(layers),) + tuple(first.shape[1:]), np.float32)
    for i in range(len(layers)):
        arr[i] = _numpy(layers[i][0])
        layers[i] = None
        if trim:
            capture.release_freed_memory()
    return arr
