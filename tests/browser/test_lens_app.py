"""The Layer lens tab in the app (tiny Llama): the grid follows the analysis; Generate continues the text,
the generated rows are marked, and the lens covers them; the /lens and /generate endpoints."""

from __future__ import annotations

import pytest
from serving import launch_on_free_port
from view_labels import token_label

from exbert_hub.analyses.lens import logit_lens
from exbert_hub.generation import generate

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def llama_app(tiny, tiny_engine):
    from exbert_hub.app import build_app, launch_options
    from exbert_hub.service import AnalysisStore

    model = str(tiny("llama"))
    demo = build_app(model, store=AnalysisStore(max_items=8))
    launch_on_free_port(demo, **launch_options())
    yield demo.local_url.rstrip("/") + "/", tiny_engine("llama")
    demo.close()


def test_generate_marks_the_new_rows_and_the_lens_covers_them(page, llama_app):
    url, eng = llama_app
    page.goto(url)
    page.wait_for_selector(".xb-root[data-ready='1']", timeout=60_000)
    page.get_by_role("tab", name="Layer lens").click()
    page.wait_for_selector(".xl-root[data-ready='1']", timeout=60_000)
    prompt = page.input_value("#xh-text textarea")
    page.fill("#xl-new-tokens input", "6")
    page.click("#xl-generate")
    # greedy: the same continuation as generate() in Python
    want = generate(eng, prompt, max_new_tokens=6)
    page.wait_for_function("(t) => document.querySelector('#xh-text textarea').value === t", arg=want.analysis.text,
                           timeout=60_000)
    page.wait_for_selector(".xl-row.xl-generated", timeout=60_000)
    flags = want.generated.tolist()
    n = len(flags)
    last = n - 1
    page.wait_for_selector(f'.xl-row[data-pos="{last}"] .xl-cell:not(.xl-loading)')
    shown = page.eval_on_selector_all(".xl-row[data-pos]", "rs => rs.map(r => [Number(r.dataset.pos), r.classList.contains('xl-generated')])")
    assert shown and all(flag == flags[pos] for pos, flag in shown)
    assert any(flag for _, flag in shown)
    lens = logit_lens(want.analysis, eng, top_k=1, positions=[last])
    words = lens.tokens(eng.tokenizer)
    cells = page.eval_on_selector_all(f'.xl-row[data-pos="{last}"] .xl-cell', "cs => cs.map(c => c.textContent)")
    assert cells == [token_label(words[s][0][0]) for s in range(lens.num_states)]
    assert page.locator(f'.xl-row[data-pos="{last}"] .xl-gen-mark').count() == 1
    assert not page.errors


def test_lens_and_generate_endpoints(llama_app):
    from gradio_client import Client

    url, eng = llama_app
    client = Client(url, verbose=False)
    text = "the cat sat on the mat"
    out = client.predict(text, None, 3, [0, -1], "the", None, api_name="/lens")
    a = eng.analyze(text)
    lens = logit_lens(a, eng, top_k=3, positions=[0, -1])
    words = lens.tokens(eng.tokenizer)
    assert out["positions"] == [0, len(a.tokens) - 1]
    assert [w for w, _ in out["layers"][1][-1]] == words[-1][1]
    assert len(out["target"]["ranks"]) == eng.num_layers + 1
    g = client.predict(text, None, 4, False, None, api_name="/generate")
    want = generate(eng, text, max_new_tokens=4)
    assert g["continuation"] == want.continuation and g["generated"] == want.generated.tolist()
    with pytest.raises(Exception, match="max_new_tokens"):
        client.predict(text, None, 999, False, None, api_name="/generate")
