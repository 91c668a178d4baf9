"""Index work in worker processes: the compressed indexes' training and finishing, one index per process.

Why processes: tuning an index's nprobe runs the reader's search on its recall queries, and a search is
many small numpy calls that hold the GIL, so threads in one process kept only ~1.2 of this machine's 2
cores busy. Measured on the index stage of a 1,500-sentence BERT-base-size build (24 indexes of 37,091
vectors, resumed from the same saved state; bench/RESULTS.md, S20): 40.6 s in the builder's process, 24.8 s
in two workers of one thread each. Each worker's numpy BLAS gets its share of the threads
(``pipes.worker_env``): with OpenBLAS's default thread per core, the two workers took 44.9 s.

A worker (``python -m corpus_builder.index_workers THREADS``) answers requests ``(method, stream, args)``
by calling ``getattr(stream, method)(*args)`` on the ``indexing.IndexStream`` it was sent (its files are on
disk: a worker needs nothing else) and sending back ``("ok", result)`` or ``("error", message)``.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from typing import Any, Iterator, Sequence

from . import pipes

MAX_PROCESSES = 8
MIN_VECTORS = 10_000  # fewer vectors per index: the work is shorter than a worker's start (~2 s)
BYTES_PER_DIM = 6  # a finishing heads index holds about this many bytes per vector dimension (codes, lists, SQ8)


class IndexWorkerError(RuntimeError):
    pass


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def process_count(jobs: int, vectors: int, dim: int, cpus: int | None = None) -> int:
    """How many worker processes ``jobs`` indexes of ``vectors`` x ``dim`` get: 0 (run them here) on one
    core, for small indexes, or for one job; else one per core, bounded by memory."""
    cpus = cpus or os.cpu_count() or 1
    if cpus < 2 or jobs < 2 or vectors < MIN_VECTORS:
        return 0
    n = min(jobs, cpus, MAX_PROCESSES)
    free = available_memory()
    if free is not None:
        n = min(n, max(1, int(free * 0.7) // max(1, vectors * dim * BYTES_PER_DIM)))
    return n if n > 1 else 0


class IndexWorkers:
    """``processes`` worker processes of ``threads`` threads each; ``run`` spreads jobs over them."""

    def __init__(self, processes: int, threads: int):
        self.threads = max(1, threads)
        env = pipes.worker_env(threads=self.threads)
        self.procs = [subprocess.Popen([sys.executable, "-m", "corpus_builder.index_workers", str(self.threads)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
                      for _ in range(processes)]
        self._answers: queue.Queue = queue.Queue()
        for i, p in enumerate(self.procs):
            threading.Thread(target=self._read, args=(i, p), daemon=True, name=f"index-worker-reader-{i}").start()

    def _read(self, i: int, proc) -> None:
        pipes.read_answers(proc, lambda answer: self._answers.put((i, answer)), "its index worker")

    def run(self, jobs: Sequence[tuple[str, Any, tuple]], names: Sequence[str] | None = None) -> Iterator[tuple[int, Any]]:
        """(job number, result) of each job ``(method, stream, args)`` as it completes. The first job that
        fails raises IndexWorkerError (with ``names[job]``, what the job was) after the running ones end."""
        todo = list(range(len(jobs)))[::-1]
        running: dict[int, int] = {}  # worker -> job

        def give(i: int) -> None:
            if todo:
                j = todo.pop()
                running[i] = j
                pipes.send(self.procs[i].stdin, jobs[j])

        for i in range(len(self.procs)):
            give(i)
        failure = None
        while running:
            i, answer = self._answers.get()
            j = running.pop(i)
            what = names[j] if names else f"job {j}"
            if answer is None:
                failure = failure or f"{what}: the index worker process exited (code {self.procs[i].wait()}); see its error above"
                continue
            status, value = answer
            if status == "error":
                failure = failure or f"{what}: {value}"
            elif failure is None:
                yield j, value
            if failure is None:
                give(i)
        if failure:
            raise IndexWorkerError(failure)

    def close(self) -> None:
        for p in self.procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def kill(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def _worker_main(threads: int) -> None:
    stdin, stdout = pipes.worker_streams()
    import faiss
    import torch

    from . import indexing

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    indexing.TUNING_THREADS = threads
    while True:
        try:
            method, stream, args = pipes.recv(stdin)
        except (EOFError, OSError):
            return
        if not pipes.answer(stdout, lambda: getattr(stream, method)(*args)):
            return


if __name__ == "__main__":
    # the imported module's copy, so what it sends pickles under corpus_builder's names, not __main__'s
    from corpus_builder import index_workers as _module

    _module._worker_main(int(sys.argv[1]))
