"""Build spaCy-annotated, FAISS-indexed corpora of token vectors from the exbert-hub engine."""
