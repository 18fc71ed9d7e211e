"""Does a trained joint model bind? Flip one attribute and see which view notices (issue 28's probe).

For every held-out binding scene (``SyntheticScenes(families="binding")``, the demo's seeds) and every other scene of
its family, the scene's caption is scored against its own image and against the family member, which shows the same
colours, shapes and slots with one attribute exchanged between two objects. The table gives, per kind of exchange
(colours, shapes, whole objects swapping slots), how often the bi-encoder (cosine) and the cross-encoder (logit)
score the caption's own image higher (chance: 50 %). Then, for the cross-encoder's pairs, how much of each layer's
attention the caption's positions give to the image regions (an attention that stays within the caption makes the
cross-encoder a bi-encoder in disguise).

    mm-sbert demo --families binding --output demo_out
    python benchmarks/binding_probe.py demo_out/model --train-images 1000 --held-out 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mm_sbert.demo import SyntheticScenes  # noqa: E402
from mm_sbert.models import MMCrossEncoder, MMSentenceTransformer  # noqa: E402


def exchange_kind(scene, other) -> str:
    """What differs between two scenes of a binding family: ``colour``, ``shape`` or ``slot`` (whole objects)."""
    mine, theirs = ({obj.slot: obj for obj in s.objects} for s in (scene, other))
    changed = [(mine[slot], theirs[slot]) for slot in mine if mine[slot] != theirs[slot]]
    if all(a.shape == b.shape for a, b in changed):
        return "colour"
    if all(a.color == b.color for a, b in changed):
        return "shape"
    return "slot"


def attention_to_regions(module, pairs) -> list[float]:
    """Per layer, the mean share of attention the caption's positions give to the regions, for ``pairs``: each
    layer's attention recomputed from its own input and the mask the module passed it (late fusion's mask, the
    cross-modal bias)."""
    layers = module.backbone.encoder.layer
    inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def capture(index: int):
        def hook(_, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            inputs[index] = (hidden, kwargs.get("attention_mask", args[1] if len(args) > 1 else None))

        return hook

    hooks = [
        layer.attention.self.register_forward_pre_hook(capture(index), with_kwargs=True)
        for index, layer in enumerate(layers)
    ]
    try:
        features = module.preprocess(pairs)
        module(features)
    finally:
        for hook in hooks:
            hook.remove()
    is_text = torch.cat([features["text_mask"], torch.zeros_like(features["region_mask"])], 1).bool()
    valid = torch.cat([features["text_mask"], features["region_mask"]], 1).bool()
    heads = module.backbone.config.num_attention_heads
    shares = []
    for index, layer in enumerate(layers):
        hidden, mask = inputs[index]
        batch, length, width = hidden.shape
        query, key = (
            projection(hidden).view(batch, length, heads, -1).transpose(1, 2)
            for projection in (layer.attention.self.query, layer.attention.self.key)
        )
        logits = query @ key.transpose(-1, -2) / (width // heads) ** 0.5
        if mask is not None:
            # A boolean mask marks what may be attended to; a float one is added (0 or the dtype's minimum, + bias).
            logits = (
                logits.masked_fill(~mask, torch.finfo(logits.dtype).min) if mask.dtype == torch.bool else logits + mask
            )
        to_regions = (logits.softmax(-1) * (~is_text)[:, None, None, :]).sum(-1)  # [B, heads, L]
        caption = (is_text & valid)[:, None, :].expand_as(to_regions)
        shares.append(float(to_regions[caption].mean()))
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved joint model (e.g. the demo's output/model)")
    parser.add_argument("--seed", type=int, default=0, help="the demo's seed (held-out scenes: seed + 1)")
    parser.add_argument("--train-images", type=int, default=1000, help="training scenes (excluded from held-out)")
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--family-size", type=int, default=4)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    families = {"families": "binding", "family_size": args.family_size}
    train = SyntheticScenes(args.train_images, captions_per_image=5, seed=args.seed, **families)
    held_out = SyntheticScenes(args.held_out, 1, seed=args.seed + 1, exclude=train.signatures, **families)
    bi_encoder, cross_encoder = MMSentenceTransformer(args.model), MMCrossEncoder(args.model)
    regions = cross_encoder[0].featurizer.featurize(held_out.images)
    images = bi_encoder.encode(regions, convert_to_tensor=True, normalize_embeddings=True)
    captions = bi_encoder.encode(held_out.captions, convert_to_tensor=True, normalize_embeddings=True)

    comparisons, pairs = [], []
    for i, scene in enumerate(held_out.scenes):
        for j, other in enumerate(held_out.scenes):
            if j != i and other.family == scene.family:
                comparisons.append((i, j, exchange_kind(scene, other)))
                pairs += [(held_out.captions[i], regions[i]), (held_out.captions[i], regions[j])]
    logits = cross_encoder.predict(pairs, convert_to_tensor=True, activation_fn=torch.nn.Identity())
    logits = logits.view(-1, 2)
    table: dict[str, list[int]] = {}
    for (i, j, kind), (own, other) in zip(comparisons, logits.tolist()):
        counts = table.setdefault(kind, [0, 0, 0])
        counts[0] += int(float(captions[i] @ images[i]) > float(captions[i] @ images[j]))
        counts[1] += int(own > other)
        counts[2] += 1
    print(f"# {args.model}: {args.held_out} held-out binding scenes (seed {args.seed + 1})")
    print("| exchanged | pairs | BE prefers own image | CE prefers own image |")
    print("|---|---:|---:|---:|")
    for kind, (be, ce, count) in sorted(table.items()):
        print(f"| {kind} | {count} | {100 * be / count:.1f} % | {100 * ce / count:.1f} % |")
    shares = attention_to_regions(cross_encoder[0], [(held_out.captions[i], regions[i]) for i in range(40)])
    print()
    print("Share of the caption's attention on the regions, per layer (40 pairs; 0 = the layer reads apart):")
    print("  " + ", ".join(f"layer {index}: {share:.3f}" for index, share in enumerate(shares)))


if __name__ == "__main__":
    main()
