from __future__ import annotations

from mm_sbert.training.alternating_batch_sampler import AlternatingBatchSampler
from mm_sbert.training.grouped_batch_sampler import GroupedBatchSampler, image_neighbour_groups, neighbour_groups
from mm_sbert.training.joint_trainer import JointTrainer
from mm_sbert.training.training_args import PAPER_HYPERPARAMETERS, paper_training_args
from mm_sbert.training.training_recipe import (
    DEFAULT_BACKBONE,
    TrainingRecipe,
    is_saved_model,
    load_or_new_model,
    new_model,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "AlternatingBatchSampler",
    "GroupedBatchSampler",
    "JointTrainer",
    "PAPER_HYPERPARAMETERS",
    "TrainingRecipe",
    "image_neighbour_groups",
    "is_saved_model",
    "load_or_new_model",
    "neighbour_groups",
    "new_model",
    "paper_training_args",
]
