"""Build spaCy-annotated, FAISS-indexed corpora of token vectors from the exbert-hub engine.

    python -m corpus_builder build --model sentence-transformers/all-MiniLM-L6-v2 --out my_corpus
    python -m corpus_builder publish my_corpus --repo-id user/name

Imports are lazy so the spaCy worker process (``python -m corpus_builder.annotate``) starts light.
"""

__all__ = ["build", "BuildSettings", "BuildError", "publish", "PublishError"]


def __getattr__(name):
    if name in ("build", "BuildSettings", "BuildError"):
        from . import builder as _build

        return getattr(_build, name)
    if name in ("publish", "PublishError"):
        from . import publishing as _publish

        return getattr(_publish, name)
    raise AttributeError(name)
