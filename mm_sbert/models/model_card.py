"""Model cards whose usage snippet is code that runs with this package (the host's would not load the model)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sentence_transformers.cross_encoder.model_card import CrossEncoderModelCardData
from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData

_CAPTIONS = ["A red circle to the left of a blue square.", "Two green triangles on a white background."]


def _image_lines(model) -> tuple[list[str], list[str]]:
    """Imports and lines that build two example images the model can take: PIL images when it has a featurizer."""
    module = model[0]
    if getattr(module, "featurizer", None) is not None:
        return ["from PIL import Image"], [
            "# Images: PIL images or image file paths",
            'images = [Image.new("RGB", (224, 224), "red"), Image.new("RGB", (224, 224), "green")]',
        ]
    return ["import torch", "from mm_sbert import RegionFeatures"], [
        "# Images: object-region features (this model has no image featurizer), boxes normalised x1, y1, x2, y2",
        "images = [",
        f"    RegionFeatures(torch.rand(36, {module.region_feature_dim}), torch.tensor([[0.1, 0.1, 0.6, 0.8]] * 36)),",
        f"    RegionFeatures(torch.rand(10, {module.region_feature_dim}), torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 10)),",
        "]",
    ]


def _with_score_note(snippet: str, score_note: str | None) -> str:
    """The usage snippet followed by what the cross-encoder's score is (set for converted checkpoints)."""
    if not score_note:
        return snippet
    return f"{snippet}\n\n**Cross-encoder score** (`MMCrossEncoder.predict`): {score_note}."


@dataclass
class MMSentenceTransformerModelCardData(SentenceTransformerModelCardData):
    """Card data for the bi-encoder view: tagged image-text retrieval, snippet with images and captions."""

    tags: list[str] = field(
        default_factory=lambda: [
            "sentence-transformers",
            "mm_sbert",
            "image-text-retrieval",
            "feature-extraction",
            "dense",
        ]
    )
    # What the cross-encoder view's score is and why (converted checkpoints: the conversion report's ``score``).
    score_note: str | None = None

    def run_usage_snippet(self) -> None:
        # The host would encode its own text examples here; our snippet is written in full below.
        self.usage_examples = list(_CAPTIONS)

    def generate_usage_snippet(self) -> str:
        model_id = self.model_id or "mm_sbert_model_id"
        image_imports, image_lines = _image_lines(self.model)
        lines = [
            "# pip install mm_sbert",
            *image_imports,
            "from sentence_transformers import util",
            "",
            "from mm_sbert import MMSentenceTransformer",
            "",
            f'model = MMSentenceTransformer("{model_id}")',
            *image_lines,
            f"captions = {_CAPTIONS!r}",
            "image_embeddings = model.encode(images)",
            "caption_embeddings = model.encode(captions)",
            "# Text -> image retrieval: the best images for each caption",
            "hits = util.semantic_search(caption_embeddings, image_embeddings, top_k=2)",
            "print(hits)",
        ]
        return _with_score_note("```python\n" + "\n".join(lines) + "\n```", self.score_note)


@dataclass
class MMCrossEncoderModelCardData(CrossEncoderModelCardData):
    """Card data for the cross-encoder view: snippet that scores (caption, image) pairs."""

    tags: list[str] = field(
        default_factory=lambda: ["sentence-transformers", "mm_sbert", "cross-encoder", "image-text-retrieval"]
    )
    score_note: str | None = None

    def run_usage_snippet(self) -> None:
        self.usage_examples = list(_CAPTIONS)

    def generate_usage_snippet(self) -> str:
        model_id = self.model_id or "mm_sbert_model_id"
        image_imports, image_lines = _image_lines(self.model)
        lines = [
            "# pip install mm_sbert",
            *image_imports,
            "",
            "from mm_sbert import MMCrossEncoder",
            "",
            f'model = MMCrossEncoder("{model_id}")',
            *image_lines,
            f"captions = {_CAPTIONS!r}",
            "# One relevance probability per (caption, image) pair",
            "scores = model.predict([(caption, image) for caption in captions for image in images])",
            "print(scores)",
        ]
        return _with_score_note("```python\n" + "\n".join(lines) + "\n```", self.score_note)
