"""Small shared pieces of the training tests: a learnable swatch set, recall@1 of both views, tiny trainer args."""

from __future__ import annotations

import pytest
import torch
from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

from mm_sbert.demo import color_swatches


def swatch_corpus(num_images: int = 12, captions_per_image: int = 3, num_solid: int | None = None):
    return color_swatches(num_images, captions_per_image=captions_per_image, image_size=16, num_solid=num_solid)


def tiny_args(output_dir: str, **overrides) -> SentenceTransformerTrainingArguments:
    kwargs = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=12,
        learning_rate=1e-3,
        max_steps=40,
        weight_decay=0.05,
        lr_scheduler_type="linear",
        warmup_steps=0,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=True,
    )
    kwargs.update(overrides)
    return SentenceTransformerTrainingArguments(**kwargs)


@torch.no_grad()
def text_to_image_r1(bi_encoder, cross_encoder, corpus, mode: str) -> float:
    """Recall@1 of caption -> image retrieval over the whole corpus, by the bi-encoder or the cross-encoder."""
    images, captions, caption_image_ids = corpus.evaluation_data()
    bi_encoder.eval()
    if mode == "be":
        caption_embeddings = bi_encoder.encode(captions, convert_to_tensor=True, normalize_embeddings=True)
        image_embeddings = bi_encoder.encode(images, convert_to_tensor=True, normalize_embeddings=True)
        best = (caption_embeddings @ image_embeddings.T).argmax(dim=1)
    else:
        pairs = [(caption, image) for caption in captions for image in images]
        scores = torch.as_tensor(cross_encoder.predict(pairs, batch_size=256, activation_fn=torch.nn.Identity()))
        best = scores.view(len(captions), len(images)).argmax(dim=1)
    return (best == torch.tensor(caption_image_ids)).float().mean().item()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Training tests run tiny models: one intra-op thread is faster, and far faster on a loaded 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
