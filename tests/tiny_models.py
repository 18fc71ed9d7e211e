"""Tiny random BERT / XLM-R backbones with small vocabularies, so tests need no download."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    PreTrainedTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaModel,
)

WORDS = (
    "a an the one two three four five six seven eight nine ten of and with on in at to is are left right above "
    "below top bottom small large big red green blue yellow purple orange white black gray grey pink brown cyan "
    "circle circles square squares triangle triangles star stars shape shapes next dog cat man woman person people "
    "photo picture image scene background two-colour der die das ein eine und mit auf un une le la et avec sur"
).split()


def tiny_bert_tokenizer() -> BertTokenizerFast:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), *"abcdefghijklmnopqrstuvwxyz.,!?"]
    vocab = list(dict.fromkeys(tokens))  # "a" is both a word and a letter: keep ids contiguous
    return BertTokenizerFast(vocab={token: index for index, token in enumerate(vocab)}, do_lower_case=True)


def tiny_xlmr_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {token: index for index, token in enumerate([*specials, *sorted(set(WORDS)), *".,!?"])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )


def tiny_bert(hidden_size: int = 32, layers: int = 2, seed: int = 0) -> tuple[BertModel, BertTokenizerFast]:
    tokenizer = tiny_bert_tokenizer()
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=128,
    )
    return BertModel(config).eval(), tokenizer


def tiny_xlmr(
    hidden_size: int = 32, layers: int = 2, seed: int = 0
) -> tuple[XLMRobertaModel, PreTrainedTokenizerFast]:
    tokenizer = tiny_xlmr_tokenizer()
    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=130,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
    )
    return XLMRobertaModel(config).eval(), tokenizer
