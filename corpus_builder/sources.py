"""Where corpus text comes from: text files, Hugging Face Hub datasets, or the offline builtin sources.

Every source is a deterministic sequence of *documents* (strings); spaCy splits documents into
sentences. The same source always yields the same documents in the same order, which is what makes a
killed build resumable.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from exbert_hub.errors import InputError

BUILTIN_PREFIX = "builtin:"
BUILTINS = {
    "python-docs": "English prose of the Python language reference shipped with CPython (pydoc_data.topics)",
    "wordnet": "the usage examples of WordNet 3.0 (everyday English phrases and sentences), from the "
               "Debian package wordnet-base, repeats removed, in a fixed mixed order",
    "wordnet-glosses": "the definitions (glosses) of WordNet 3.0's synsets, from the Debian package wordnet-base, "
                       "repeats removed, in a fixed mixed order",
}
WORDNET_LICENSE = ("WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. "
                   "License: https://wordnet.princeton.edu/license-and-commercial-use")
WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/local/WordNet-3.0/dict")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text", ""}
TABLE_FORMATS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}


class SourceError(InputError):
    """A source that cannot be read, has no such column, or holds no text."""


@dataclass
class Source:
    """A named, re-iterable sequence of documents."""

    description: dict[str, Any]  # written into the dataset card
    _documents: Callable[[], Iterator[str]] = field(repr=False)

    def documents(self) -> Iterator[str]:
        return self._documents()


def paragraphs(text: str) -> Iterator[str]:
    """Blank-line separated paragraphs, their lines joined by single spaces."""
    for block in re.split(r"\n\s*\n", text):
        para = " ".join(line.strip() for line in block.splitlines() if line.strip())
        if para:
            yield para


_HEADING_UNDERLINE = re.compile(r"^\s*([*=\-~^#])\1{2,}\s*$")
_BULLET = re.compile(r"^(\s*)(?:[*+\-]|\d+\.|\(\d+\))\s+")


def clean_python_docs(topic: str) -> Iterator[str]:
    """Prose paragraphs of one pydoc topic: no headings, code, grammar rules or tables."""
    for block in re.split(r"\n\s*\n", topic):
        lines = [line.rstrip() for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        if any(_HEADING_UNDERLINE.match(line) for line in lines):
            continue  # a title and its underline
        first = lines[0]
        indent = len(first) - len(first.lstrip())
        bullet = _BULLET.match(first)
        if indent >= 3 and not bullet:
            continue  # literal blocks: code, grammar productions, examples
        if any(s in block for s in (">>>", "::=", "+--", "|--", "====")):
            continue
        text = " ".join(_BULLET.sub("", line, count=1).strip() if i == 0 else line.strip() for i, line in enumerate(lines))
        text = re.sub(r"\*([^*\s][^*]*?)\*", r"\1", text)  # *emphasis*
        text = re.sub(r"\s+", " ", text).strip()
        letters = sum(c.isalpha() for c in text)
        if len(text) < 20 or letters < 0.6 * len(text.replace(" ", "")):
            continue
        yield text


def _python_docs() -> Iterator[str]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield from clean_python_docs(topics[name])


# --- WordNet (Debian's wordnet-base) -----------------------------------------------------------------
def wordnet_dir() -> Path:
    """The folder holding WordNet's data.noun, data.verb, data.adj and data.adv: ``$WNSEARCHDIR`` (WordNet's
    own variable) or the usual install places; a SourceError saying how to install it when none has them."""
    candidates = [os.environ["WNSEARCHDIR"]] if os.environ.get("WNSEARCHDIR") else []
    for folder in candidates + list(WORDNET_DIRS):
        if all((Path(folder) / f).is_file() for f in WORDNET_FILES):
            return Path(folder)
    where = "$WNSEARCHDIR" if candidates else ", ".join(WORDNET_DIRS)
    raise SourceError("builtin:wordnet needs the WordNet database (data.noun, data.verb, ...), not found in "
                      f"{where}: install it with `apt-get install wordnet-base` (Debian/Ubuntu, as root), "
                      "or set WNSEARCHDIR to a folder holding WordNet 3.0's dict files")


def parse_wordnet_line(line: str) -> tuple[str, list[str]] | None:
    """(definition, usage examples) of one line of a WordNet ``data.*`` file; None for the licence header.

    A line is ``offset lex_filenum ss_type words... pointers... | gloss``; the gloss is the definition, then
    the examples, each in double quotes, separated by "; ". WordNet's own typos are handled: a missing
    closing quote at the end, an attribution after the closing quote ("..."- Author), a stray ":" before
    the separator. Pieces that are still ambiguous (a quote inside an example) are left out.
    """
    if not line[:8].isdigit() or " | " not in line:
        return None  # the licence text at the top of each file starts with two spaces and a line number
    gloss = line.split(" | ", 1)[1].strip()
    definition: list[str] = []
    examples: list[str] = []
    for piece in re.split(r';\s*(?=")', gloss):
        piece = piece.strip()
        if not piece.startswith('"'):
            if not examples:
                definition.append(piece)
            continue
        body = piece[1:]
        if '"' in body:
            body = body[: body.rindex('"')]  # drops an attribution after the closing quote
        if '"' in body:
            continue  # a quote inside: two examples run together or a typo; cannot tell which
        text = " ".join(body.split()).strip(" ;:")
        if sum(c.isalpha() for c in text) >= 2:
            examples.append(text)
    return " ".join("; ".join(p for p in definition if p).split()).strip(" ;:"), examples


def wordnet_entries(folder: Path | None = None):
    """(part of speech, definition, examples) of every synset, in file order (noun, verb, adj, adv)."""
    folder = wordnet_dir() if folder is None else Path(folder)
    for name in WORDNET_FILES:
        with open(folder / name, encoding="utf-8", errors="replace") as f:
            for line in f:
                parsed = parse_wordnet_line(line)
                if parsed is not None:
                    yield name.split(".")[1], parsed[0], parsed[1]


def _mixed_unique(texts) -> list[str]:
    """Repeats removed (case and spacing ignored), in the order of a hash of the text: deterministic on every
    machine and Python, and any prefix (--max-sentences) mixes every topic and part of speech (the files
    group synsets by topic: the first examples of data.noun are all about acts and attributes)."""
    unique: dict[str, str] = {}
    for text in texts:
        unique.setdefault(" ".join(text.lower().split()), text)
    return sorted(unique.values(), key=lambda t: (hashlib.sha1(t.encode("utf-8")).hexdigest(), t))


def wordnet_examples(folder: Path | None = None) -> list[str]:
    """WordNet's usage examples, each once, in the fixed mixed order of the ``builtin:wordnet`` source."""
    return _mixed_unique(ex for _, _, examples in wordnet_entries(folder) for ex in examples)


def wordnet_glosses(folder: Path | None = None) -> list[str]:
    """WordNet's definitions, each once, in a fixed mixed order (``builtin:wordnet-glosses``)."""
    return _mixed_unique(d for _, d, _ in wordnet_entries(folder) if d)


def _wordnet_source(name: str) -> Source:
    folder = wordnet_dir()  # fails now, with the install hint, rather than when the build starts reading
    texts = wordnet_examples if name == "wordnet" else wordnet_glosses
    return Source({"type": "builtin", "name": BUILTIN_PREFIX + name, "about": BUILTINS[name],
                   "license": WORDNET_LICENSE}, lambda: iter(texts(folder)))


def _text_file(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        block: list[str] = []
        for line in f:
            if line.strip():
                block.append(line.strip())
            elif block:
                yield " ".join(block)
                block = []
        if block:
            yield " ".join(block)


def _text_folder(path: Path) -> Iterator[str]:
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES - {""}):
        yield from _text_file(file)


def _rows(ds, column: str) -> Iterator[str]:
    for row in ds:
        value = row.get(column)
        if isinstance(value, str) and value.strip():
            yield value.strip()


def _check_column(ds, column: str, what: str) -> None:
    names = list(getattr(ds, "column_names", None) or [])
    if not names:
        features = getattr(ds, "features", None)
        names = list(features) if features else []
    if names and column not in names:
        raise SourceError(f"{what} has no column {column!r}; its columns are: {', '.join(names)}. Pick one with --column.")


def _dataset(name: str, config: str | None, split: str, column: str, data_files: str | None = None) -> Source:
    import datasets

    what = f"dataset {name!r}" + (f" (config {config!r})" if config else "") + f", split {split!r}"

    def load():
        try:
            if data_files is not None:
                return datasets.load_dataset(name, data_files=data_files, split=split)
            return datasets.load_dataset(name, config, split=split, streaming=True)
        except FileNotFoundError as err:
            raise SourceError(f"could not find {what}: {err}. Check the name, or go online (unset HF_HUB_OFFLINE).") from err
        except ValueError as err:
            raise SourceError(f"could not read {what}: {str(err).splitlines()[0]}") from err
        except Exception as err:  # noqa: BLE001 - network / hub errors of several kinds
            raise SourceError(f"could not load {what}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err

    ds = load()
    _check_column(ds, column, what)

    def docs():
        return _rows(load(), column)

    description = {"type": "hub-dataset" if data_files is None else "file", "name": name, "config": config,
                   "split": split, "column": column}
    if data_files is not None:
        description = {"type": "file", "path": data_files, "format": name, "column": column}
    return Source(description, docs)


def open_source(spec: str, *, config: str | None = None, split: str = "train", column: str = "text") -> Source:
    """The documents of ``spec``: 'builtin:wordnet', 'builtin:wordnet-glosses', 'builtin:python-docs', a text file or folder, a parquet/json/csv file,
    a local dataset folder, or a Hub dataset id (read with ``datasets.load_dataset``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise SourceError("no source given: pass --source FILE, a Hub dataset id, builtin:wordnet or builtin:python-docs")
    spec = spec.strip()
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        if name not in BUILTINS:
            raise SourceError(f"unknown builtin source {spec!r}; available: " + ", ".join(BUILTIN_PREFIX + b for b in BUILTINS))
        if name.startswith("wordnet"):
            return _wordnet_source(name)
        return Source({"type": "builtin", "name": spec, "about": BUILTINS[name]}, _python_docs)
    path = Path(spec).expanduser()
    if path.is_file():
        fmt = TABLE_FORMATS.get(path.suffix.lower())
        if fmt:
            return _dataset(fmt, None, "train", column, data_files=str(path.resolve()))
        if path.stat().st_size == 0:
            raise SourceError(f"the source file {path} is empty")
        resolved = path.resolve()
        return Source({"type": "text-file", "path": str(resolved)}, lambda: _text_file(resolved))
    if path.is_dir():
        if any(path.glob("*.txt")) or any(path.glob("**/*.txt")):
            resolved = path.resolve()
            return Source({"type": "text-folder", "path": str(resolved)}, lambda: _text_folder(resolved))
        return _dataset(str(path.resolve()), config, split, column)
    if spec.count("/") > 1 or spec.startswith((".", "~")) or spec.endswith(tuple(TABLE_FORMATS) + (".txt",)):
        raise SourceError(f"the source {spec!r} is not a file or folder that exists")
    return _dataset(spec, config, split, column)
