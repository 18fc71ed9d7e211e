from __future__ import annotations

from mm_sbert.losses.cross_encoder_bce_loss import CrossEncoderBCELoss
from mm_sbert.losses.cross_encoder_listwise_loss import CrossEncoderListwiseLoss
from mm_sbert.losses.hard_negative_triplet_loss import HardNegativeTripletLoss

__all__ = ["CrossEncoderBCELoss", "CrossEncoderListwiseLoss", "HardNegativeTripletLoss"]
