"""The fused logit-lens kernel (``lens_kernel.c``): built here with the system's C compiler on first use.

Only on x86-64 Linux CPUs with AMX (bfloat16 tiles) and AVX-512: there one pass makes every layer's
bfloat16 logits in AMX tiles and reduces them while they are in the cache (row maxima, exp sums, error
sums, the candidates). Elsewhere, or when no compiler is found, ``load()`` returns None and the lens takes
its torch path (``lens._fast_lens``); ``unavailable_reason()`` says why.

The library is compiled once per source, compiler and CPU into the cache directory
(``EXBERT_HUB_CACHE``/kernels) and checked against torch on a small product before it is used.
``EXBERT_HUB_LENS_KERNEL=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from ..resolve import cache_dir

SOURCE = Path(__file__).with_name("lens_kernel.c")
GROUP = 128  # tokens per group: lens_kernel.c's GROUP
CFLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-pthread"]
NEEDED_CPU_FLAGS = ("amx_tile", "amx_bf16", "avx512f", "avx512bw", "avx512dq")
COMPILE_TIMEOUT_S = 120

_lock = threading.Lock()
_state: dict = {"tried": False, "lib": None, "why": None}


class _Unavailable(Exception):
    pass


def load():
    """The loaded kernel (ctypes library), or None where it cannot run here (see unavailable_reason)."""
    if os.environ.get("EXBERT_HUB_LENS_KERNEL", "1").strip() == "0":
        return None
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            try:
                _state["lib"] = _build_and_check()
            except _Unavailable as e:
                _state["why"] = str(e)
        return _state["lib"]


def unavailable_reason() -> str | None:
    """Why load() gave None (None when it is loaded or was not tried)."""
    if os.environ.get("EXBERT_HUB_LENS_KERNEL", "1").strip() == "0":
        return "turned off by EXBERT_HUB_LENS_KERNEL=0"
    return _state["why"]


def cpu_flags() -> tuple[set[str], str]:
    """(the CPU's feature flags, its model name) from /proc/cpuinfo; empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set(), ""
    flags, model = set(), ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
        elif key.strip() == "model name" and not model:
            model = value.strip()
    return flags, model


def _build_and_check():
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise _Unavailable("the kernel is for x86-64 Linux")
    flags, model = cpu_flags()
    missing = [f for f in NEEDED_CPU_FLAGS if f not in flags]
    if missing:
        raise _Unavailable(f"this CPU lacks {', '.join(missing)}")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise _Unavailable("no C compiler (cc or gcc) on PATH")
    src = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([src, cc.encode(), " ".join(CFLAGS).encode(), model.encode(),
                                     " ".join(sorted(flags)).encode()])).hexdigest()[:16]
    out = cache_dir() / "kernels" / f"lens-{key}.so"
    if not out.is_file():
        _compile(cc, out)
    try:
        lib = ctypes.CDLL(str(out))
    except OSError as e:
        raise _Unavailable(f"the compiled kernel does not load ({type(e).__name__})") from None
    _declare(lib)
    if lib.lens_amx_init() != 0:
        raise _Unavailable("the system refused this process AMX tiles (arch_prctl)")
    _self_check(lib)
    return lib


def _compile(cc: str, out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
    except OSError:
        raise _Unavailable("the cache directory is not writable (set EXBERT_HUB_CACHE)") from None
    try:
        run = subprocess.run([cc, *CFLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True,
                             timeout=COMPILE_TIMEOUT_S)
        if run.returncode != 0:
            first = (run.stderr.strip().splitlines() or ["(no message)"])[0]
            # (no server paths in messages)
            first = first.replace(str(SOURCE), SOURCE.name).replace(tmp, "lens.so").replace(str(out.parent), "")
            raise _Unavailable(f"the C compiler failed: {first[:200]}")
        os.replace(tmp, out)  # atomic: a concurrent process sees the old file or the whole new one
    except subprocess.TimeoutExpired:
        raise _Unavailable(f"the C compiler took over {COMPILE_TIMEOUT_S} s") from None
    except OSError as e:  # the compiler could not be started
        raise _Unavailable(f"the C compiler could not run ({type(e).__name__})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib) -> None:
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.lens_amx_init.argtypes, lib.lens_amx_init.restype = [], i
    lib.lens_amx.argtypes = [p, p, i, i, p, i, p, f, p, p, p, p, p, p, i, i]
    lib.lens_amx.restype = i
    lib.lens_rescore.argtypes = [p, p, i, p, i, i, p, p, i]
    lib.lens_rescore.restype = None


def pack_head(weight: torch.Tensor) -> torch.Tensor:
    """bfloat16 [tokens / 16, hidden / 2, 16, 2]: the head in AMX's pair layout (``weight`` [tokens, hidden],
    tokens a multiple of 16, hidden of 32, already padded)."""
    v, d = weight.shape
    return weight.to(torch.bfloat16).view(v // 16, 16, d // 2, 2).permute(0, 2, 1, 3).contiguous()


def lens_pass(lib, x: torch.Tensor, xlo: torch.Tensor | None, packed: torch.Tensor, bias: torch.Tensor | None,
              post: float, delta: torch.Tensor, heap: int, threads: int):
    """One pass over the vocabulary for rows ``x`` (bfloat16 [n, dp], n a multiple of 32).

    Returns (state float32[n, 3]: max m, sum s of exp(b - m), error sum e; candidates' bounds, their
    bfloat16-product logits float32[n, heap]; their token ids int32[n, heap], -1 where empty), the candidates
    in no particular order.
    """
    n, dp = x.shape
    groups = delta.shape[1]
    delta_t = delta.T.contiguous()  # [groups, n]: a group's rows side by side, as the kernel reads them (no copy
    # when delta is already a transposed view of such a tensor, as lens._kernel_rows makes it)
    em1 = torch.expm1(delta_t)
    x_tiles, xlo_tiles = _tiles(x), None if xlo is None else _tiles(xlo)
    st = torch.zeros(n, 3)
    st[:, 0] = float("-inf")
    hub = torch.full((n, heap), float("-inf"))
    hb = torch.full((n, heap), float("-inf"))
    hid = torch.full((n, heap), -1, dtype=torch.int32)
    assert all(t is None or t.is_contiguous() for t in (packed, bias))
    failed = lib.lens_amx(x_tiles.data_ptr(), None if xlo_tiles is None else xlo_tiles.data_ptr(), n, dp,
                          packed.data_ptr(), groups, None if bias is None else bias.data_ptr(), float(post),
                          delta_t.data_ptr(), em1.data_ptr(), st.data_ptr(), hub.data_ptr(), hb.data_ptr(),
                          hid.data_ptr(), heap, max(1, threads))
    if failed:
        raise MemoryError("the lens kernel could not allocate its buffers")
    return st, hub, hb, hid


def _tiles(x: torch.Tensor) -> torch.Tensor:
    """bfloat16 [n, dp] -> [n / 16, dp / 32, 16, 32]: every AMX tile of x (16 rows x 32 inputs) 1 KB contiguous."""
    n, dp = x.shape
    return x.view(n // 16, 16, dp // 32, 32).transpose(1, 2).contiguous()


def rescore(lib, x: torch.Tensor, weight: torch.Tensor, hid: torch.Tensor, threads: int):
    """float32 logits x_i . w_t of every heap token t (0 where empty), and sum |x_i| |w_t| of each."""
    n, d = x.shape
    x, weight, hid = x.contiguous(), weight.contiguous(), hid.contiguous()
    out = torch.empty(hid.shape)
    sabs = torch.empty(hid.shape)
    lib.lens_rescore(x.data_ptr(), weight.data_ptr(), d, hid.data_ptr(), hid.shape[1], n, out.data_ptr(),
                     sabs.data_ptr(), max(1, threads))
    return out, sabs


def _self_check(lib) -> None:
    """The kernel's maxima and sums against torch on a small random problem (a wrong build is not used)."""
    g = torch.Generator().manual_seed(0)
    n, d, v = 64, 64, 4 * GROUP
    x = torch.randn(n, d, generator=g).to(torch.bfloat16)
    w = torch.randn(v, d, generator=g).to(torch.bfloat16)
    delta = torch.full((n, v // GROUP), 0.5)
    st, hub, hb, hid = lens_pass(lib, x, None, pack_head(w.float()), None, 1.0, delta, 8, 2)
    logits = x.float() @ w.float().T
    m = logits.amax(-1)
    s = torch.exp(logits - m[:, None]).sum(-1)
    top = logits.topk(8, dim=-1)
    ok = (torch.allclose(st[:, 0], m, rtol=1e-5, atol=1e-4) and torch.allclose(st[:, 1], s, rtol=1e-4)
          and torch.equal(hid.long().sort(-1).values, top.indices.sort(-1).values))
    if not ok:
        raise _Unavailable("the compiled kernel disagrees with torch on a test product")
