"""Tiny, randomly initialised Sentence-Transformers base models, built offline, for tests of ``--base-model``.

Each builder seeds torch, writes a Sentence-Transformers folder into ``folder`` and returns it as a ``Path``. The
models are tiny (hidden size 32, 2 layers, a vocabulary of a hundred-odd tokens) so that one builds in well under a
second. Tokenizers are built from a fixed vocabulary with the ``tokenizers`` library (no download, no training):
lowercase, split on whitespace and punctuation, WordPiece over single letters and digits, so no text maps to an
unknown token.
"""
from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import BertConfig, BertModel, BertTokenizerFast, LlamaConfig, LlamaModel, PreTrainedTokenizerFast

SEED = 0
HIDDEN = 32
QUERY_PROMPT = "Instruct: find the passage\nQuery: "
WORDS = ["the", "a", "of", "and", "is", "in", "to", "what", "which", "cell", "cells", "gene", "protein", "passage",
         "query", "find", "instruct", "study", "effect", "cancer", "risk", "blood"]


def _wordpiece_vocab(specials: list[str]) -> list[str]:
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return list(dict.fromkeys(specials + WORDS + chars + ["##" + c for c in string.ascii_lowercase + string.digits]))


def _bert_tokenizer(folder: Path) -> BertTokenizerFast:
    vocab = _wordpiece_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=128)


def _decoder_tokenizer() -> PreTrainedTokenizerFast:
    """WordPiece tokenizer for the decoder; appends EOS to every text (as Qwen3-Embedding's tokenizer does) so
    last-token pooling reads the EOS state, and pads on the left."""
    vocab = _wordpiece_vocab(["<pad>", "<unk>", "</s>"])
    backend = Tokenizer(WordPiece({tok: i for i, tok in enumerate(vocab)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", vocab.index("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="</s>", padding_side="left", model_max_length=128)


def _save_st(modules: list, folder: Path, **kwargs) -> Path:
    folder = Path(folder)
    SentenceTransformer(modules=modules, device="cpu", **kwargs).save(str(folder))
    return folder


def _bert_transformer(tmp: Path) -> Transformer:
    """A seeded random 2-layer BERT (hidden 32) and its tokenizer, saved in ``tmp``, as an ST ``Transformer``."""
    torch.manual_seed(SEED)
    tokenizer = _bert_tokenizer(tmp)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return Transformer(str(tmp))


def tiny_bert(folder: str | Path, pooling: str = "mean", normalize: bool = True) -> Path:
    """Transformer(BERT, 2 layers, hidden 32) -> Pooling(``pooling``) [-> Normalize]; right padding, no prompts."""
    with tempfile.TemporaryDirectory() as tmp:
        modules = [_bert_transformer(Path(tmp)), Pooling(HIDDEN, pooling)] + ([Normalize()] if normalize else [])
        return _save_st(modules, folder)


def tiny_bert_with_dense(folder: str | Path) -> Path:
    """Transformer(BERT) -> Pooling(cls) -> Dense(32 -> 16, tanh) -> Normalize."""
    with tempfile.TemporaryDirectory() as tmp:
        modules = [_bert_transformer(Path(tmp)), Pooling(HIDDEN, "cls"),
                   Dense(HIDDEN, HIDDEN // 2, activation_function=torch.nn.Tanh()), Normalize()]
        return _save_st(modules, folder)


def _save_decoder_llm(folder: Path) -> Path:
    """A plain 2-layer ``LlamaModel`` (hidden 32) and its tokenizer, as a transformers folder."""
    tokenizer = _decoder_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    LlamaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _decoder_st(llm_folder: Path) -> SentenceTransformer:
    modules = [Transformer(str(llm_folder)), Pooling(HIDDEN, "lasttoken"), Normalize()]
    return SentenceTransformer(modules=modules, device="cpu", prompts={"query": QUERY_PROMPT})


def tiny_decoder(folder: str | Path) -> Path:
    """Qwen3-Embedding style: Transformer(LlamaModel, 2 layers, left padding, EOS appended) -> Pooling(lasttoken)
    -> Normalize, with ``prompts={"query": QUERY_PROMPT}`` and no default prompt (documents get none)."""
    torch.manual_seed(SEED)
    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        _decoder_st(_save_decoder_llm(Path(tmp))).save(str(folder))
    return folder


def tiny_decoder_lora(folder: str | Path) -> Path:
    """The decoder of ``tiny_decoder`` with a LoRA adapter (rank 4 on q/k/v/o projections, random non-zero A and B).

    ``folder`` is a Sentence-Transformers folder whose root holds the adapter (``adapter_config.json`` +
    ``adapter_model.safetensors``, no full weights) next to the tokenizer, ``modules.json``, Pooling(lasttoken) and
    Normalize, with the query prompt -- what ``SentenceTransformer.save`` writes for a model with an adapter. The
    adapter's ``base_model_name_or_path`` is the absolute path of the plain base LLM, saved in the sibling folder
    ``<folder>-base`` (a transformers folder, also usable by ``tiny_decoder`` style tests as "the base decoder").
    """
    torch.manual_seed(SEED)
    folder = Path(folder).resolve()
    base = _save_decoder_llm(folder.with_name(folder.name + "-base"))
    model = _decoder_st(base)
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.2)
    model.save(str(folder))
    return folder


REMOTE_MODEL_TYPE = "tiny-remote-bert"
_REMOTE_CODE = {
    "configuration_tiny.py": ("from transformers import BertConfig\n\n\n"
                              "class TinyRemoteConfig(BertConfig):\n"
                              f"    model_type = {REMOTE_MODEL_TYPE!r}\n"),
    "modeling_tiny.py": ("from transformers import BertModel\n\n"
                         "from .configuration_tiny import TinyRemoteConfig\n\n\n"
                         "class TinyRemoteModel(BertModel):\n"
                         "    config_class = TinyRemoteConfig\n"),
}


def tiny_remote_code_bert(folder: str | Path) -> Path:
    """``tiny_bert`` (mean pooling, normalised) whose config has a ``model_type`` transformers does not know and an
    ``auto_map`` to code files in the folder, so it loads only with ``trust_remote_code=True``."""
    folder = tiny_bert(folder)
    for name, code in _REMOTE_CODE.items():
        (folder / name).write_text(code, encoding="utf-8")
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config.update(model_type=REMOTE_MODEL_TYPE, architectures=["TinyRemoteModel"],
                  auto_map={"AutoConfig": "configuration_tiny.TinyRemoteConfig",
                            "AutoModel": "modeling_tiny.TinyRemoteModel"})
    config_file.write_text(json.dumps(config, indent=2))
    return folder
