"""Attention for long inputs, a block of query rows at a time, sparse: what the explorer and the head view
fetch as the user scrolls once a whole layer is too big to send (virtualised rows).

A block holds, for every head of one layer, the rows ``r0 .. r1-1`` of the attention, keeping only the
weights a view can draw (``>= MIN_WEIGHT``, the head view's "opacity 0" limit: 0.5/255). Each row sums to
1, so a row keeps at most ``1 / MIN_WEIGHT`` = 510 weights whatever the text's length: a block's size is
bounded by ``heads * rows * 510 * 6`` bytes (uint16 index + float32 weight), not by T. Weights are the
engine's own float32 numbers (``stack.attentions[l, h, i]``), not quantised.

Payload (JSON-safe)::

    {"stack", "layer", "block", "r0", "r1", "heads": H, "keys": K, "encoding": "rows-f32",
     "indptr": b64 uint32[H * (r1 - r0) + 1]   (row-major: head, then row),
     "indices": b64 uint16[nnz]  (key positions, ascending within a row),
     "values": b64 float32[nnz],
     "special_mass": b64 float32[H * (r1 - r0)]  (each row's total weight on special keys: the
                                                  explorer's "hide special tokens" renormalises by it)}
"""

from __future__ import annotations

import base64

import numpy as np

from ..analysis import Analysis, AttentionStack

MIN_WEIGHT = 0.5 / 255  # below this a line is never drawn (opacity rounds to 0)
BLOCK_ROWS = 64
# Above this many bytes of one dense uint8 layer (heads * q * k) the views fetch row blocks instead of
# whole layers. SmolLM2 (9 heads) switches at 1,366 tokens, BERT-base (12 heads) at 1,183.
LONG_LAYER_BYTES = 16_000_000
ENCODING = "rows-f32"


def is_long(stack: AttentionStack) -> bool:
    """Whether the views show this stack by row blocks (one dense layer would exceed LONG_LAYER_BYTES)."""
    return stack.num_heads * stack.q_len * stack.k_len > LONG_LAYER_BYTES


def num_blocks(stack: AttentionStack, block_rows: int = BLOCK_ROWS) -> int:
    return -(-stack.q_len // block_rows)


def key_special(analysis: Analysis, stack_name: str) -> np.ndarray:
    """bool[k]: which key tokens of a stack are special (the decoder's own for "decoder", else the input's)."""
    seq = analysis.decoder_input if stack_name == "decoder" and analysis.decoder_input is not None else analysis.input
    return np.asarray(seq.special, dtype=bool)


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def block_payload(analysis: Analysis, stack_name: str, layer: int, block: int,
                  block_rows: int = BLOCK_ROWS) -> dict:
    """Rows ``block * block_rows ...`` of every head of ``layer`` in stack ``stack_name`` (see the module doc)."""
    st = analysis.stack(stack_name)
    layer, block = int(layer), int(block)
    if not 0 <= layer < st.num_layers:
        raise ValueError(f"layer {layer} is out of range 0..{st.num_layers - 1}")
    nb = num_blocks(st, block_rows)
    if not 0 <= block < nb:
        raise ValueError(f"block {block} is out of range 0..{nb - 1}")
    r0, r1 = block * block_rows, min(st.q_len, (block + 1) * block_rows)
    h_all = np.arange(st.num_heads)
    special = key_special(analysis, stack_name)
    rows = np.empty((st.num_heads, r1 - r0, st.k_len), np.float32)
    for i in range(r0, r1):  # one query row at a time: O(heads * k * head_dim) each, nothing k x k
        rows[:, i - r0] = st.attentions[layer, h_all, i] if st.weights is None else st.weights[layer, :, i]
    flat = rows.reshape(-1, st.k_len)
    keep = flat >= np.float32(MIN_WEIGHT)
    indptr = np.zeros(flat.shape[0] + 1, dtype="<u4")
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    indices = np.nonzero(keep)[1].astype("<u2")
    values = flat[keep].astype("<f4")
    mass = flat[:, special].sum(axis=1, dtype=np.float64).astype("<f4") if special.any() else \
        np.zeros(flat.shape[0], "<f4")
    return {"stack": stack_name, "layer": layer, "block": block, "r0": r0, "r1": r1,
            "heads": st.num_heads, "keys": st.k_len, "encoding": ENCODING,
            "indptr": _b64(indptr), "indices": _b64(indices), "values": _b64(values), "special_mass": _b64(mass)}


def decode_block(payload: dict) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """``out[h][row - r0] = (key indices int64[n], weights float32[n])`` of a block payload (tests, clients)."""
    indptr = np.frombuffer(base64.b64decode(payload["indptr"]), dtype="<u4").astype(np.int64)
    idx = np.frombuffer(base64.b64decode(payload["indices"]), dtype="<u2").astype(np.int64)
    val = np.frombuffer(base64.b64decode(payload["values"]), dtype="<f4")
    n = payload["r1"] - payload["r0"]
    return [[(idx[indptr[h * n + r]:indptr[h * n + r + 1]], val[indptr[h * n + r]:indptr[h * n + r + 1]])
             for r in range(n)] for h in range(payload["heads"])]


def row_payload(analysis: Analysis, stack_name: str, layer: int, row: int) -> dict:
    """Every weight of query ``row`` in every head of ``layer``: float32[heads, k] (the hovered or frozen
    token of a long input, so its lines and numbers are the engine's, small weights included)."""
    st = analysis.stack(stack_name)
    layer, row = int(layer), int(row)
    if not 0 <= layer < st.num_layers:
        raise ValueError(f"layer {layer} is out of range 0..{st.num_layers - 1}")
    if not 0 <= row < st.q_len:
        raise ValueError(f"row {row} is out of range 0..{st.q_len - 1}")
    w = st.attentions[layer, np.arange(st.num_heads), row] if st.weights is None else st.weights[layer, :, row]
    return {"stack": stack_name, "layer": layer, "row": row, "shape": [st.num_heads, st.k_len],
            "encoding": "float32", "b64": _b64(np.asarray(w, dtype="<f4"))}
