#!/usr/bin/env bash
# The Flickr8k training runs behind benchmarks/results/flickr8k.md, through the user's own commands.
# Usage: benchmarks/flickr8k_train.sh
#          {store|be|ce|joint|ce_sim|joint_sim|be_part1|be_part2|ce_crossfit|ce_crossfit_reverse|joint_crossfit}
#        [extra mm-sbert train arguments]
# Every run checkpoints every SAVE_STEPS steps and resumes from its newest checkpoint when started again.
# Environment: DATA (flickr8k folder), RUNS (output folder), STORE (feature store), THREADS, DEVICE, STEPS, BATCH.
set -euo pipefail
DATA=${DATA:-../shared/data/flickr8k}
RUNS=${RUNS:-runs/flickr8k}
STORE=${STORE:-$RUNS/features_mobilenet_grid3}
THREADS=${THREADS:-2}
DEVICE=${DEVICE:-cpu}
SAVE_STEPS=${SAVE_STEPS:-100}
what=$1
shift
# ce_sim / joint_sim: the ce / joint recipe with the score head started at the BE's cosine and a learned cross-modal
# attention bias (MultimodalTransformer.start_cross_encoder), in their own output folders.
similarity=()
case "$what" in
  ce_sim|joint_sim) similarity=(--similarity-start --output-dir "$RUNS/$what"); what=${what%_sim} ;;
esac
# Cross-fitting: a bi-encoder on half of the images (be_part1: 400 steps = as many passes per image as `be`), then
# the similarity-started cross-encoder or joint model from it on the other half, whose images that bi-encoder never
# saw, so its mined negatives are the near misses it makes on new photos (on its own images it has memorised them).
# The reverse pair (be_part2, then ce_crossfit_reverse on the first half) covers the other half of the images.
case "$what" in
  be_part1|be_part2)
    set -- --image-part "${what#be_part}/2" --output-dir "$RUNS/$what" --steps "${STEPS:-400}" "$@"; what=be ;;
  ce_crossfit|joint_crossfit)
    similarity=(--similarity-start --model "$RUNS/be_part1/final" --image-part 2/2 --output-dir "$RUNS/$what")
    what=${what%_crossfit} ;;
  ce_crossfit_reverse)
    similarity=(--similarity-start --model "$RUNS/be_part2/final" --image-part 1/2 --output-dir "$RUNS/$what")
    what=ce ;;
esac
common=(--data "$DATA/train/captions.jsonl" --features "$STORE" --save-steps "$SAVE_STEPS"
        --threads "$THREADS" --device "$DEVICE" --resume)
case "$what" in
  store)  # MobileNetV2's 7x7 map pooled to 3x3 + the whole image: 10 regions per photo
    mm-sbert featurize "$DATA/train/images" "$DATA/dev/images" --output "$STORE" --featurizer mobilenet-grid \
      --grid-size 3 --batch-size 64 "$@" ;;
  # The settings of each regime are the named recipe `flickr8k` (mm_sbert/training/published_recipes.py), the one
  # docs/training.md quotes; STEPS / BATCH override its steps / batch size.
  be)     # bi-encoder from all-MiniLM-L6-v2: in-batch InfoNCE both ways, text-image-match head, fusion from layer 3
    mm-sbert train be --recipe flickr8k "${common[@]}" --output-dir "$RUNS/be" ${STEPS:+--steps "$STEPS"} \
      ${BATCH:+--batch-size "$BATCH"} "$@" ;;
  ce)     # cross-encoder initialised from the trained bi-encoder ("align before fuse"), listwise on mined negatives
    mm-sbert train ce --recipe flickr8k "${common[@]}" --model "$RUNS/be/final" --output-dir "$RUNS/ce" \
      ${STEPS:+--steps "$STEPS"} ${BATCH:+--batch-size "$BATCH"} "${similarity[@]}" "$@" ;;
  joint)  # joint model initialised from the trained bi-encoder: both objectives alternating on shared weights
    mm-sbert train joint --recipe flickr8k "${common[@]}" --model "$RUNS/be/final" --output-dir "$RUNS/joint" \
      ${STEPS:+--steps "$STEPS"} ${BATCH:+--batch-size "$BATCH"} "${similarity[@]}" "$@" ;;
  *) echo "usage: $0 {store|be|ce|joint|ce_sim|joint_sim|be_part1|be_part2|ce_crossfit|ce_crossfit_reverse|joint_crossfit}" \
       "[arguments]" >&2
     exit 2 ;;
esac
