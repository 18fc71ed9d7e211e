"""Which details a trained demo model confuses: its wrong top-1 images, by how they differ from the right one.

Loads a model saved by ``mm-sbert demo`` (``<output-dir>/model``), rebuilds the demo's held-out scenes for the same
seed, and for BE and CE counts the image-retrieval queries whose top-1 image is wrong by the kind of difference
between the wrong and the right scene (``elsewhere``: another family; within the family: colour, size, side swap,
move to an empty slot, one object more / less). A second table compares every right image with each of its family
members (pairwise: how often the wrong one scores at least as high). A third table probes binding directly: each
held-out image against its caption and the same caption with two objects' sides, colours, shapes or sizes
exchanged (the same words in another arrangement), and how often each model scores the true caption higher.

    mm-sbert demo --output-dir demo_run
    python benchmarks/demo_error_kinds.py demo_run/model --seed 0

The CE is the demo's separate cross-encoder (``<output-dir>/cross_encoder``) where the run saved one, else the model's
own cross-encoder view (a joint model of earlier demo versions); ``--cross-encoder`` names another.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mm_sbert.demo import SyntheticScenes  # noqa: E402
from mm_sbert.demo.recipe import DEFAULTS  # noqa: E402
from mm_sbert.demo.synthetic_scenes import Scene, SceneObject  # noqa: E402
from mm_sbert.retrieval.cooperative_retriever import cross_encoder_logits  # noqa: E402

KINDS = ("colour", "size", "swap", "move", "count", "other")
# The detail exchanged between two objects of a caption, and the SceneObject field that holds it.
BINDINGS = {"side": "slot", "colour": "color", "shape": "shape", "size": "size"}


def variant_kind(right: Scene, wrong: Scene) -> str:
    """How ``wrong`` differs from ``right``: one of :data:`KINDS`."""
    if len(right.objects) != len(wrong.objects):
        return "count"
    by_slot = {obj.slot: obj for obj in right.objects}
    other = {obj.slot: obj for obj in wrong.objects}
    if set(by_slot) != set(other):
        return "move"
    changed = [slot for slot in by_slot if by_slot[slot] != other[slot]]
    if len(changed) == 1:
        a, b = by_slot[changed[0]], other[changed[0]]
        if (a.shape, a.size) == (b.shape, b.size):
            return "colour"
        if (a.shape, a.color) == (b.shape, b.color):
            return "size"
    if len(changed) == 2:

        def looks(objs):
            return sorted((obj.shape, obj.color, obj.size) for obj in objs)

        if looks(by_slot[s] for s in changed) == looks(other[s] for s in changed):
            return "swap"
    return "other"


def exchange(objects: tuple[SceneObject, ...], detail: str, first: int, second: int) -> tuple[SceneObject, ...] | None:
    """``objects`` with the ``detail`` (a :data:`BINDINGS` key) of objects ``first`` and ``second`` exchanged.

    ``None`` when the two share that detail: the exchange would leave the caption unchanged.
    """
    field = BINDINGS[detail]
    a, b = objects[first], objects[second]
    if getattr(a, field) == getattr(b, field):
        return None
    swapped = list(objects)
    swapped[first] = dataclasses.replace(a, **{field: getattr(b, field)})
    swapped[second] = dataclasses.replace(b, **{field: getattr(a, field)})
    return tuple(swapped)


def binding_table(model, cross_encoder, scenes: list[Scene], regions: list, image_embeddings: torch.Tensor) -> None:
    """Print how often BE and CE score an image's caption above the caption with two objects' details exchanged.

    Every pair of objects of every scene, in each of the generator's five wordings. ``image_embeddings``: the
    bi-encoder's normalised embeddings of ``regions``, as the error tables computed them.
    """
    rows = {"BE": {}, "CE": {}, "pairs": {}, "BE cos": {}}
    for detail in BINDINGS:
        ids, true_captions, exchanged = [], [], []
        for image_id, scene in enumerate(scenes):
            for first, second in itertools.combinations(range(len(scene.objects)), 2):
                other = exchange(scene.objects, detail, first, second)
                for template in range(5) if other is not None else ():
                    ids.append(image_id)
                    true_captions.append(SyntheticScenes.describe(scene.objects, template))
                    exchanged.append(SyntheticScenes.describe(other, template))
        rows["pairs"][detail] = len(ids)
        if not ids:
            continue
        true_embeddings, exchanged_embeddings = (
            model.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
            for texts in (true_captions, exchanged)
        )
        images = image_embeddings[ids]
        score_pairs = {
            "BE": ((images * true_embeddings).sum(1), (images * exchanged_embeddings).sum(1)),
            "CE": tuple(
                cross_encoder_logits(cross_encoder, [(caption, regions[i]) for caption, i in zip(texts, ids)])
                for texts in (true_captions, exchanged)
            ),
        }
        for mode, (true_scores, exchanged_scores) in score_pairs.items():
            # A tie counts half: a model that cannot tell the two apart scores 50 %.
            wins = (true_scores > exchanged_scores).float() + 0.5 * (true_scores == exchanged_scores).float()
            rows[mode][detail] = f"{100 * wins.mean().item():.1f}"
        rows["BE cos"][detail] = f"{(true_embeddings * exchanged_embeddings).sum(1).mean().item():.3f}"
    print("\n# binding: the image's caption vs the caption with two objects' <detail> exchanged")
    print("# (BE, CE: % of pairs where the true caption scores higher, chance 50; BE cos: the captions' similarity;")
    print("# every pair of objects of every held-out scene, in the generator's five wordings)")
    print(f"{'':<8}" + "".join(f"{detail:>9}" for detail in BINDINGS))
    for name, row in rows.items():
        print(f"{name:<8}" + "".join(f"{row.get(detail, '-'):>9}" for detail in BINDINGS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a folder saved by mm-sbert demo")
    parser.add_argument("--cross-encoder", help="the reranker (default: the run's cross_encoder/, else the model)")
    parser.add_argument("--seed", type=int, default=None, help="the demo's --seed (default: as the run recorded it)")
    parser.add_argument("--train-images", type=int, default=None, help="the demo's --train-images (idem)")
    parser.add_argument("--eval-images", type=int, default=None, help="the demo's --eval-images (idem)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # The held-out scenes depend on the run's seed and scene counts: read them from the demo's results next to the
    # model, so a model trained with other settings (or an older default) is scored on its own held-out scenes.
    recorded = Path(args.model).resolve().parent / "demo_results.json"
    settings = json.loads(recorded.read_text())["settings"] if recorded.is_file() else {}
    seed = args.seed if args.seed is not None else settings.get("seed", 0)
    train_images = args.train_images or settings.get("train_images", DEFAULTS["train_images"])
    eval_images = args.eval_images or settings.get("eval_images", DEFAULTS["eval_images"])
    # Runs recorded before the binding world had one-detail families of 4.
    families = {"families": settings.get("families", "details"), "family_size": settings.get("family_size", 4)}

    from mm_sbert import MMCrossEncoder, MMSentenceTransformer

    model = MMSentenceTransformer(args.model, device="cpu")
    # The demo's separate cross-encoder reads the regions of the same featurizer as its bi-encoder.
    separate = Path(args.model).resolve().parent / "cross_encoder"
    if args.cross_encoder or separate.is_dir():
        cross_encoder = MMCrossEncoder(args.cross_encoder or str(separate), device="cpu")
    else:
        cross_encoder = model.to_cross_encoder()
    train = SyntheticScenes(train_images, captions_per_image=5, seed=seed, **families)
    held_out = SyntheticScenes(eval_images, captions_per_image=1, seed=seed + 1, exclude=train.signatures, **families)
    regions = model[0].featurizer.featurize(held_out.images)
    captions = model.encode(held_out.captions, convert_to_tensor=True, normalize_embeddings=True)
    images = model.encode(list(regions), convert_to_tensor=True, normalize_embeddings=True)
    n = len(held_out.images)
    scores = {"BE": (captions @ images.T).cpu()}
    pairs = [(caption, regions[j]) for caption in held_out.captions for j in range(n)]
    scores["CE"] = cross_encoder_logits(cross_encoder, pairs, batch_size=256).view(n, n)

    families, scenes = held_out.families, held_out.scenes
    print(f"# wrong top-1 images of {n} image-retrieval queries, by kind of difference")
    print(f"{'mode':<6}{'wrong':>7}{'elsewhere':>11}" + "".join(f"{kind:>8}" for kind in KINDS))
    for mode, matrix in scores.items():
        kinds = Counter()
        for query in range(n):
            top = int(matrix[query].argmax())
            if top != query:
                same_family = families[top] == families[query]
                kinds[variant_kind(scenes[query], scenes[top]) if same_family else "elsewhere"] += 1
        print(f"{mode:<6}{sum(kinds.values()):>7}{kinds['elsewhere']:>11}" + "".join(f"{kinds[k]:>8}" for k in KINDS))
    print("\n# pairwise within families: the right image vs each family member (wrong / compared)")
    print(f"{'mode':<6}" + "".join(f"{kind:>10}" for kind in KINDS))
    for mode, matrix in scores.items():
        wrong, total = Counter(), Counter()
        for query in range(n):
            for other in range(n):
                if other != query and families[other] == families[query]:
                    kind = variant_kind(scenes[query], scenes[other])
                    total[kind] += 1
                    wrong[kind] += int(matrix[query, other] >= matrix[query, query])
        print(f"{mode:<6}" + "".join(f"{f'{wrong[k]}/{total[k]}':>10}" for k in KINDS))
    binding_table(model, cross_encoder, scenes, regions, images)


if __name__ == "__main__":
    main()
