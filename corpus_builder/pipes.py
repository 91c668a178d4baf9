"""Length-prefixed pickles over a pipe: how the builder talks to its worker processes (spaCy, indexes).

Workers are plain subprocesses (``python -m corpus_builder.<module>``), not multiprocessing: that would
re-import the caller's __main__ (scripts without a main guard break) and could leave orphans. A worker
exits when its stdin closes, so it dies with a killed builder."""

from __future__ import annotations

import os
import pickle
import struct
import sys


def send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)
    stream.flush()


def recv(stream):
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError
    (n,) = struct.unpack("<Q", head)
    data = stream.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)


def read_answers(proc, put, what: str) -> None:
    """A builder's reader thread: ``put`` each answer of worker ``proc``, then None when its pipe ends. An
    answer that cannot be read is put as ``("error", ...)`` naming ``what``, the worker is killed and the
    loop ends: the pipe is out of step from there on (waiting for more would hang the build)."""
    while True:
        try:
            answer = recv(proc.stdout)
        except (EOFError, OSError, ValueError):
            put(None)
            return
        except Exception as err:  # noqa: BLE001 - a garbled answer
            proc.kill()
            put(("error", f"{what}'s answer could not be read ({type(err).__name__}: {err})"))
            return
        put(answer)


def worker_streams():
    """In a worker: (requests in, answers out), binary. The answers go to a private copy of the pipe, and
    file descriptor 1 then points at stderr, so nothing else can land on the pipe: not Python's prints, and
    not a C library's either (FAISS prints to descriptor 1 when verbose)."""
    out = os.fdopen(os.dup(1), "wb")
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return sys.stdin.buffer, out


def answer(stream, work, what: str = "") -> bool:
    """A worker's answer to one request: ``("ok", work())``, or ``("error", "<what>Type: message")`` when
    it raises (the builder raises it). False when the pipe is gone (the builder stopped)."""
    try:
        out = ("ok", work())
    except Exception as err:  # noqa: BLE001 - reported to the builder
        out = ("error", f"{what}{type(err).__name__}: {err}")
    try:
        send(stream, out)
        return True
    except (BrokenPipeError, OSError):
        return False


BLAS_THREADS_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


AVX512_CORE_FLAGS = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}  # OpenBLAS's SkylakeX kernels


def openblas_core(flags: set[str], model: str) -> str | None:
    """The OpenBLAS kernels a worker should ask for, where OpenBLAS's own choice is the slower one: an AMD
    CPU with AVX-512 (this project's EPYC, Zen 5) is run on its AVX2 "Haswell" kernels, at half the float32
    speed of its "SkylakeX" ones (numpy, one thread, 6,450 x 768 @ 768 x 512: 51 against 28 ms; bench/
    RESULTS.md, S26). Same float32 arithmetic, another summation order."""
    return "SkylakeX" if "AMD" in model.upper() and AVX512_CORE_FLAGS <= flags else None


def worker_env(threads: int | None = None) -> dict:
    """The environment of a worker process: this one's, with its import path (a checkout run in place);
    with ``threads``, numpy's BLAS (and OpenMP) limited to that many threads; OpenBLAS's kernels chosen by
    ``openblas_core`` unless the caller's environment chose them (a library reads that once, at load,
    so a worker is the place to set it: this process's numpy is loaded already).

    Why: OpenBLAS starts a thread per core and they spin while they wait, so two processes each calling
    numpy's matrix products on a 2-core machine halved each other's speed (two index workers: 6.5-6.9 s
    per index side by side against 3.2-3.5 s alone; with one BLAS thread each, 3.4-3.7 s side by side)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if threads is not None:
        env.update({v: str(threads) for v in BLAS_THREADS_VARIABLES})
    from exbert_hub.analyses.lens_kernel import cpu_flags

    core = openblas_core(*cpu_flags())
    if core and "OPENBLAS_CORETYPE" not in env:
        env["OPENBLAS_CORETYPE"] = core
    return env
