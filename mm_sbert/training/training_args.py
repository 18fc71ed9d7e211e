from __future__ import annotations

from typing import Any, Literal

from sentence_transformers.base.sampler import MultiDatasetBatchSamplers
from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

Regime = Literal["bi_encoder", "cross_encoder", "joint"]

# The paper's settings (§4.1, OSCAR): batch 128 positives per objective, AdamW, weight decay 0.05, linear decay
# without warm-up, gradient clipping 1 (reference code), checkpoints every 5k steps.
PAPER_HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "bi_encoder": {"learning_rate": 2e-5, "max_steps": 30_000, "margin": 0.1},
    "cross_encoder": {"learning_rate": 5e-5, "max_steps": 100_000, "negatives_per_positive": 1},
    # 60k update steps = 30k rounds of (bi-encoder step, cross-encoder step), as the reference counts them.
    "joint": {"learning_rate": 5e-5, "max_steps": 60_000, "margin": 0.1, "negatives_per_positive": 1},
}


def paper_training_args(
    output_dir: str, regime: Regime = "joint", **overrides: Any
) -> SentenceTransformerTrainingArguments:
    """Training arguments with the paper's hyperparameters for one regime; any argument can be overridden.

    Args:
        output_dir: where checkpoints (every 5k steps) and the final model go.
        regime: ``"bi_encoder"``, ``"cross_encoder"`` or ``"joint"`` (sets learning rate and step count).
        overrides: any :class:`~sentence_transformers.SentenceTransformerTrainingArguments` field.

    Example:
        >>> args = paper_training_args("out/joint", "joint", max_steps=2_000, per_device_train_batch_size=32)
    """
    if regime not in PAPER_HYPERPARAMETERS:
        raise ValueError(f"Unknown regime {regime!r}; expected one of {sorted(PAPER_HYPERPARAMETERS)}")
    paper = PAPER_HYPERPARAMETERS[regime]
    kwargs: dict[str, Any] = {
        "output_dir": output_dir,
        "per_device_train_batch_size": 128,
        "learning_rate": paper["learning_rate"],
        "max_steps": paper["max_steps"],
        "weight_decay": 0.05,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "max_grad_norm": 1.0,
        "optim": "adamw_torch",
        "save_strategy": "steps",
        "save_steps": 5_000,
        "logging_steps": 100,
        "multi_dataset_batch_sampler": MultiDatasetBatchSamplers.ROUND_ROBIN,
        "report_to": "none",
    }
    kwargs.update(overrides)
    return SentenceTransformerTrainingArguments(**kwargs)
