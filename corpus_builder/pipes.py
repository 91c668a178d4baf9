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


def worker_env() -> dict:
    """The environment of a worker process: this one's, with its import path (a checkout run in place)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env
