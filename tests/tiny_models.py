"""Tiny random models of every family the engine supports, saved as local folders (seconds to make).

Tokenizers: BERT-style models use the real uncased WordPiece vocabulary that ships with the packaged
MiniLM; byte-level BPE models (GPT-2, RoBERTa, BART, Llama) get a small BPE trained here on Python's own
English documentation; T5 reuses the WordPiece tokenizer (its attention does not care which).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from exbert_hub.resolve import _packaged_minilm

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def _wordpiece():
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab_file=str(_packaged_minilm() / "vocab.txt"), do_lower_case=True)


@functools.lru_cache(maxsize=1)
def _bpe_tokenizer_json() -> str:
    from pydoc_data.topics import topics
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    bpe.train_from_iterator(list(topics.values()), vocab_size=1000, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    return bpe._tokenizer.to_str()


def _bpe(cls_name: str):
    import transformers
    from tokenizers import Tokenizer

    cls = getattr(transformers, cls_name)
    tok = cls(tokenizer_object=Tokenizer.from_str(_bpe_tokenizer_json()), bos_token="<s>", eos_token="</s>",
              unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    return tok


def _roberta_tokenizer():
    from tokenizers import processors

    tok = _bpe("RobertaTokenizerFast")
    tok._tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True)
    return tok


def build(family: str, folder: Path) -> Path:
    """Make a tiny random ``family`` model in ``folder`` (idempotent) and return the folder."""
    import transformers as tf

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    if family == "bert":
        model, tok = tf.BertForMaskedLM(tf.BertConfig(vocab_size=30522, **SMALL)), _wordpiece()
    else:
        raise KeyError(f"no tiny model for family {family!r}")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
