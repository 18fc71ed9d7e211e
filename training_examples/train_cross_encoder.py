"""Train the cross-encoder (CE) with BCE on (caption, image) positives and swapped-half negatives.

Small offline demo (a couple of minutes on a CPU):
    python training_examples/train_cross_encoder.py
Real run with the paper's hyperparameters, e.g. on the Karpathy COCO split:
    python training_examples/train_cross_encoder.py --data dataset_coco.json \
        --image-root /data/coco --split train,restval --featurizer mobilenet
Any paper default can be overridden (--batch-size, --lr, --max-steps, ...); --resume continues a crashed run.
Multi-GPU: torchrun --nproc_per_node=4 training_examples/train_cross_encoder.py --data ...
"""

from __future__ import annotations

from common import run

if __name__ == "__main__":
    run("cross_encoder", __doc__.splitlines()[0])
