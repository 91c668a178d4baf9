"""Build spaCy-annotated, FAISS-indexed corpora of token vectors from the exbert-hub engine.

    python -m corpus_builder build --model sentence-transformers/all-MiniLM-L6-v2 --out my_corpus
    python -m corpus_builder publish my_corpus --repo-id user/name
"""

from .build import BuildError, BuildSettings, build
from .publish import PublishError, publish

__all__ = ["build", "BuildSettings", "BuildError", "publish", "PublishError"]
