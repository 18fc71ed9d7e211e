"""What every converter shares: options, the result object, and saving a sentence-transformers folder."""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from sentence_transformers.sentence_transformer.modules import Pooling
from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerBase, XLMRobertaTokenizerFast

from mm_sbert.convert.state_dict_mapping import (
    HEAD_SCORES,
    CheckpointMismatchError,
    ConversionReport,
    find_weights_file,
)
from mm_sbert.image_features.image_featurizer import ImageFeaturizer
from mm_sbert.models.mm_cross_encoder import MMCrossEncoder
from mm_sbert.models.mm_sentence_transformer import MMSentenceTransformer
from mm_sbert.modules.multimodal_transformer import MultimodalTransformer

REPORT_FILE_NAME = "conversion_report.json"


@dataclass
class ConvertedModel:
    """A converted ``MultimodalTransformer`` and what the conversion did.

    Attributes:
        module: the converted module (eval mode); it holds the cross-encoder head.
        report: keys loaded / ignored / initialised and numerical conversions applied.
        pooling_mode: the bi-encoder's pooling (mean for every model of the paper).
    """

    module: MultimodalTransformer
    report: ConversionReport
    pooling_mode: str = "mean"

    def bi_encoder(self, device: str | None = "cpu") -> MMSentenceTransformer:
        pooling = Pooling(self.module.get_embedding_dimension(), self.pooling_mode)
        return MMSentenceTransformer(modules=[self.module, pooling], device=device)

    def cross_encoder(self, device: str | None = "cpu") -> MMCrossEncoder:
        return MMCrossEncoder(modules=[self.module], device=device)

    def save(self, output_path: str) -> str:
        """Save a sentence-transformers folder (loads as ``MMSentenceTransformer`` and ``MMCrossEncoder``); its model
        card and ``conversion_report.json`` say what the cross-encoder's score is."""
        from mm_sbert.models.loading import MODEL_FOLDER_KIND
        from mm_sbert.storage import check_output_path, mark_owned_folder

        # Refused before anything is written: a folder of the user's, or one mm_sbert wrote as something else.
        check_output_path(output_path, MODEL_FOLDER_KIND, folder=True)
        bi_encoder = self.bi_encoder()
        bi_encoder.model_card_data.score_note = self.report.score or None
        bi_encoder.save(output_path)
        with open(os.path.join(output_path, REPORT_FILE_NAME), "w", encoding="utf-8") as f:
            json.dump(self.report.to_dict(), f, indent=2)
        mark_owned_folder(output_path, MODEL_FOLDER_KIND)
        return output_path


class CheckpointConverter(ABC):
    """Base of the per-format converters.

    Args:
        region_feature_dim: expected width of one region's detector feature (without box numbers); ``None`` takes it
            from the checkpoint. A checkpoint whose image projection disagrees is refused.
        max_seq_length: text tokens per input, special tokens included (``None``: the format's default).
        max_regions: regions per image (``None``: the format's default).
        featurizer: an image featurizer to attach, so the converted model takes raw images too.
        allow_unexpected: drop (and report) source keys no rule knows instead of refusing the checkpoint.
        trust_pickle: read ``.bin`` / ``.pth`` files with ``weights_only=False`` (they may run code when unpickled);
            only for checkpoints that pickled Python objects besides tensors and come from a source you trust.
        head_score: what a 2-way softmax head becomes: ``"softmax"`` (one logit ``w1 - w0``, so the score is the
            original's match probability ``softmax(logits)[1]``) or ``"class1-logit"`` (``w1``: the raw
            ``logits[:, 1]``, the order in which MMT-Retrieval's evaluators rank pairs).
        fresh_head: drop any cross-encoder head the checkpoint holds (a fine-tuned classifier, M3P's image-text
            matching head) and start a random one.
    """

    format_name: str = ""

    def __init__(
        self,
        *,
        region_feature_dim: int | None = None,
        max_seq_length: int | None = None,
        max_regions: int | None = None,
        featurizer: ImageFeaturizer | None = None,
        allow_unexpected: bool = False,
        trust_pickle: bool = False,
        head_score: str = "softmax",
        fresh_head: bool = False,
    ) -> None:
        if head_score not in HEAD_SCORES:
            raise ValueError(f"head_score must be one of {HEAD_SCORES}, got {head_score!r}")
        self.region_feature_dim = region_feature_dim
        self.max_seq_length = max_seq_length
        self.max_regions = max_regions
        self.featurizer = featurizer
        self.allow_unexpected = allow_unexpected
        self.trust_pickle = trust_pickle
        self.head_score = head_score
        self.fresh_head = fresh_head

    @abstractmethod
    def convert(
        self, checkpoint: str, config: str | None = None, tokenizer: str | PreTrainedTokenizerBase | None = None
    ) -> ConvertedModel:
        """Read an original checkpoint and return the converted model; raises ``CheckpointMismatchError``."""

    def options(self) -> dict[str, Any]:
        """The constructor's options, to hand to another converter (MMT-Retrieval wraps OSCAR and M3P)."""
        return {
            "region_feature_dim": self.region_feature_dim,
            "max_seq_length": self.max_seq_length,
            "max_regions": self.max_regions,
            "featurizer": self.featurizer,
            "allow_unexpected": self.allow_unexpected,
            "trust_pickle": self.trust_pickle,
            "head_score": self.head_score,
            "fresh_head": self.fresh_head,
        }

    def module_kwargs(self, max_seq_length: int, max_regions: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_seq_length": self.max_seq_length or max_seq_length,
            "max_regions": self.max_regions or max_regions,
        }
        if self.featurizer is not None:
            kwargs["featurizer"] = self.featurizer
        return kwargs

    def check_region_feature_dim(self, from_checkpoint: int, where: str) -> int:
        if self.region_feature_dim is not None and self.region_feature_dim != from_checkpoint:
            raise CheckpointMismatchError(
                f"{where} projects {from_checkpoint}-d region features, but region_feature_dim="
                f"{self.region_feature_dim} was asked for; nothing was loaded"
            )
        if self.featurizer is not None and self.featurizer.feature_dim != from_checkpoint:
            raise CheckpointMismatchError(
                f"{where} projects {from_checkpoint}-d region features, but the featurizer "
                f"{type(self.featurizer).__name__} yields {self.featurizer.feature_dim}-d ones"
            )
        return from_checkpoint


def locate_checkpoint(checkpoint: str, what: str) -> tuple[str, str]:
    """``(folder, weights file)`` of a checkpoint given as its folder or its weights file; a missing path is an error
    naming it (rather than a later one about a config file next to it)."""
    if os.path.isdir(checkpoint):
        return checkpoint, find_weights_file(checkpoint)
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"No {what} checkpoint at {checkpoint}: give its folder or its weights file")
    return os.path.dirname(checkpoint) or ".", checkpoint


def load_tokenizer(tokenizer: str | PreTrainedTokenizerBase | None, fallback_dirs: list[str], what: str):
    """A tokenizer object, a path to one, or the first folder in ``fallback_dirs`` that holds one."""
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    candidates = [tokenizer] if tokenizer is not None else fallback_dirs
    tokenizer_files = ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model", "tokenizer_config.json")
    for candidate in candidates:
        if candidate is None:
            continue
        if tokenizer is None and not any(os.path.isfile(os.path.join(candidate, f)) for f in tokenizer_files):
            continue
        return _tokenizer_from(candidate)
    raise FileNotFoundError(
        f"No tokenizer for the {what} checkpoint: pass tokenizer=... (--tokenizer), a folder or hub id of its "
        f"tokenizer (looked in {[c for c in fallback_dirs if c]})"
    )


def _tokenizer_from(path: str) -> PreTrainedTokenizerBase:
    """``AutoTokenizer``, falling back on the vocabulary file for old folders (OSCAR's ``pytorch_transformers``
    checkpoints) whose configs name neither a ``model_type`` nor a ``tokenizer_class``."""
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        if os.path.isfile(os.path.join(path, "vocab.txt")):
            return BertTokenizerFast.from_pretrained(path)
        if os.path.isfile(os.path.join(path, "sentencepiece.bpe.model")):
            return XLMRobertaTokenizerFast.from_pretrained(path)
        raise exc
