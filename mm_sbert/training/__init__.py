from __future__ import annotations

from mm_sbert.training.alternating_batch_sampler import AlternatingBatchSampler
from mm_sbert.training.joint_trainer import JointTrainer
from mm_sbert.training.training_args import PAPER_HYPERPARAMETERS, paper_training_args

__all__ = ["AlternatingBatchSampler", "JointTrainer", "PAPER_HYPERPARAMETERS", "paper_training_args"]
