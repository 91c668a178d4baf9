"""The test tree itself: pytest imports test modules by basename (no packages), so two files with the
same name in different folders stop the whole collection (it happened with test_lens_view.py)."""

from collections import Counter
from pathlib import Path


def test_no_two_test_files_share_a_basename():
    names = Counter(p.name for p in Path(__file__).resolve().parent.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1]
