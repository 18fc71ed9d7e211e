from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any, Literal

try:
    from typing import Self
except ImportError:  # Python < 3.11
    from typing_extensions import Self

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors_file
from safetensors.torch import save_file as save_safetensors_file
from sentence_transformers.base.modality_types import Modality
from sentence_transformers.base.modules import InputModule
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.masking_utils import create_bidirectional_mask

from mm_sbert.errors import InvalidFileError, InvalidInputError, InvalidInputTypeError, MissingFileError
from mm_sbert.image_features.image_featurizer import ImageFeaturizer
from mm_sbert.image_features.image_loading import ImageLoadError, check_image_file, load_image, looks_like_image_path
from mm_sbert.image_features.region_features import BOX_FORMAT_WIDTHS, BoxFormat, RegionFeatures
from mm_sbert.modules.fast_inference import PackedEncoder, packed_encoder_for
from mm_sbert.modules.multimodal_transformer_config import (
    EmbeddingMode,
    HeadInput,
    ImageOnlyText,
    MultimodalTransformerConfig,
    RegionOrder,
    backbone_file_errors,
    check_backbone_folder,
    read_module_config,
)

logger = logging.getLogger(__name__)

FEATURIZER_FOLDER = "image_featurizer"
# The backbone as a transformers model folder (config.json, model.safetensors, tokenizer files). Not the module's own
# folder: a config.json beside modules.json would make the host classes rebuild the folder as a text-only model.
BACKBONE_FOLDER = "backbone"
# The module's own weights (image projection, its LayerNorm, the score head) beside the backbone folder. In folders
# saved by mm_sbert 0.1.0 the same file holds every weight and mm_transformer_config.json the backbone's config.
WEIGHTS_NAME = "model.safetensors"
# Heads that read the text and region halves of a pair separately (and so need the text-position mask).
MATCH_HEADS = ("text_image_match", "cosine_match", "token_match")
# The host's model_kwargs for backend="onnx".
ONNX_MODEL_KWARGS = ("file_name", "provider", "export")


class MultimodalTransformer(InputModule):
    """A single-stream vision-language transformer as a sentence-transformers input module.

    The text goes through the backbone's own embeddings (``[CLS] text [SEP]``); each image region's feature,
    with its box geometry appended, is projected into the hidden size by ``img_embedding`` (optionally
    LayerNorm-ed, then dropout), exactly as OSCAR's image-BERT does: regions get no position or token-type
    embedding. ``[text ; regions]`` then runs through the backbone's encoder. The module writes

    - ``token_embeddings`` and the joint ``attention_mask``, which mean :class:`~sentence_transformers.models.Pooling`
      turns into the bi-encoder embedding, and
    - ``scores``, the cross-encoder relevance logit of a small head over the first token (the backbone's pooler,
      dropout, ``classifier``), which a :class:`~sentence_transformers.CrossEncoder` reads.

    Keeping the head inside this module means a joint model is literally one module: the bi-encoder and the
    cross-encoder view share every weight, the weights are stored once, and DDP synchronises the head with the
    rest.

    Args:
        model_name_or_path: a BERT / XLM-R / MiniLM checkpoint (folder or hub id) to start from. Leave it out and
            pass ``backbone`` and ``tokenizer`` to build from objects instead.
        backbone: a ``BertModel``-like model with ``embeddings``, ``encoder`` and (optionally) ``pooler``.
        tokenizer: the backbone's tokenizer.
        region_feature_dim: width of one region's feature without the box numbers (2048 for OSCAR / M3P).
        box_format: which box numbers are appended to each region (``"oscar"``: 6, ``"m3p"``: 5, ``"none"``).
        use_img_layernorm: LayerNorm after the image projection (VinVL-era OSCAR, M3P).
        img_layer_norm_eps: its epsilon.
        region_order: ``"text_first"`` (OSCAR: ``[text ; regions]``) or ``"regions_first"`` (M3P).
        embedding_mode: ``"separate"`` (OSCAR: the text goes through the backbone's embeddings, regions only through
            ``img_embedding``) or ``"joint"`` (M3P: regions and text share one run of position ids, ``0..R-1`` for
            the regions and ``R..`` for the text in ``regions_first`` order, and the backbone's embedding LayerNorm
            runs over the whole sequence; every position gets token type 0).
        image_only_text: text part of an image-only input: ``"cls_sep"`` (``[CLS] [SEP]``) or ``"cls"`` (``[CLS]``
            alone, as the MMT-Retrieval code feeds OSCAR and M3P).
        head_input: what the cross-encoder head reads: ``"first_token"`` (``[CLS]``, as OSCAR / M3P and the paper) or
            ``"mean"`` (the masked mean of all token states; for starting from a sentence-embedding checkpoint such
            as all-MiniLM-L6-v2, whose ``[CLS]`` state was never trained and barely depends on the input), or
            ``"text_image_match"``: the masked means ``t`` of the text states and ``r`` of the region states, read
            as ``[t ; r ; t * r ; |t - r|]`` (a matching head as in InferSent / ESIM; ``classifier`` is then
            ``Linear(4 * hidden, 1)``), so a weighted similarity of the two halves is one linear map away and
            training from a text-only checkpoint does not have to discover it through attention first;
            ``"cosine_match"``: the same four parts of the L2-normalised ``t`` and ``r``, so the head can read exactly
            the cosine similarity a bi-encoder ranks by (see :meth:`start_cross_encoder`); ``"token_match"``: each
            caption position aligned (dot-product attention) with the image positions, compared with what it aligned
            with as ``[h ; a ; h * a ; |h - a|]`` and pooled by mean and max over the caption (ESIM's attend,
            compare, aggregate; ``classifier`` is ``Linear(8 * hidden, 1)``), so one caption word that matches
            nothing in the image moves the score, where a mean over the caption would dilute it.
        fusion_layer: how many of the backbone's first layers run each modality on its own before the rest attend
            across both: ``0`` (the default) is single-stream from the first layer, as OSCAR / M3P and the paper;
            ``k > 0`` masks attention between text and region positions in layers ``0..k-1`` (late fusion, as in
            ALBEF's text encoder under its fusion layers), so those layers read a caption exactly as a text-only
            input and keep what a sentence-embedding checkpoint learned about phrases; only the layers from ``k`` on
            compare the caption with the regions. Captions alone are unaffected.
        pair_layers: how many of the backbone's last layers read only (caption, image) pairs: a caption or an image
            alone stops below them (its embedding is pooled from the layers underneath), a pair goes on through them.
            With ``fusion_layer`` set to the layers underneath, the bi-encoder is the lower layers and the
            cross-encoder reads the bi-encoder's own token states of both sides and compares them in layers on top
            (ALBEF's text encoder and fusion encoder in one backbone): the cross-encoder sees everything the
            bi-encoder sees, and attends across the pair on top of it. ``0`` (the default): every input runs every
            layer, as OSCAR / M3P and the paper.
        cross_modal_bias: ``None`` (the default) or the starting value of a learned bias, one per fused layer, added
            to the attention logits between the text and the region positions of a (caption, image) pair. A negative
            start (e.g. ``-4``) makes the fused layers begin close to reading each modality on its own, and training
            opens the gate as far as it helps (as Flamingo's tanh gates start closed). Captions alone and images
            alone are unaffected.
        head_pooler: whether the cross-encoder head passes its input (the first token, the mean, or ``t`` and ``r``
            each) through the backbone's pooler (dense + tanh) before ``classifier``; ``False`` reads it raw.
        add_od_labels: read the image's tags (:attr:`RegionFeatures.tags`, e.g. ImageNet classes from a featurizer
            built with ``num_tags``) as OSCAR's retrieval fine-tuning reads its detector's object labels
            (``--add_od_labels``): a pair is ``[CLS] caption [SEP] tags [SEP] regions``, an image alone
            ``[CLS] [SEP] tags [SEP] regions`` (OSCAR's layout with an empty caption), with token type 0 on ``[CLS]``,
            the caption and its ``[SEP]``, 1 on the tags and their ``[SEP]``; text positions count from 0 over the
            whole text part and regions get none. The caption is cut to ``max_seq_length - 2`` tokens first, the
            tags to what is left (none when the caption leaves no room for one). The tags are on the image's side:
            the matching heads, ``fusion_layer`` and ``cross_modal_bias`` treat them as part of the image. Images
            without tags and captions alone keep the plain layout; ``False`` (the default, as for every checkpoint
            trained without labels) ignores tags.
        max_seq_length: text tokens kept per input, ``[CLS]`` and ``[SEP]`` included (tags included).
        max_regions: regions kept per image (the first ones: extractors sort them by confidence).
        featurizer: turns PIL images and image paths into :class:`RegionFeatures`; without one, images must be
            given as :class:`RegionFeatures`.
        score_head: whether to build the cross-encoder head.
        trained_views: the views (``"bi_encoder"``, ``"cross_encoder"``) a training objective has trained, recorded
            by :class:`~mm_sbert.training.JointTrainer` and saved with the module, so a head that was never trained
            is not used as a reranker by mistake (:func:`~mm_sbert.models.check_view_trained`); ``None``: not
            recorded (folders saved before the record, modules built directly), ``[]``: nothing trained yet.
        model_kwargs / processor_kwargs / config_kwargs: passed to ``AutoModel`` / ``AutoTokenizer`` /
            ``AutoConfig`` when loading ``model_name_or_path``.

    Example:
        >>> from sentence_transformers.models import Pooling
        >>> from mm_sbert import MMSentenceTransformer, MMCrossEncoder, MultimodalTransformer, ColorGridFeaturizer
        >>> mmt = MultimodalTransformer("path/to/bert", featurizer=ColorGridFeaturizer(), region_feature_dim=19)
        >>> bi_encoder = MMSentenceTransformer(modules=[mmt, Pooling(mmt.get_embedding_dimension(), "mean")])
        >>> cross_encoder = MMCrossEncoder(modules=[mmt])  # the same weights
    """

    config_file_name = "mm_transformer_config.json"
    # bfloat16 inference on CPU through packed oneDNN layers (see mm_sbert.modules.fast_inference); False runs the
    # backbone's own layers in every case.
    fast_inference: bool = True
    # Late fusion at inference: the layers under fusion_layer run the caption side and the image side of pairs
    # apart, a side shared by every row once (see _unfused_blocks); False runs them on the joined rows.
    unfused_blocks_apart: bool = True
    config_keys = MultimodalTransformerConfig.keys()
    save_in_root = True

    def __init__(
        self,
        model_name_or_path: str | None = None,
        *,
        backbone: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        region_feature_dim: int = 2048,
        box_format: BoxFormat = "oscar",
        use_img_layernorm: bool = False,
        img_layer_norm_eps: float = 1e-12,
        region_order: RegionOrder = "text_first",
        embedding_mode: EmbeddingMode = "separate",
        image_only_text: ImageOnlyText = "cls_sep",
        head_input: HeadInput = "first_token",
        head_pooler: bool = True,
        fusion_layer: int = 0,
        pair_layers: int = 0,
        max_seq_length: int = 70,
        max_regions: int = 50,
        featurizer: ImageFeaturizer | None = None,
        score_head: bool = True,
        cross_modal_bias: float | None = None,
        trained_views: Sequence[str] | None = None,
        add_od_labels: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if model_name_or_path is not None:
            if backbone is not None:
                raise InvalidInputError(
                    "Pass either model_name_or_path or backbone to MultimodalTransformer, not both"
                )
            config = AutoConfig.from_pretrained(model_name_or_path, cache_dir=cache_dir, **(config_kwargs or {}))
            backbone = AutoModel.from_pretrained(
                model_name_or_path, config=config, cache_dir=cache_dir, **(model_kwargs or {})
            )
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(
                    model_name_or_path, cache_dir=cache_dir, **(processor_kwargs or {})
                )
        if backbone is None or tokenizer is None:
            raise InvalidInputError("MultimodalTransformer needs a backbone and a tokenizer (or a model_name_or_path)")
        for part in ("embeddings", "encoder"):
            if not hasattr(backbone, part):
                raise InvalidInputTypeError(
                    f"The backbone {type(backbone).__name__} has no `{part}`; MultimodalTransformer needs an "
                    "encoder-only model in the BERT / XLM-R layout (embeddings + encoder [+ pooler])"
                )
        # The option arguments, picked by the config's own keys rather than a second hand-written list.
        arguments = locals()
        options = MultimodalTransformerConfig(**{key: arguments[key] for key in self.config_keys})
        if featurizer is not None and featurizer.feature_dim != region_feature_dim:
            raise InvalidInputError(
                f"The featurizer {type(featurizer).__name__} yields {featurizer.feature_dim}-d region features, but "
                f"region_feature_dim={region_feature_dim}; set region_feature_dim={featurizer.feature_dim}"
            )

        self.backbone = backbone
        self.tokenizer = tokenizer
        for key, value in options.to_dict().items():
            setattr(self, key, value)
        num_layers = len(backbone.encoder.layer)
        if fusion_layer >= max(num_layers, 1):
            raise InvalidInputError(
                f"fusion_layer must be between 0 and {num_layers - 1} (the backbone has {num_layers} layers, and at "
                f"least one must attend across text and regions), got {fusion_layer}"
            )
        if pair_layers >= max(num_layers, 1):
            raise InvalidInputError(
                f"pair_layers must be between 0 and {num_layers - 1} (the backbone has {num_layers} layers, and "
                f"captions and images alone need at least one), got {pair_layers}"
            )
        # Not a registered submodule: a featurizer has its own device and is saved in its own folder.
        self.featurizer = featurizer
        # Set by load(..., backend="onnx"): pair scores then come from ONNX Runtime (mm_sbert.export.OnnxScorer).
        self.onnx_scorer: Any = None

        config = backbone.config
        hidden_size = config.hidden_size
        self.img_embedding = nn.Linear(self.region_feature_dim + BOX_FORMAT_WIDTHS[box_format], hidden_size)
        self.img_layer_norm = nn.LayerNorm(hidden_size, eps=self.img_layer_norm_eps) if use_img_layernorm else None
        self.img_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(_head_width(head_input, hidden_size), 1) if score_head else None
        self.classifier_dropout = nn.Dropout(config.hidden_dropout_prob) if score_head else None
        self.cross_modal_attention_bias = None
        if cross_modal_bias is not None:
            self.cross_modal_attention_bias = nn.Parameter(
                torch.full((num_layers - fusion_layer,), float(cross_modal_bias))
            )
        self._init_new_weights(config.initializer_range)
        # The new layers follow the backbone's dtype and device (a float16 backbone gets a float16 projection).
        reference = next(backbone.parameters())
        for layer in (self.img_embedding, self.img_layer_norm, self.classifier):
            if layer is not None:
                layer.to(device=reference.device, dtype=reference.dtype)
        if self.cross_modal_attention_bias is not None:
            self.cross_modal_attention_bias.data = self.cross_modal_attention_bias.data.to(reference.device)

    def _init_new_weights(self, std: float) -> None:
        for linear in (self.img_embedding, self.classifier):
            if linear is not None:
                nn.init.normal_(linear.weight, mean=0.0, std=std)
                nn.init.zeros_(linear.bias)

    @property
    def modalities(self) -> list[Modality]:
        return ["text", "image", ("image", "text")]

    @property
    def region_vector_dim(self) -> int:
        """Width of one region's input vector: feature plus box numbers."""
        return self.region_feature_dim + BOX_FORMAT_WIDTHS[self.box_format]

    def get_embedding_dimension(self) -> int:
        return self.backbone.config.hidden_size

    # ------------------------------------------------------------------ preprocessing

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs) -> dict[str, torch.Tensor | Any]:
        """Tokenize texts and featurize images into padded tensors.

        Each input may be a caption, a PIL image, an image path, a ``(H, W, C)`` array, a :class:`RegionFeatures`,
        a ``{"text": ..., "image": ...}`` dict, or a ``(text, image)`` / ``(image, text)`` pair.

        Returns:
            ``input_ids``, ``text_mask`` (and ``token_type_ids`` where the backbone has them) for the text part;
            ``region_features`` ``[B, R, region_vector_dim]`` and ``region_mask`` ``[B, R]`` for the image part.
            The text mask is deliberately not called ``attention_mask``: the joint mask is built in ``forward``.
        """
        if len(inputs) == 0:
            raise InvalidInputError(
                "MultimodalTransformer.preprocess got an empty list of inputs; pass at least one input"
            )
        parsed = [self._parse_input(item, index) for index, item in enumerate(inputs)]
        # Prompts only go in front of real captions: an image-only input keeps its empty text part.
        texts = [(prompt or "") + text if text is not None else "" for text, _ in parsed]
        regions = self._resolve_regions([image for _, image in parsed])

        max_length = kwargs.get("max_length") or self.max_seq_length
        tag_texts = [region.tag_text if self.add_od_labels and region is not None else None for region in regions]
        if any(tag_texts):
            encoded = self._encode_with_tags(texts, tag_texts, max_length)
        else:
            encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        features: dict[str, torch.Tensor | Any] = {
            "input_ids": encoded["input_ids"],
            "text_mask": encoded["attention_mask"],
        }
        if "tag_mask" in encoded:
            features["tag_mask"] = encoded["tag_mask"]
        # Which rows are (caption, image) pairs: only there does the cross-modal bias apply, and only pairs are scored
        # by an ONNX backend.
        features["is_pair"] = torch.tensor([text is not None and image is not None for text, image in parsed])
        if "token_type_ids" in encoded:
            features["token_type_ids"] = encoded["token_type_ids"]
        if self.image_only_text == "cls":
            # An image with tags keeps OSCAR's layout of an empty caption: [CLS] [SEP] tags [SEP].
            self._keep_only_cls_for_images(
                features, [text is None and not tags for (text, _), tags in zip(parsed, tag_texts)]
            )

        num_regions = [0 if region is None else region.num_regions for region in regions]
        width = max(num_regions)
        region_features = torch.zeros(len(inputs), width, self.region_vector_dim)
        region_mask = torch.zeros(len(inputs), width, dtype=torch.long)
        for row, region in enumerate(regions):
            if region is not None and region.num_regions:
                region_features[row, : region.num_regions] = region.region_vectors(self.box_format)
                region_mask[row, : region.num_regions] = 1
        features["region_features"] = region_features
        features["region_mask"] = region_mask
        return features

    def _encode_with_tags(self, texts: list[str], tag_texts: list[str | None], max_length: int) -> dict[str, Any]:
        """Tokenize ``text [+ tags]`` per row as OSCAR's ``tensorize_example`` does (caption as the first segment,
        tags as the second, the caption cut first), padded on the right; adds ``tag_mask`` (1 on the tags' tokens
        and their closing special token)."""
        single_specials = self.tokenizer.num_special_tokens_to_add(pair=False)
        pair_specials = self.tokenizer.num_special_tokens_to_add(pair=True)
        rows: list[tuple[list[int], list[int], list[int]]] = []
        for text, tags in zip(texts, tag_texts):
            caption_length = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if tags and min(caption_length, max_length - single_specials) + pair_specials >= max_length:
                tags = None  # the caption fills the text part: no room for a single tag
            if not tags:
                encoded = self.tokenizer(text, truncation=True, max_length=max_length)
                ids = encoded["input_ids"]
                rows.append((ids, encoded.get("token_type_ids") or [0] * len(ids), [0] * len(ids)))
                continue
            # Untruncated, then cut by segment, so the caption keeps what it would keep alone.
            encoded = self.tokenizer(text, tags)
            sequence = encoded.sequence_ids(0)
            caption_length = min(caption_length, max_length - single_specials)
            tags_length = max(0, min(sequence.count(1), max_length - caption_length - pair_specials))
            keep, seen = [], {0: 0, 1: 0}
            for position, segment in enumerate(sequence):
                if segment is not None:
                    seen[segment] += 1
                    if seen[segment] > (caption_length if segment == 0 else tags_length):
                        continue
                keep.append(position)
            ids = [encoded["input_ids"][i] for i in keep]
            types = [encoded["token_type_ids"][i] for i in keep] if "token_type_ids" in encoded else [0] * len(ids)
            # The tags' side starts after the caption's closing special token (the second one: [CLS] ... [SEP]).
            specials = [n for n, i in enumerate(keep) if sequence[i] is None]
            first_tag = specials[1] + 1 if len(specials) > 1 else len(ids)
            tag_mask = [0] * first_tag + [1] * (len(ids) - first_tag)
            rows.append((ids, types, tag_mask))
        width = max(len(ids) for ids, _, _ in rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        result = {
            "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _, _ in rows]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _, _ in rows]),
            "tag_mask": torch.tensor([mask + [0] * (width - len(mask)) for _, _, mask in rows]),
        }
        if "token_type_ids" in self.tokenizer.model_input_names:
            result["token_type_ids"] = torch.tensor([types + [0] * (width - len(types)) for _, types, _ in rows])
        return result

    def join_pair_features(
        self,
        captions: dict[str, torch.Tensor],
        images: dict[str, torch.Tensor],
        caption_index: torch.Tensor,
        image_index: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Features of the pairs ``(caption[caption_index[k]], image[image_index[k]])`` from the two preprocessed
        columns, without re-tokenizing: what :meth:`preprocess` makes of the pairs themselves.

        The pair takes the caption row's text tensors and the image row's region tensors. Images with tags (read
        with :attr:`add_od_labels`) carry them in their own text part (``[CLS] [SEP] tags [SEP]``); the pair then
        reads ``[CLS] caption [SEP] tags [SEP]``, the tags cut to the room the caption leaves as
        :meth:`preprocess` cuts them, so a cross-encoder trained on these pairs sees the layout it is used with.
        """
        pairs = {key: _take_rows(captions[key], caption_index) for key in TEXT_KEYS if key in captions}
        pairs.update({key: _take_rows(images[key], image_index) for key in REGION_KEYS})
        tag_masks = images.get("tag_mask")
        if tag_masks is None or not bool(tag_masks.any()):
            return pairs
        # Special tokens of the tags' part: BERT's closing [SEP]; XLM-R's </s> before the tags and after them.
        tag_specials = self.tokenizer.num_special_tokens_to_add(pair=True) - self.tokenizer.num_special_tokens_to_add(
            pair=False
        )
        has_types = "token_type_ids" in captions
        rows = []
        for caption, image in zip(caption_index.tolist(), image_index.tolist()):
            length = int(captions["text_mask"][caption].sum())
            ids = captions["input_ids"][caption, :length]
            types = captions["token_type_ids"][caption, :length] if has_types else None
            tag_part = tag_masks[image].bool()
            tag_ids = images["input_ids"][image][tag_part]
            room = self.max_seq_length - length - tag_specials  # tag words that fit beside this caption
            if room >= 1 and len(tag_ids) > tag_specials:
                keep = torch.ones(len(tag_ids), dtype=torch.bool, device=tag_ids.device)
                keep[tag_specials - 1 : -1] = False  # the tag words, all dropped ...
                keep[tag_specials - 1 : tag_specials - 1 + room] = True  # ... but the first ones that fit
                tag_ids = tag_ids[keep]
                ids = torch.cat([ids, tag_ids])
                if has_types:
                    types = torch.cat([types, images["token_type_ids"][image][tag_part][keep]])
                tagged = len(tag_ids)
            else:
                tagged = 0
            rows.append((ids, types, tagged))
        width = max(len(ids) for ids, _, _ in rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = captions["input_ids"].device
        input_ids = torch.full((len(rows), width), pad_id, dtype=captions["input_ids"].dtype, device=device)
        text_mask = torch.zeros((len(rows), width), dtype=captions["text_mask"].dtype, device=device)
        tag_mask = torch.zeros_like(text_mask)
        token_types = torch.zeros_like(input_ids) if has_types else None
        for row, (ids, types, tagged) in enumerate(rows):
            input_ids[row, : len(ids)] = ids
            text_mask[row, : len(ids)] = 1
            tag_mask[row, len(ids) - tagged : len(ids)] = 1
            if has_types:
                token_types[row, : len(ids)] = types
        pairs.update(input_ids=input_ids, text_mask=text_mask, tag_mask=tag_mask)
        if has_types:
            pairs["token_type_ids"] = token_types
        return pairs

    def _keep_only_cls_for_images(self, features: dict[str, torch.Tensor], image_only: list[bool]) -> None:
        """Reduce the text part of image-only rows to the leading ``[CLS]`` (the tokenizer pads on the right)."""
        if not any(image_only):
            return
        if self.tokenizer.padding_side != "right":
            raise InvalidInputError("image_only_text='cls' needs a tokenizer that pads on the right")
        rows = torch.tensor(image_only)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        features["input_ids"][rows, 1:] = pad_id
        features["text_mask"][rows, 1:] = 0
        if "token_type_ids" in features:
            features["token_type_ids"][rows, 1:] = 0
        width = int(features["text_mask"].sum(dim=1).max())
        for key in ("input_ids", "text_mask", "token_type_ids"):
            if key in features:
                features[key] = features[key][:, :width]

    def _parse_input(self, item: Any, index: int) -> tuple[str | None, Any | None]:
        """Split one input into its text part and its (unresolved) image part."""
        if isinstance(item, dict):
            unknown = set(item) - {"text", "image"}
            if unknown or not item:
                raise InvalidInputError(
                    f"Input {index}: a dict input takes the keys 'text' and/or 'image', got {sorted(map(str, item))}"
                )
            text, image = item.get("text"), item.get("image")
            if text is not None and not isinstance(text, str):
                raise InvalidInputError(f"Input {index}: 'text' must be a string, got {type(text).__name__}")
            if image is not None and self._kind(image, index) != "image":
                raise InvalidInputError(f"Input {index}: 'image' must be an image, got {type(image).__name__}")
            return text, image
        if isinstance(item, (tuple, list)):
            if len(item) == 1 and isinstance(item[0], dict):
                # CrossEncoder.predict([{"text": ..., "image": ...}]) arrives wrapped as a one-element "pair".
                return self._parse_input(item[0], index)
            if any(isinstance(part, dict) for part in item):
                raise InvalidInputError(
                    f"Input {index}: a pair holds a caption and an image, not dicts; pass (caption, image) or one "
                    "{'text': ..., 'image': ...} dict per input"
                )
            if len(item) != 2:
                raise InvalidInputError(
                    f"Input {index}: a pair must have exactly two elements (text, image), got {len(item)}"
                )
            kinds = [self._kind(part, index) for part in item]
            if kinds[0] == kinds[1]:
                hint = next((_caption_hint(part) for part in item if _caption_hint(part)), "")
                raise InvalidInputError(
                    f"Input {index}: a pair must combine one text and one image, got two {kinds[0]}s; "
                    f"this model scores (text, image) pairs{hint}"
                )
            text, image = (item[0], item[1]) if kinds[0] == "text" else (item[1], item[0])
            return text, image
        if self._kind(item, index) == "text":
            return item, None
        return None, item

    def _kind(self, value: Any, index: int) -> Literal["text", "image"]:
        if isinstance(value, str):
            return "image" if looks_like_image_path(value) else "text"
        if isinstance(value, (RegionFeatures, Image.Image, os.PathLike, np.ndarray, torch.Tensor)):
            return "image"
        raise InvalidInputError(
            f"Input {index}: unsupported input type {type(value).__name__}; expected a caption (str), a PIL image, "
            "an image path, a RegionFeatures, a {'text', 'image'} dict or a (text, image) pair"
        )

    def check_inputs(self, inputs: Sequence[Any]) -> None:
        """Check every input before any is featurized, so an error names its index in the caller's list.

        ``encode`` / ``predict`` sort and batch their inputs, so the index ``preprocess`` sees is the one in its
        batch. This runs the same checks on the whole list: the input's shape, image paths that are no file, and
        region features that are not finite or large enough to overflow the model.
        """
        for index, item in enumerate(inputs):
            _, image = self._parse_input(item, index)
            if isinstance(image, (str, os.PathLike)):
                _check_image_path(image, index)
            elif isinstance(image, RegionFeatures):
                self._check_region_values(image, index)

    def _check_region_values(self, region: RegionFeatures, index: int) -> None:
        """Refuse features that are not finite, or so large that the image projection overflows (NaN embeddings)."""
        features = region.features
        # One pass: the smallest and largest values are NaN or infinite exactly when some value is (aminmax is a
        # tenth of the infinity norm's cost, which was a tenth of a k = 20 rerank).
        low, high = (float(value) for value in torch.aminmax(features)) if features.numel() else (0.0, 0.0)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise InvalidInputError(f"Input {index}: its region features contain NaN or infinite values")
        peak = max(-low, high)
        if not region.num_regions:
            # Zero regions would embed exactly like the empty caption: an answer about no image at all.
            raise InvalidInputError(
                f"Input {index}: its image has no regions (RegionFeatures with 0 rows); the model would embed it like "
                "an empty caption. Give at least one region (e.g. the whole image's box)"
            )
        if not features.numel():
            return
        limit = self._region_value_limit()
        if peak > limit:
            raise InvalidInputError(
                f"Input {index}: its region features reach {peak:.3g}; this model's image projection overflows "
                f"{str(self.img_embedding.weight.dtype).replace('torch.', '')} above {limit:.3g} and would give NaN. "
                "Check the features' scale (detector features are typically below 100)"
            )

    def _region_value_limit(self) -> float:
        """The largest region feature value the image projection takes without overflow; cached until its weights
        change (it was recomputed for every input twice per call: a quarter of a k = 20 rerank)."""
        weight, bias = self.img_embedding.weight.detach(), self.img_embedding.bias.detach()
        key = (weight.data_ptr(), weight._version, weight.dtype, bias.data_ptr(), bias._version)
        cached = getattr(self, "_region_limit_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        # |W x + b| <= max|W| * (sum of |x|) + max|b|; the box numbers are at most 1.
        largest = torch.finfo(weight.dtype).max
        max_weight = float(weight.abs().max())
        box_width = self.region_vector_dim - self.region_feature_dim
        limit = (largest - float(bias.abs().max()) - max_weight * box_width) / max(
            max_weight * self.region_feature_dim, 1e-30
        )
        self._region_limit_cache = (key, limit)
        return limit

    def _resolve_regions(self, images: list[Any | None]) -> list[RegionFeatures | None]:
        """Turn every image part into RegionFeatures, featurizing raw images in one batch."""
        regions: list[RegionFeatures | None] = [None] * len(images)
        to_featurize: list[int] = []
        pil_images: list[Image.Image] = []
        for index, image in enumerate(images):
            if image is None:
                continue
            if isinstance(image, RegionFeatures):
                regions[index] = image
                continue
            if isinstance(image, (str, os.PathLike)):
                _check_image_path(image, index)
            if self.featurizer is None:
                raise InvalidInputError(
                    f"Input {index} is a raw image, but this model has no image featurizer; pass RegionFeatures, "
                    "or build the MultimodalTransformer with featurizer=..."
                )
            pil_images.append(load_image(image))
            to_featurize.append(index)
        if pil_images:
            for index, region in zip(to_featurize, self.featurizer.featurize(pil_images)):
                regions[index] = region
        for index, region in enumerate(regions):
            if region is None:
                continue
            if region.feature_dim != self.region_feature_dim:
                raise InvalidInputError(
                    f"Input {index}: region features have width {region.feature_dim}, but this model expects "
                    f"{self.region_feature_dim} (box numbers are appended by the model, do not include them)"
                )
            region = region.truncate(self.max_regions)
            self._check_region_values(region, index)
            regions[index] = region
        return regions

    # ------------------------------------------------------------------ forward

    def forward(self, features: dict[str, torch.Tensor | Any], **kwargs) -> dict[str, torch.Tensor | Any]:
        """Run ``[text ; regions]`` through the backbone; adds ``token_embeddings``, ``attention_mask``, ``scores``.

        Loaded with ``backend="onnx"``, a batch of pairs in eval mode adds only ``scores``, computed by ONNX Runtime;
        anything else (single captions or images to embed, training) runs in PyTorch.
        """
        if self.onnx_scorer is not None and not self.training:
            is_pair = features.get("is_pair")
            if is_pair is None or bool(torch.as_tensor(is_pair).all()):
                features["scores"] = self.onnx_scorer(features).to(features["input_ids"].device)
                _check_finite(None, None, features["scores"])
                return features
        input_ids = features["input_ids"]
        text_mask = features["text_mask"]
        if self.embedding_mode == "joint":
            # M3P: the embedding LayerNorm and the positions come after the concatenation, so text goes in raw.
            text_embeddings = self.backbone.embeddings.word_embeddings(input_ids)
        else:
            text_embeddings = self.backbone.embeddings(
                input_ids=input_ids, token_type_ids=features.get("token_type_ids")
            )
        region_features = features["region_features"].to(text_embeddings.dtype)
        region_embeddings = self.img_embedding(region_features)
        if self.img_layer_norm is not None:
            region_embeddings = self.img_layer_norm(region_embeddings)
        region_embeddings = self.img_dropout(region_embeddings)
        region_mask = features["region_mask"].to(text_mask.dtype)

        if self.region_order == "text_first":
            hidden = torch.cat([text_embeddings, region_embeddings], dim=1)
            mask = torch.cat([text_mask, region_mask], dim=1)
        else:
            hidden = torch.cat([region_embeddings, text_embeddings], dim=1)
            mask = torch.cat([region_mask, text_mask], dim=1)
        if self.embedding_mode == "joint":
            hidden = self._joint_embeddings(hidden, mask)

        encoder_mask = create_bidirectional_mask(
            config=self.backbone.config, inputs_embeds=hidden, attention_mask=mask
        )
        # The text-position mask is needed only by late fusion, the cross-modal bias and the matching heads.
        is_text = None
        depth = self._depth(features.get("is_pair"))
        if self.tells_modalities_apart:
            # Tags are the image's words: they count with the regions, not with the caption.
            caption = torch.ones_like(text_mask)
            if features.get("tag_mask") is not None:
                caption = caption - features["tag_mask"].to(caption.dtype)
            parts = [caption, torch.zeros_like(region_mask)]
            is_text = torch.cat(parts if self.region_order == "text_first" else parts[::-1], dim=1)
        # Inference in bfloat16 on CPU runs the layers with packed oneDNN weights (mm_sbert.modules.fast_inference);
        # training and every other case run the backbone's own layers.
        packed = None
        if self.fast_inference and not self.training and not torch.is_grad_enabled():
            packed = packed_encoder_for(self.backbone.encoder.layer, hidden.dtype, hidden.device)
        if self.runs_layer_by_layer:
            # Not when tracing (an ONNX export): how the unfused layers split a batch depends on its values.
            tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            apart = self.unfused_blocks_apart and not torch.is_grad_enabled() and not tracing
            token_embeddings = self._late_fusion_encoder(
                hidden, mask, encoder_mask, is_text, features.get("is_pair"), packed, depth, apart
            )
        elif packed is not None:
            token_embeddings = packed(hidden, encoder_mask)
        else:
            token_embeddings = self.backbone.encoder(hidden, attention_mask=encoder_mask).last_hidden_state

        features["token_embeddings"] = token_embeddings
        features["attention_mask"] = mask
        if self.classifier is not None:
            features["scores"] = self.score(token_embeddings, mask, is_text)
        if not self.training:
            # Inference must not hand out NaN silently (training leaves overflow steps to the AMP grad scaler).
            _check_finite(token_embeddings, mask, features.get("scores"))
        return features

    @property
    def runs_layer_by_layer(self) -> bool:
        """Whether :meth:`forward` runs the encoder one layer at a time with its own masks (late fusion, the
        cross-modal bias, pair layers)."""
        return self.fusion_layer > 0 or self.cross_modal_attention_bias is not None or self.pair_layers > 0

    @property
    def tells_modalities_apart(self) -> bool:
        """Whether :meth:`forward` tells the caption's positions from the image's (layer by layer, or for a matching
        head): tags (``tag_mask``) then count with the image, not the caption."""
        return self.runs_layer_by_layer or (self.classifier is not None and self.head_input in MATCH_HEADS)

    def _late_fusion_encoder(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        encoder_mask: Any,
        is_text: torch.Tensor,
        is_pair: torch.Tensor | None = None,
        packed: PackedEncoder | None = None,
        depth: int | None = None,
        apart: bool = False,
    ) -> torch.Tensor:
        """The backbone's first ``depth`` layers (default: all) one by one; the first :attr:`fusion_layer` ones attend
        within each modality, the others across both, with :attr:`cross_modal_attention_bias` (if any) added between
        the modalities of pairs. With ``apart``, a batch of pairs runs the first :attr:`fusion_layer` layers on the
        caption and the image side apart where they split (:meth:`_unfused_blocks`): the same function on fewer and
        shorter rows."""
        start = 0
        if apart and (depth is None or depth > self.fusion_layer):
            blocks = self._unfused_blocks(hidden, mask, is_text, is_pair, packed)
            if blocks is not None:
                hidden, start = blocks, self.fusion_layer
        # create_bidirectional_mask returns None when no position is padded; the fused layers then attend without a
        # mask (attention's fastest path), and only the masks below need it written out.
        full_mask = encoder_mask
        if full_mask is None:
            full_mask = mask.bool()[:, None, None, :].expand(-1, 1, mask.size(1), -1)
        same_modality = None
        if start < self.fusion_layer or self.cross_modal_attention_bias is not None:
            same_modality = (is_text.unsqueeze(2) == is_text.unsqueeze(1)).unsqueeze(1)  # [B, 1, L, L]
        within = None
        if start < self.fusion_layer:
            if full_mask.dtype == torch.bool:
                within = full_mask & same_modality
            else:
                # Additive masks (eager attention): 0 where allowed, the dtype's minimum where not.
                within = full_mask.masked_fill(~same_modality, torch.finfo(full_mask.dtype).min)
        across = None
        if self.cross_modal_attention_bias is not None:
            # A learned additive bias needs a float mask: 0 where allowed, the dtype's minimum where padded.
            allowed = full_mask if full_mask.dtype == torch.bool else full_mask == 0
            base = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
            base = base.masked_fill(~allowed, torch.finfo(hidden.dtype).min)
            cross = ~same_modality
            if is_pair is not None:
                cross = cross & is_pair.to(cross.device).view(-1, 1, 1, 1)
            across = (base, cross.to(hidden.dtype))
        for index, layer in enumerate(self.backbone.encoder.layer[:depth]):
            if index < start:
                continue
            if index < self.fusion_layer:
                layer_mask = within
            elif across is not None:
                bias = self.cross_modal_attention_bias[index - self.fusion_layer].to(hidden.dtype)
                layer_mask = across[0] + across[1] * bias
            else:
                layer_mask = encoder_mask
            hidden = layer(hidden, layer_mask) if packed is None else packed.layer(index, hidden, layer_mask)
        return hidden

    def _unfused_blocks(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        is_text: torch.Tensor,
        is_pair: torch.Tensor | None,
        packed: PackedEncoder | None,
    ) -> torch.Tensor | None:
        """The first :attr:`fusion_layer` layers on a batch of pairs, run on the caption block and the image block
        (tags and regions) apart, each with its own padding, and once for a block whose rows are all equal (one
        caption reranked against k images, or one image against k captions), then joined again.

        The blocks are column ranges: every row's caption positions must lie before every row's image positions
        (after them for regions-first layouts). That holds for captions without tags, and for tagged images paired
        with one caption; captions of different lengths each followed by tags do not split, and run joined. ``None``
        where the batch does not split: not every row is a pair, or a row has no valid position in a block.
        """
        if is_pair is None or not bool(torch.as_tensor(is_pair).all()):
            return None
        valid = mask.bool()
        caption, image = is_text.bool() & valid, ~is_text.bool() & valid
        first, second = (caption, image) if self.region_order == "text_first" else (image, caption)
        columns = torch.arange(1, hidden.size(1) + 1, device=hidden.device)
        split = int((first * columns).max())  # one past the last valid position of the first block, over all rows
        if split == 0 or bool(second[:, :split].any()):
            return None
        blocks = []
        for block, block_mask in ((hidden[:, :split], mask[:, :split]), (hidden[:, split:], mask[:, split:])):
            if block.size(1) == 0 or not bool(block_mask.any(dim=1).all()):
                return None
            rows = block.size(0)
            shared = rows > 1 and bool((block_mask == block_mask[:1]).all()) and bool((block == block[:1]).all())
            if shared:
                block, block_mask = block[:1], block_mask[:1]
            block_encoder_mask = create_bidirectional_mask(
                config=self.backbone.config, inputs_embeds=block, attention_mask=block_mask
            )
            for index in range(self.fusion_layer):
                layer = self.backbone.encoder.layer[index]
                block = (
                    layer(block, block_encoder_mask)
                    if packed is None
                    else packed.layer(index, block, block_encoder_mask)
                )
            blocks.append(block.expand(rows, -1, -1) if shared else block)
        return torch.cat(blocks, dim=1)

    def keep_first_layers(self, layers: int) -> None:
        """Cut the backbone to its first ``layers`` layers (a proportionally cheaper model), with everything that
        counts layers: the backbone's config (so the saved folder reloads at this depth) and the cross-modal bias
        (one per fused layer).

        Raises:
            InvalidInputError: ``layers`` out of range, or too few for :attr:`fusion_layer` / :attr:`pair_layers`.
        """
        encoder_layers = self.backbone.encoder.layer
        if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= len(encoder_layers):
            raise InvalidInputError(f"layers must be between 1 and {len(encoder_layers)}, got {layers!r}")
        if self.fusion_layer >= layers:
            raise InvalidInputError(f"fusion_layer={self.fusion_layer} needs more than {layers} layers")
        if self.pair_layers >= layers:
            raise InvalidInputError(f"pair_layers={self.pair_layers} needs more than {layers} layers")
        self.backbone.encoder.layer = encoder_layers[:layers]
        self.backbone.config.num_hidden_layers = layers
        if self.cross_modal_attention_bias is not None:
            kept = self.cross_modal_attention_bias.data[: layers - self.fusion_layer].clone()
            self.cross_modal_attention_bias = nn.Parameter(kept)

    def _depth(self, is_pair: torch.Tensor | None) -> int:
        """How many backbone layers a batch runs: all for pairs, all but :attr:`pair_layers` for single inputs."""
        num_layers = len(self.backbone.encoder.layer)
        if not self.pair_layers or is_pair is None:
            return num_layers
        is_pair = torch.as_tensor(is_pair)
        if bool(is_pair.all()):
            return num_layers
        if bool(is_pair.any()):
            raise InvalidInputError(
                f"This module reads pairs with {self.pair_layers} more layers than single inputs (pair_layers), so "
                "one batch cannot mix (caption, image) pairs with captions or images alone; encode them apart"
            )
        return num_layers - self.pair_layers

    def _joint_embeddings(self, inputs_embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Positions over the valid tokens of the joint sequence, then the backbone's LayerNorm and dropout (M3P).

        Positions count each row's own valid tokens, so a caption's positions follow its image's region count
        rather than the batch's padded width. XLM-R-style embeddings reserve rows ``0..padding_idx`` (positions
        start at ``padding_idx + 1``); BERT-style ones start at 0.
        """
        embeddings = self.backbone.embeddings
        padding_idx = getattr(embeddings, "padding_idx", None)
        offset = padding_idx + 1 if padding_idx is not None else 0
        valid = mask.to(torch.int64)
        position_ids = (valid.cumsum(dim=1) - 1).clamp(min=0) * valid + offset
        if padding_idx is not None:
            position_ids = position_ids.masked_fill(valid == 0, padding_idx)
        token_type_ids = torch.zeros_like(position_ids)
        return embeddings(inputs_embeds=inputs_embeds, position_ids=position_ids, token_type_ids=token_type_ids)

    def score(
        self, token_embeddings: torch.Tensor, mask: torch.Tensor, is_text: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cross-encoder logit ``[B, 1]`` from what ``head_input`` names: the first unmasked position (``[CLS]``, or
        M3P's first region), the masked mean of all positions, or the text / region means matched (``is_text``
        marks the text positions)."""
        pooler = getattr(self.backbone, "pooler", None) if self.head_pooler else None

        def pool(summary: torch.Tensor) -> torch.Tensor:
            return pooler.activation(pooler.dense(summary)) if pooler is not None else summary

        if self.head_input in MATCH_HEADS:
            if is_text is None:
                raise InvalidInputError(
                    f"head_input={self.head_input!r} needs is_text, the mask of the text positions"
                )
            if self.head_input == "token_match":
                return self.classifier(self.classifier_dropout(_token_match(pool(token_embeddings), mask, is_text)))
            text, regions = (pool(_masked_mean(token_embeddings, mask * part)) for part in (is_text, 1 - is_text))
            if self.head_input == "cosine_match":
                text, regions = nn.functional.normalize(text, dim=-1), nn.functional.normalize(regions, dim=-1)
            pooled = torch.cat([text, regions, text * regions, (text - regions).abs()], dim=-1)
        elif self.head_input == "mean":
            pooled = pool(_masked_mean(token_embeddings, mask))
        else:
            first = mask.to(torch.int64).argmax(dim=1)
            pooled = pool(token_embeddings[torch.arange(token_embeddings.size(0), device=first.device), first])
        return self.classifier(self.classifier_dropout(pooled))

    def reset_score_head(self, head_input: HeadInput, head_pooler: bool | None = None) -> None:
        """Replace the score head by a new, randomly initialised one that reads ``head_input`` (e.g. to fine-tune a
        trained bi-encoder as a cross-encoder with another head); ``head_pooler`` ``None`` keeps the current one.

        Raises:
            ValueError: an unknown ``head_input``, or a module built without a score head (``score_head=False``).
        """
        if self.classifier is None:
            raise InvalidInputError("This module was built with score_head=False; it has no score head to replace")
        MultimodalTransformerConfig(head_input=head_input)  # checks the name
        if self.trained_views is not None:
            # The new head has learned nothing, whatever trained the old one.
            self.trained_views = [view for view in self.trained_views if view != "cross_encoder"]
        reference = self.classifier.weight
        self.head_input = head_input
        if head_pooler is not None:
            self.head_pooler = head_pooler
        width = _head_width(head_input, self.backbone.config.hidden_size)
        self.classifier = nn.Linear(width, 1).to(device=reference.device, dtype=reference.dtype)
        self.classifier.weight.data.normal_(mean=0.0, std=self.backbone.config.initializer_range)
        self.classifier.bias.data.zero_()

    def start_cross_encoder(self, cross_modal_bias: float | None = -4.0, similarity_scale: float = 20.0) -> None:
        """Prepare a trained bi-encoder for fine-tuning as a cross-encoder that starts out ranking close to it.

        The score head becomes ``"cosine_match"`` (without the pooler), initialised to read ``similarity_scale``
        times the cosine of the pair's text and region means, the similarity the bi-encoder was trained on; with
        ``cross_modal_bias`` the fused layers get a learned cross-modal attention bias starting there (see the
        class's ``cross_modal_bias``), so they begin close to reading each modality on its own. Training then
        learns what attending across the pair adds ("align before fuse", without starting from a random head).

        Args:
            cross_modal_bias: the bias's start (negative: little attention across the pair at first); ``None``
                keeps full cross-modal attention from the start.
            similarity_scale: the head's starting weight on the cosine (an inverse temperature: 20 is InfoNCE's
                0.05).

        Raises:
            ValueError: the module was built without a score head (``score_head=False``).
        """
        self.reset_score_head("cosine_match", head_pooler=False)
        hidden_size = self.backbone.config.hidden_size
        reference = self.classifier.weight
        with torch.no_grad():
            self.classifier.weight.zero_()
            # [t ; r ; t * r ; |t - r|]: the third block summed is cos(t, r) for unit t and r.
            self.classifier.weight[0, 2 * hidden_size : 3 * hidden_size] = similarity_scale
        self.cross_modal_bias = None if cross_modal_bias is None else float(cross_modal_bias)
        self.cross_modal_attention_bias = None
        if cross_modal_bias is not None:
            fused = len(self.backbone.encoder.layer) - self.fusion_layer
            self.cross_modal_attention_bias = nn.Parameter(
                torch.full((fused,), float(cross_modal_bias), device=reference.device)
            )

    # ------------------------------------------------------------------ persistence

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        """Save into ``output_path``: the options, the backbone as a transformers folder, the module's own weights.

        Layout: ``mm_transformer_config.json`` (the options), ``backbone/`` (``save_pretrained`` of the backbone and
        its tokenizer: ``config.json``, ``model.safetensors``, tokenizer files), ``model.safetensors`` (the image
        projection, its LayerNorm and the score head) and ``image_featurizer/``. Weights are always safetensors.
        """
        if not safe_serialization:
            logger.warning("MultimodalTransformer always saves safetensors; safe_serialization=False is ignored")
        os.makedirs(output_path, exist_ok=True)
        self.save_config(output_path)
        backbone_path = os.path.join(output_path, BACKBONE_FOLDER)
        self.backbone.save_pretrained(backbone_path)
        self.tokenizer.save_pretrained(backbone_path)
        own = {key: value.contiguous() for key, value in self.state_dict().items() if not key.startswith("backbone.")}
        save_safetensors_file(own, os.path.join(output_path, WEIGHTS_NAME), metadata={"format": "pt"})
        if self.featurizer is not None:
            self.featurizer.save(os.path.join(output_path, FEATURIZER_FOLDER))

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        backend: str = "torch",
        **kwargs,
    ) -> Self:
        """Load a saved module from a folder or the hub (the hub cache works offline with ``HF_HUB_OFFLINE=1``).

        ``model_kwargs`` reach ``AutoModel.from_pretrained`` (``dtype``, ``attn_implementation``, ``device_map``, ...),
        ``processor_kwargs`` ``AutoTokenizer.from_pretrained`` and ``config_kwargs`` ``AutoConfig.from_pretrained``.
        Folders saved by mm_sbert 0.1.0 (the backbone's config inside ``mm_transformer_config.json``) load too.

        ``backend="onnx"`` (``MMCrossEncoder(path, backend="onnx")``, the host's convention) scores pairs in ONNX
        Runtime; the host's ``model_kwargs`` keys ``file_name`` (default ``onnx/model.onnx``; ``onnx/model_qint8.onnx``
        for int8 weights), ``provider`` and ``export`` choose the file, which is exported into the model folder
        when it is missing. Embeddings and preprocessing stay in PyTorch.
        """
        if backend not in ("torch", "onnx"):
            raise InvalidInputError(
                f"backend={backend!r} is not supported by mm_sbert's MultimodalTransformer; use 'torch' or 'onnx' "
                "(ONNX Runtime for the cross-encoder's scores)"
            )
        directory = cls.load_dir_path(
            model_name_or_path,
            subfolder=subfolder,
            token=token,
            cache_folder=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
        )
        config_path = os.path.join(directory, cls.config_file_name)
        saved = read_module_config(config_path)
        model_kwargs = dict(model_kwargs or {})
        # The host's backend options are not from_pretrained arguments.
        onnx_options = {key: model_kwargs.pop(key) for key in ONNX_MODEL_KWARGS if key in model_kwargs}
        if onnx_options and backend != "onnx":
            raise InvalidInputError(f"model_kwargs {sorted(onnx_options)} apply to backend='onnx', not {backend!r}")
        legacy_backbone_config = saved.pop("backbone_config", None)
        options = MultimodalTransformerConfig.from_dict(saved, source=config_path)
        if legacy_backbone_config is None:
            backbone, tokenizer = _load_backbone(
                os.path.join(directory, BACKBONE_FOLDER),
                trust_remote_code=trust_remote_code,
                model_kwargs=model_kwargs,
                processor_kwargs=processor_kwargs or {},
                config_kwargs=config_kwargs or {},
            )
        else:
            backbone, tokenizer = _build_legacy_backbone(directory, dict(legacy_backbone_config), model_kwargs)
        featurizer_dir = os.path.join(directory, FEATURIZER_FOLDER)
        featurizer = ImageFeaturizer.load(featurizer_dir) if os.path.isdir(featurizer_dir) else None
        try:
            module = cls(backbone=backbone, tokenizer=tokenizer, featurizer=featurizer, **options.to_dict())
        except ValueError as exc:  # options that contradict each other or the backbone / featurizer saved beside
            raise InvalidFileError(f"{config_path} does not fit the saved model: {exc}") from exc
        weights_path = os.path.join(directory, WEIGHTS_NAME)
        if legacy_backbone_config is None:
            module.load_checkpoint_weights(weights_path, skip_prefix="backbone.")
        else:
            module.load_checkpoint_weights(weights_path)
        if backend == "onnx":
            from mm_sbert.export.onnx_cross_encoder import load_onnx_scorer

            module.eval()
            module.onnx_scorer = load_onnx_scorer(module, directory, **onnx_options)
        return module

    def load_checkpoint_weights(self, weights_path: str, skip_prefix: str | None = None) -> None:
        """Load a saved state dict, refusing one whose keys or shapes do not match this module exactly.

        Args:
            weights_path: a safetensors file.
            skip_prefix: keys of this module that the file does not hold (loaded from elsewhere), e.g. ``"backbone."``.
        """
        if not os.path.isfile(weights_path):
            raise MissingFileError(f"No weights at {weights_path}")
        state_dict = read_safetensors(weights_path)
        expected = {
            key: value
            for key, value in self.state_dict().items()
            if skip_prefix is None or not key.startswith(skip_prefix)
        }
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        wrong_shape = [
            f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
            for key in sorted(set(expected) & set(state_dict))
            if state_dict[key].shape != expected[key].shape
        ]
        if missing or unexpected or wrong_shape:
            lines = [f"The checkpoint {weights_path} does not match this MultimodalTransformer:"]
            if missing:
                lines.append(f"  missing keys: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
            if unexpected:
                lines.append(f"  unexpected keys: {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
            if wrong_shape:
                lines.append(f"  wrong shapes: {wrong_shape[:10]}")
            raise InvalidFileError("\n".join(lines))
        self.load_state_dict(state_dict, strict=skip_prefix is None)

    def __repr__(self) -> str:
        config = {key: getattr(self, key) for key in self.config_keys}
        config["backbone"] = type(self.backbone).__name__
        config["featurizer"] = repr(self.featurizer)
        return f"MultimodalTransformer({config})"


# What a pair takes from its caption's preprocessed row and from its image's (join_pair_features; the cross-encoder
# losses check their columns for them).
TEXT_KEYS = ("input_ids", "token_type_ids", "text_mask")
REGION_KEYS = ("region_features", "region_mask")


def _take_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[index]``, without a copy where none is needed: all rows in order (a query's candidates), or one row
    repeated (the query itself; an expanded view, read-only like every feature tensor in forward)."""
    if len(index) == len(tensor) and torch.equal(index.cpu(), torch.arange(len(tensor))):
        return tensor
    if len(tensor) == 1:
        return tensor.expand(len(index), *tensor.shape[1:])
    return tensor[index]


def _caption_hint(value: Any) -> str:
    """For a string that looks like an image path but names no file: how to pass it as a caption instead."""
    if isinstance(value, str) and looks_like_image_path(value) and not os.path.isfile(value):
        return (
            f"; {value!r} looks like an image path but no such file exists. If it is a caption, pass it as "
            f"{{'text': {value!r}}} (in a (caption, image) pair: {{'text': {value!r}, 'image': ...}})"
        )
    return ""


def _check_image_path(image: str | os.PathLike, index: int) -> None:
    if not os.path.lexists(image):
        hint = _caption_hint(str(image)) or "; no such file exists"
        raise ImageLoadError(f"Input {index}: image file not found: '{image}'{hint}")
    check_image_file(image, f"Input {index}: image file")


def _check_finite(
    token_embeddings: torch.Tensor | None, mask: torch.Tensor | None, scores: torch.Tensor | None
) -> None:
    """Refuse NaN / infinite outputs, naming the batch rows: the valid token embeddings (when given) and the scores
    (when given; an ONNX backend returns scores only)."""
    outputs = token_embeddings if token_embeddings is not None else scores
    if bool(torch.isfinite(outputs).all()) and (scores is None or bool(torch.isfinite(scores).all())):
        return  # the common case, without building the per-row mask
    bad = torch.zeros(len(outputs), dtype=torch.bool, device=outputs.device)
    if token_embeddings is not None:
        bad |= (~torch.isfinite(token_embeddings) & mask.bool().unsqueeze(-1)).flatten(1).any(dim=1)
    if scores is not None:
        bad |= ~torch.isfinite(scores).reshape(len(scores), -1).all(dim=1)
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise InvalidInputError(
            f"The model produced NaN or infinite outputs for input(s) {rows} of this batch of {len(bad)} "
            f"(in {str(outputs.dtype).replace('torch.', '')}); their values overflow the model's dtype. "
            "Check the inputs' scale, or load the model in float32"
        )


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file``, with an error that names a truncated or corrupt file."""
    try:
        return load_safetensors_file(path)
    except (SafetensorError, OSError) as exc:
        raise InvalidFileError(
            f"Could not read the weights file {path}: it is truncated or corrupt ({exc}); re-save or re-download "
            "the model"
        ) from exc


def _load_backbone(
    path: str,
    trust_remote_code: bool,
    model_kwargs: dict[str, Any],
    processor_kwargs: dict[str, Any],
    config_kwargs: dict[str, Any],
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The backbone folder the transformers way, so dtype, attention implementation and device map pass through."""
    check_backbone_folder(path)
    with backbone_file_errors(path):
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **config_kwargs)
    weights = os.path.join(path, WEIGHTS_NAME)
    try:
        backbone = AutoModel.from_pretrained(path, config=config, trust_remote_code=trust_remote_code, **model_kwargs)
    except (SafetensorError, OSError):
        if os.path.isfile(weights):
            read_safetensors(weights)  # names the file when it is the one at fault
        raise
    with backbone_file_errors(path):
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **processor_kwargs)
    return backbone, tokenizer


def _build_legacy_backbone(
    directory: str, backbone_config: dict[str, Any], model_kwargs: dict[str, Any]
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A backbone from a 0.1.0 folder: its config was stored in ``mm_transformer_config.json``, its weights with the
    module's own (loaded afterwards by ``load_checkpoint_weights``), its tokenizer in the module's folder."""
    supported = {"dtype", "torch_dtype", "attn_implementation"}
    unsupported = sorted(set(model_kwargs) - supported)
    if unsupported:
        raise InvalidInputError(
            f"{directory} was saved by mm_sbert 0.1.0, which stored no loadable transformers backbone; model_kwargs "
            f"{unsupported} need one. Load it without them and save it again with this version, or pass only "
            f"{sorted(supported)}"
        )
    config = AutoConfig.for_model(backbone_config.pop("model_type"), **backbone_config)
    backbone = AutoModel.from_config(config, **model_kwargs)
    return backbone, AutoTokenizer.from_pretrained(directory)


def _masked_mean(token_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(token_embeddings.dtype)
    return (token_embeddings * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def _head_width(head_input: str, hidden_size: int) -> int:
    """Width of what the score head's ``classifier`` reads for ``head_input``."""
    if head_input == "token_match":
        return 8 * hidden_size
    return 4 * hidden_size if head_input in MATCH_HEADS else hidden_size


def _token_match(states: torch.Tensor, mask: torch.Tensor, is_text: torch.Tensor) -> torch.Tensor:
    """``head_input="token_match"``: each caption position aligned with the image positions it matches best, compared
    position by position, then pooled by mean and max over the caption (ESIM's attend - compare - aggregate).

    A mismatch on one word (a colour bound to the wrong shape) moves the max of its comparison features, where a mean
    over the whole caption would dilute it. Returns ``[B, 8 * hidden]``.
    """
    caption = (mask * is_text).to(states.dtype)
    image = (mask * (1 - is_text)).bool()
    logits = states @ states.transpose(1, 2) / math.sqrt(states.size(-1))  # [B, L, L]
    # A row without image positions (a caption alone) gets uniform weights: finite, and never used as a pair score.
    logits = logits.masked_fill(~image[:, None, :], torch.finfo(logits.dtype).min)
    aligned = torch.softmax(logits, dim=-1) @ states
    compared = torch.cat([states, aligned, states * aligned, (states - aligned).abs()], dim=-1)
    mean = _masked_mean(compared, caption)
    largest = compared.masked_fill(caption.unsqueeze(-1) == 0, torch.finfo(compared.dtype).min).amax(dim=1)
    # A row without caption positions (an image alone) gets its mean instead of the dtype's minimum.
    has_caption = caption.sum(dim=1, keepdim=True) > 0
    return torch.cat([mean, torch.where(has_caption, largest, mean)], dim=-1)
