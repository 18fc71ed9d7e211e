"""The demo's joint fine-tuning: BE triplet loss and CE binary cross-entropy alternating on one shared model.

INTERIM: this small hand-written loop stands in for ``mm_sbert.training.train_joint`` (the training area) until
that lands on main; the demo then calls it instead. It follows the reference code's joint recipe (DESIGN.md): per
round, each objective does its own forward, backward and optimizer step on the shared weights.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mm_sbert.image_features.region_features import RegionFeatures
from mm_sbert.models import MMSentenceTransformer


def family_batches(families: Sequence[int], batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Image-id batches made of whole families, so every batch holds near-duplicates (in-batch hard negatives)."""
    members: dict[int, list[int]] = {}
    for image_id, family in enumerate(families):
        members.setdefault(family, []).append(image_id)
    groups = list(members.values())
    rng = random.Random(seed)
    batches: list[list[int]] = []
    order: list[list[int]] = []
    while len(batches) < steps:
        batch: list[int] = []
        while len(batch) < batch_size:
            if not order:
                order = groups[:]
                rng.shuffle(order)
            batch.extend(order.pop()[: batch_size - len(batch)])
        batches.append(batch)
    return batches


def triplet_loss(caption_embeddings: torch.Tensor, image_embeddings: torch.Tensor, margin: float) -> torch.Tensor:
    """VSE++ max-violation hinge on cosine similarity: the hardest in-batch negative per caption and per image."""
    scores = F.normalize(caption_embeddings, dim=-1) @ F.normalize(image_embeddings, dim=-1).T
    positives = scores.diag()
    masked = scores.masked_fill(torch.eye(len(scores), dtype=torch.bool, device=scores.device), float("-inf"))
    hardest_image = masked.max(dim=1).values
    hardest_caption = masked.max(dim=0).values
    return (F.relu(margin - positives + hardest_image) + F.relu(margin - positives + hardest_caption)).mean()


def info_nce_loss(caption_embeddings: torch.Tensor, image_embeddings: torch.Tensor, scale: float) -> torch.Tensor:
    """Symmetric in-batch InfoNCE on cosine similarity (MultipleNegativesRankingLoss in both directions)."""
    scores = scale * F.normalize(caption_embeddings, dim=-1) @ F.normalize(image_embeddings, dim=-1).T
    targets = torch.arange(len(scores), device=scores.device)
    return (F.cross_entropy(scores, targets) + F.cross_entropy(scores.T, targets)) / 2


def train_joint_interim(
    model: MMSentenceTransformer,
    regions: Sequence[RegionFeatures],
    captions: Sequence[str],
    caption_image_ids: Sequence[int],
    families: Sequence[int],
    steps: int = 200,
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    new_layer_learning_rate: float = 1e-3,
    margin: float = 0.2,
    bi_encoder_loss: str = "infonce",
    scale: float = 20.0,
    hard_negative_ratio: float = 0.5,
    seed: int = 0,
    show_progress_bar: bool = True,
) -> list[tuple[float, float]]:
    """Fine-tune ``model`` jointly in place; returns the (triplet, BCE) loss of every step.

    Each step draws ``batch_size`` images (whole families) with one random caption each, takes a bi-encoder step
    (``"infonce"``: symmetric in-batch InfoNCE, the default because it converges within the demo's few hundred
    steps; ``"triplet"``: the paper's max-violation triplet loss, which from a cold start tends to collapse this
    early) and a BCE step on the cross-encoder view. The CE sees each positive pair with one negative: with
    probability ``hard_negative_ratio`` mined from the bi-encoder scores of the batch, otherwise random; half the
    time the image is replaced, otherwise the caption.
    """
    module = model[0]
    rng = random.Random(seed)
    torch.manual_seed(seed)
    captions_of: dict[int, list[str]] = {}
    for caption, image_id in zip(captions, caption_image_ids):
        captions_of.setdefault(image_id, []).append(caption)

    new_layers = {id(p) for layer in (module.img_embedding, module.classifier) for p in layer.parameters()}
    if module.img_layer_norm is not None:
        new_layers |= {id(p) for p in module.img_layer_norm.parameters()}
    decay, no_decay, fresh = [], [], []
    for name, parameter in model.named_parameters():
        if id(parameter) in new_layers:
            fresh.append(parameter)
        elif "bias" in name or "LayerNorm" in name:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": 0.05, "lr": learning_rate},
            {"params": no_decay, "weight_decay": 0.0, "lr": learning_rate},
            {"params": fresh, "weight_decay": 0.0, "lr": new_layer_learning_rate},
        ]
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / max(steps, 1))
    device = model.device

    def run(inputs: list) -> dict[str, torch.Tensor]:
        features = module.preprocess(inputs)
        features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        return model(features)

    def optimizer_step(loss: torch.Tensor) -> None:
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    model.train()
    history: list[tuple[float, float]] = []
    batches = family_batches(families, batch_size, steps, seed)
    progress = tqdm(batches, desc="Joint training", disable=not show_progress_bar, unit="step")
    for image_ids in progress:
        batch_captions = [rng.choice(captions_of[i]) for i in image_ids]
        batch_regions = [regions[i] for i in image_ids]

        caption_embeddings = run(batch_captions)["sentence_embedding"]
        image_embeddings = run(batch_regions)["sentence_embedding"]
        if bi_encoder_loss == "triplet":
            be_loss = triplet_loss(caption_embeddings, image_embeddings, margin)
        else:
            be_loss = info_nce_loss(caption_embeddings, image_embeddings, scale)
        optimizer_step(be_loss)

        with torch.no_grad():
            scores = F.normalize(caption_embeddings, dim=-1) @ F.normalize(image_embeddings, dim=-1).T
            same = torch.tensor([[a == b for b in image_ids] for a in image_ids], device=scores.device)
            scores = scores.masked_fill(same, float("-inf"))
            hardest_image, hardest_caption = scores.argmax(dim=1).tolist(), scores.argmax(dim=0).tolist()
        pairs, labels = [], []
        for row in range(len(image_ids)):
            pairs.append((batch_captions[row], batch_regions[row]))
            labels.append(1.0)
            hard = rng.random() < hard_negative_ratio
            other = rng.choice([i for i in range(len(image_ids)) if i != row])
            if rng.random() < 0.5:
                pairs.append((batch_captions[row], batch_regions[hardest_image[row] if hard else other]))
            else:
                pairs.append((batch_captions[hardest_caption[row] if hard else other], batch_regions[row]))
            labels.append(0.0)
        logits = run(pairs)["scores"].view(-1)
        ce_loss = F.binary_cross_entropy_with_logits(logits, torch.tensor(labels, device=logits.device))
        optimizer_step(ce_loss)
        scheduler.step()

        history.append((be_loss.item(), ce_loss.item()))
        progress.set_postfix(triplet=f"{be_loss.item():.3f}", bce=f"{ce_loss.item():.3f}")
    model.eval()
    return history
