"""What visitors of a served app may make the server do: which models and corpora they may load, how big.

The operator (whoever calls ``load``/``launch`` in Python or starts the CLI) is trusted and never checked;
names typed into the app or sent to its HTTP API are. A policy comes from ``launch(policy=...)``, the CLI
flags, or Space variables (``Policy.from_env``):

    EXBERT_HUB_ALLOWED_MODELS   comma-separated fnmatch patterns of Hub ids (default "*": any Hub id)
    EXBERT_HUB_ALLOWED_CORPORA  patterns of corpora visitors may name (default: none but the app's own)
    EXBERT_HUB_LOCAL_PATHS      1: remote visitors may name server folders (default 0; loopback visitors may)
    EXBERT_HUB_MAX_PARAMS       the largest model a visitor may load, in parameters (default 1e9)
    EXBERT_HUB_MAX_DOWNLOAD     bytes of weights a visitor's model may download (default 5 GB)
    EXBERT_HUB_MAX_CORPUS       bytes a visitor's Hub corpus may download (default 2 GB)
    EXBERT_HUB_MEMORY_BUDGET    bytes (or "16GB") shared by loaded models, kept analyses and work in progress

Messages never contain server paths nor say whether a path exists.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field, replace

from .errors import ExbertError

# A Hub repo id: "name" or "owner/name", letters, digits, "-", "_", "." (no "..", no leading "." or "-")
_HUB_ID = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class PolicyError(ExbertError, PermissionError):
    """A visitor asked for something the operator's policy does not allow."""


def is_hub_id(name: str) -> bool:
    """True when ``name`` has the shape of a Hub repo id (decided by its text alone, never by the disk)."""
    return isinstance(name, str) and bool(_HUB_ID.match(name)) and len(name) <= 96


def parse_bytes(value) -> int | None:
    """'16GB', '800 MB', '2e9', 2000000000 -> bytes; None or '' -> None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(value))
    if not m:
        raise ValueError(f"not a size: {value!r} (use e.g. 16GB, 800MB or a number of bytes)")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m.group(2).lower()]
    if m.group(3) and m.group(3).lower().startswith("i"):
        scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def _machine_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 10**9


def default_memory_budget() -> int:
    """Three quarters of the machine's memory (or of a cgroup limit, as on a Space), at most 64 GB."""
    total = _machine_memory()
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                raw = f.read().strip()
            if raw.isdigit() and 0 < int(raw) < total:
                total = int(raw)
        except OSError:
            pass
    return min(int(total * 0.75), 64 * 10**9)


@dataclass(frozen=True)
class Policy:
    models: tuple[str, ...] = ("*",)
    corpora: tuple[str, ...] = ()
    local_paths: bool = False
    max_params: int = 1_000_000_000
    max_download_bytes: int = 5_000_000_000
    max_corpus_bytes: int = 2_000_000_000
    memory_budget: int = field(default_factory=default_memory_budget)
    # names the operator chose (the launch model, the app's corpus): always allowed
    operator_models: tuple[str, ...] = ()
    operator_corpora: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "Policy":
        env = os.environ if environ is None else environ

        def patterns(var):
            raw = env.get(var)
            return None if raw is None else tuple(p.strip() for p in raw.split(",") if p.strip())

        values: dict = {}
        if (p := patterns("EXBERT_HUB_ALLOWED_MODELS")) is not None:
            values["models"] = p
        if (p := patterns("EXBERT_HUB_ALLOWED_CORPORA")) is not None:
            values["corpora"] = p
        if env.get("EXBERT_HUB_LOCAL_PATHS"):
            values["local_paths"] = env["EXBERT_HUB_LOCAL_PATHS"].strip().lower() in {"1", "true", "yes"}
        for var, name in (("EXBERT_HUB_MAX_PARAMS", "max_params"), ("EXBERT_HUB_MAX_DOWNLOAD", "max_download_bytes"),
                          ("EXBERT_HUB_MAX_CORPUS", "max_corpus_bytes"), ("EXBERT_HUB_MEMORY_BUDGET", "memory_budget")):
            if env.get(var):
                values[name] = parse_bytes(env[var])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_operator(self, models=(), corpora=()) -> "Policy":
        """The same policy with the operator's own model(s) and corpus(es) always allowed."""
        return replace(self, operator_models=tuple(self.operator_models) + tuple(m for m in models if m),
                       operator_corpora=tuple(self.operator_corpora) + tuple(c for c in corpora if c))

    # --- budget split: the caches derive from one number ----------------------------------------------
    @property
    def model_cache_bytes(self) -> int:
        """Parameters of loaded models kept at once: 40% of the budget."""
        return self.memory_budget * 2 // 5

    @property
    def corpus_cache_bytes(self) -> int:
        """Opened corpora (their tables and indexes in memory): 20%."""
        return self.memory_budget // 5

    @property
    def analysis_cache_bytes(self) -> int:
        """Kept analyses: 15% (they are re-run from their request when evicted)."""
        return self.memory_budget * 3 // 20

    @property
    def in_flight_bytes(self) -> int:
        """Analyses being computed at once: what is left (25%)."""
        return self.memory_budget - self.model_cache_bytes - self.corpus_cache_bytes - self.analysis_cache_bytes

    # --- checks ----------------------------------------------------------------------------------------
    def check_model(self, name: str, *, remote: bool) -> bool:
        """Raise PolicyError unless a visitor may load ``name``; return whether it may be a local folder.

        ``remote``: the visitor is not on this machine (or the app runs as a Space).
        """
        if not isinstance(name, str) or not name.strip():
            raise PolicyError("enter a model name: a Hugging Face Hub id such as bert-base-uncased")
        name = name.strip()
        if name in self.operator_models:
            return True
        from .resolve import packaged_names

        if name in packaged_names():
            return False
        if not is_hub_id(name):
            if remote and not self.local_paths:
                # the name is not quoted back: it may be a server path, and the answer must not depend on it
                raise PolicyError("that model name is not a Hugging Face Hub id (like bert-base-uncased or "
                                  "owner/name); this server does not load folders for visitors")
            return True
        if not any(fnmatch.fnmatchcase(name, p) for p in self.models):
            raise PolicyError(f"this server does not load the model {_shown(name)}; it allows "
                              f"{_allowed_text(self.models, self.operator_models)}")
        return not remote or self.local_paths

    def check_corpus(self, name: str, *, remote: bool) -> bool:
        """Raise PolicyError unless a visitor may open the corpus ``name``; return whether it may be a folder."""
        if not isinstance(name, str) or not name.strip():
            raise PolicyError("enter a corpus: a Hub dataset id like user/name")
        name = name.strip()
        if name in self.operator_corpora:
            return True
        if not is_hub_id(name):
            if remote and not self.local_paths:
                raise PolicyError("that corpus name is not a Hub dataset id (like user/name); this server does not "
                                  "open folders for visitors")
            return True
        if not any(fnmatch.fnmatchcase(name, p) for p in self.corpora):
            raise PolicyError(f"this server does not open the corpus {_shown(name)}; it allows "
                              f"{_allowed_text(self.corpora, self.operator_corpora)}")
        return not remote or self.local_paths


def _shown(name: str, limit: int = 60) -> str:
    """A visitor's name quoted for a message: one line, bounded (it is shown as text, never as markup)."""
    one = " ".join(str(name).split())
    return repr(one if len(one) <= limit else one[: limit - 1] + "…")


def _allowed_text(patterns, operator) -> str:
    shown = [p for p in list(operator) + list(patterns) if is_hub_id(p) or "*" in p or "?" in p]
    if not shown:
        return "no other names"
    text = ", ".join(shown[:6]) + (" …" if len(shown) > 6 else "")
    return text


def is_remote(request) -> bool:
    """Whether a gradio Request comes from another machine (always True on a Hugging Face Space)."""
    if os.environ.get("SPACE_ID"):
        return True
    if request is None:  # a direct Python call: the operator
        return False
    client = getattr(request, "client", None)
    host = getattr(client, "host", None) if client is not None else None
    return host not in _LOOPBACK


PERMISSIVE = None  # policy=None everywhere means "the operator: no checks"
