"""Generated tokens are marked in the explorer's and the head view's payloads (generation.generated_flags)."""

from __future__ import annotations

from exbert_hub.generation import generate
from exbert_hub.views.explorer import explorer_payload
from exbert_hub.views.head_view import head_view_payload


def test_generated_tokens_in_the_payloads(tiny_engine):
    eng = tiny_engine("llama")
    g = generate(eng, "The cat sat on the", max_new_tokens=4)
    flags = [bool(x) for x in g.generated]
    assert any(flags) and not all(flags) and not flags[0]
    assert explorer_payload(g.analysis)["generated"] == flags
    assert head_view_payload(g.analysis)["sequences"]["input"]["generated"] == flags
    # the same text analysed again later in this process: still marked
    again = eng.analyze(g.analysis.text)
    assert explorer_payload(again)["generated"] == flags
    # typed text: nothing marked
    assert not any(explorer_payload(eng.analyze("A typed text."))["generated"])
