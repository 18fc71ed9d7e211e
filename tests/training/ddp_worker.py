"""One rank of the 2-process DDP test (run by torchrun from test_distributed.py; not a test module itself).

Every rank builds the same tiny model, trains it jointly (both objectives alternating) with the host trainer
under DDP (gloo, CPU), and writes its final weights and its own loss history to ``<out>/rank<r>.pt``.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from conftest import build_views  # noqa: E402
from training_helpers import swatch_corpus, tiny_args  # noqa: E402

from mm_sbert.losses import CrossEncoderBCELoss, HardNegativeTripletLoss  # noqa: E402
from mm_sbert.training import JointTrainer  # noqa: E402


def main(output_dir: str) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    bi_encoder, _ = build_views("bert", seed=0)
    initial = {key: value.clone() for key, value in bi_encoder.state_dict().items()}
    args = tiny_args(output_dir, max_steps=4, per_device_train_batch_size=6, ddp_backend="gloo", logging_steps=2)
    trainer = JointTrainer(
        bi_encoder,
        train_dataset=swatch_corpus(num_images=12).to_dataset(),
        bi_encoder_loss=HardNegativeTripletLoss(bi_encoder),
        cross_encoder_loss=CrossEncoderBCELoss(bi_encoder, hard_negatives=True),
        args=args,
    )
    trainer.train()
    torch.save(
        {
            "world_size": trainer.args.world_size,
            "wrapped": type(trainer.model_wrapped).__name__,
            "initial": initial,
            "final": {key: value.detach().clone() for key, value in bi_encoder.state_dict().items()},
            "history": trainer.objective_history,
        },
        os.path.join(output_dir, f"rank{rank}.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1])
