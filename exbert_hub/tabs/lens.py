"""The layer lens tab: what each layer predicts (logit lens), and Generate (causal LMs continue the text).

Endpoints: ``/lens`` (every layer's top-k at some positions, and a target token's rank and probability
over the layers) and ``/generate`` (continue a text; the generated tokens are flagged).
"""

from __future__ import annotations

import gradio as gr
import numpy as np

from ..analyses.lens import lens_positions, logit_lens, target_id, target_trace
from ..analysis import CAUSAL_LM, ENCODER_DECODER, MASKED_LM, kind_phrase
from ..errors import InputError, user_message
from ..generation import DEFAULT_NEW_TOKENS, MAX_NEW_TOKENS, generate, generated_flags
from ..inputs import as_int, as_int_list, as_text
from ..service import StoreRef
from ..views.lens_view import LensView, lens_view_payload
from .base import AppContext, Tab, api_error

MAX_API_POSITIONS = 256  # positions one /lens call may ask for (each is layers x vocab of work)


def _engine_of(ctx: AppContext):
    def engine_of(key: str):
        return ctx.engine_for(ctx.store.request(key).model, None)  # loaded already for this analysis
    return engine_of


class LensTab(Tab):
    id = "lens"
    label = "Layer lens"

    def build(self, ctx: AppContext) -> gr.Component:
        with gr.Row(equal_height=False, elem_id="xl-generate-row"):
            self.new_tokens = gr.Number(value=DEFAULT_NEW_TOKENS, minimum=1, maximum=MAX_NEW_TOKENS, precision=0,
                                        label=f"New tokens (1-{MAX_NEW_TOKENS})", elem_id="xl-new-tokens", min_width=120)
            self.sample = gr.Checkbox(value=False, label="Sample (else greedy)", elem_id="xl-sample", min_width=120)
            self.seed = gr.Number(value=0, minimum=0, precision=0, label="Seed", elem_id="xl-seed", min_width=100)
            self.generate_btn = gr.Button("Generate", elem_id="xl-generate", min_width=120)
        self.view = LensView(None, store=StoreRef(ctx.store), engine_of=_engine_of(ctx), elem_id="xh-lens-view")
        return self.view

    def value(self, ctx, key, analysis, engine, view):
        if analysis.kind not in (CAUSAL_LM, MASKED_LM, ENCODER_DECODER):
            return {"view": "none", "error": f"The layer lens needs a language-model head; {analysis.model_name} is "
                                             f"{kind_phrase(analysis.kind)}."}
        token = view.get("token")
        return lens_view_payload(analysis, engine, key=key, position=token)

    def wire(self, ctx: AppContext) -> None:
        def on_generate(model, text, n_new, sample, seed, key, view, request: gr.Request):
            try:
                name = (as_text(model, "model", optional=True) or ctx.default_model).strip()
                eng = ctx.engine_for(name, request)
                n = as_int(n_new, "new tokens", lo=1, hi=MAX_NEW_TOKENS)
                g = generate(eng, as_text(text, "text"), max_new_tokens=n, sample=bool(sample),
                             seed=as_int(seed, "seed", lo=0) if sample else None)
            except Exception as err:  # noqa: BLE001 - one line in the banner
                return {ctx.message: ctx.banner(user_message(err))}
            out = ctx.run(name, g.analysis.text, None, (), dict(view or {}), self.id, request, shown_key=key)
            out[ctx.text_box] = g.analysis.text
            return out

        self.generate_btn.click(
            on_generate,
            inputs=[ctx.model_box, ctx.text_box, self.new_tokens, self.sample, self.seed, ctx.key_state, ctx.view_state],
            outputs=[*ctx.outputs, ctx.text_box],
            api_visibility="private",
        )

    def api(self, ctx: AppContext) -> None:
        def lens(text: str, model: str | None = None, top_k: int = 5, positions: list[int] | None = None,
                 target: str | None = None, target_position: int | None = None,
                 request: gr.Request = None) -> dict:
            """What each layer predicts: for each position (default: all, at most 256) and each hidden state
            (0 = embeddings), the top-k words and probabilities through the model's own final norm and head;
            with `target` (a word, or '#id'), its rank and probability at `target_position` (default: last)."""
            try:
                eng, a = ctx.analysis(model, text, request=request)
                k = as_int(top_k, "top_k", lo=1, hi=50)
                pos = as_int_list(positions, "positions")
                n = lens_positions(a)
                if pos is None:
                    pos = list(range(min(n, MAX_API_POSITIONS)))
                if len(pos) > MAX_API_POSITIONS:
                    raise InputError(f"positions has {len(pos)} entries; at most {MAX_API_POSITIONS} per call")
                lens = logit_lens(a, eng, top_k=k, positions=pos)
                words = lens.tokens(eng.tokenizer)
                seq = a.decoder_input if a.decoder_input is not None else a.input
                out = {
                    "model": a.model_name, "head": lens.head, "stack": lens.stack,
                    "tokens": [str(seq.display[p]) for p in lens.positions],
                    "positions": lens.positions.tolist(),
                    "generated": [bool(x) for x in generated_flags(a)[lens.positions]] if seq is a.input else None,
                    "layers": [[[[w, round(float(p), 6)] for w, p in zip(words[s][i], lens.top_probs[s, i])]
                                for s in range(lens.num_states)] for i in range(len(lens.positions))],
                }
                if target is not None and str(target).strip():
                    t = str(target).strip()
                    tid = int(t[1:]) if t.startswith("#") and t[1:].isdigit() else target_id(eng, t)
                    tp = n - 1 if target_position is None else as_int(target_position, "target_position", lo=-n, hi=n - 1)
                    trace = target_trace(a, eng, tp, tid)
                    out["target"] = {"token_id": tid, "token": eng.tokenizer.decode([tid]), "position": trace.position,
                                     "ranks": trace.ranks.tolist(), "probs": [round(float(x), 6) for x in trace.probs]}
                return out
            except Exception as err:  # noqa: BLE001
                raise api_error(err) from None

        def generate_api(text: str, model: str | None = None, max_new_tokens: int = DEFAULT_NEW_TOKENS,
                         sample: bool = False, seed: int | None = None, request: gr.Request = None) -> dict:
            """Continue `text` with a causal LM (greedy, or sampled with `seed`), at most 64 new tokens; returns
            the continuation, the analysed tokens and which of them were generated."""
            try:
                name = (as_text(model, "model", optional=True) or ctx.default_model).strip()
                eng = ctx.engine_for(name, request)
                g = generate(eng, as_text(text, "text"), max_new_tokens=as_int(max_new_tokens, "max_new_tokens", lo=1,
                             hi=MAX_NEW_TOKENS), sample=bool(sample),
                             seed=None if seed is None else as_int(seed, "seed", lo=0))
                return {"model": eng.name, "prompt": g.prompt, "continuation": g.continuation, "text": g.analysis.text,
                        "new_ids": g.new_ids, "stopped": g.stopped, "tokens": [str(t) for t in g.analysis.display_tokens],
                        "generated": np.asarray(g.generated, dtype=bool).tolist()}
            except Exception as err:  # noqa: BLE001
                raise api_error(err) from None

        gr.api(lens, api_name="lens")
        gr.api(generate_api, api_name="generate")
