"""Where corpus text comes from: text files, Hugging Face Hub datasets, or the offline builtin source.

Every source is a deterministic sequence of *documents* (strings); spaCy splits documents into
sentences. The same source always yields the same documents in the same order, which is what makes a
killed build resumable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from exbert_hub.errors import InputError

BUILTIN_PREFIX = "builtin:"
BUILTINS = {"python-docs": "English prose of the Python language reference shipped with CPython (pydoc_data.topics)"}
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
    """The documents of ``spec``: 'builtin:python-docs', a text file or folder, a parquet/json/csv file,
    a local dataset folder, or a Hub dataset id (read with ``datasets.load_dataset``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise SourceError("no source given: pass --source FILE, a Hub dataset id, or builtin:python-docs")
    spec = spec.strip()
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        if name not in BUILTINS:
            raise SourceError(f"unknown builtin source {spec!r}; available: " + ", ".join(BUILTIN_PREFIX + b for b in BUILTINS))
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
