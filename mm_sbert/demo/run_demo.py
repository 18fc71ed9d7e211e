"""The whole demo in one call: generate scenes, train a bi-encoder and a cross-encoder from it, compare BE, CE and
Coop, report."""

from __future__ import annotations

import os
import time
from typing import Any

from mm_sbert.demo.recipe import DEFAULT_REGIONS, DEFAULTS, FAMILIES, MODULE_KWARGS, NOTES, QUICK, REGIONS, TRAINING
from mm_sbert.errors import InvalidInputError

# The demo's output folder, for the ownership rule (mm_sbert.storage.ownership): what the demo writes there, and
# where the commands it suggests write (`mm-sbert index ... --output <dir>/index`, `search --html <dir>/search.html`).
DEMO_KIND = "demo-output"
DEMO_PATTERNS = (
    "held_out_images",
    "demo_results.json",
    "demo_results.png",
    "model",
    "cross_encoder",
    "index",
    "search.html",
    ".*.lock",
    ".*.tmp-*",
)
DEMO_CHILDREN = {
    "held_out_images": "synthetic-scenes",
    "model": "model",
    "cross_encoder": "model",
    "index": "embedding-index",
    "search.html": "search-page",
}


def demo_settings(quick: bool = False, **overrides: int | None) -> dict[str, int]:
    """The demo's sizes (:data:`DEFAULTS`, or :data:`QUICK` for a smoke run) with the ``overrides`` that are set."""
    settings = dict(QUICK if quick else DEFAULTS)
    unknown = set(overrides) - set(settings)
    if unknown:
        raise InvalidInputError(f"Unknown demo settings {sorted(unknown)}; expected some of {sorted(settings)}")
    settings.update({key: value for key, value in overrides.items() if value is not None})
    return settings


def run_demo(
    output_dir: str,
    settings: dict[str, int],
    seed: int = 0,
    regions: str = DEFAULT_REGIONS,
    top_k: int = 20,
    save_model: bool = True,
    families: str = FAMILIES,
) -> dict[str, Any]:
    """Fine-tune all-MiniLM-L6-v2 + a colour featurizer on generated scenes into a bi-encoder, then a cross-encoder
    started from it (the paper's separate setting), and compare BE, CE and Coop retrieval.

    Prints its progress, the comparison table, the verdict and the notes of :mod:`mm_sbert.demo.recipe`; writes
    ``held_out_images/``, ``demo_results.json``, ``demo_results.png`` and (``save_model``) ``model/`` (the
    bi-encoder) and ``cross_encoder/`` into ``output_dir``.

    Args:
        output_dir: where everything goes (created if needed).
        settings: the sizes, see :func:`demo_settings`.
        seed: seed of the scenes (held-out scenes: ``seed + 1``) and of training.
        regions: a key of :data:`~mm_sbert.demo.recipe.REGIONS`.
        top_k: bi-encoder candidates the cross-encoder reranks in Coop.
        save_model: save the fine-tuned bi-encoder and cross-encoder.
        families: what tells a family's scenes apart (``families`` of :class:`~mm_sbert.demo.SyntheticScenes`).

    Returns:
        The content of ``demo_results.json``.

    Raises:
        UnsafeOutputError: ``output_dir`` is a non-empty folder the demo did not write (or mm_sbert's folder of another
            kind), refused before any work.
        OutputInUseError: another demo is writing ``output_dir``.
    """
    from mm_sbert.storage import check_output_path, exclusive_output, mark_owned_folder

    target = check_output_path(output_dir, DEMO_KIND, folder=True, what="The demo's output folder")
    with exclusive_output(target, what="The demo's output folder"):
        target.mkdir(parents=True, exist_ok=True)
        mark_owned_folder(target, DEMO_KIND, patterns=DEMO_PATTERNS, children=DEMO_CHILDREN)
        return _run_demo(str(target), settings, seed, regions, top_k, save_model, families)


def _run_demo(
    output_dir: str, settings: dict[str, int], seed: int, regions: str, top_k: int, save_model: bool, families: str
) -> dict[str, Any]:
    import torch

    from mm_sbert.demo.recipe import (
        build_demo_model,
        cross_encoder_chance_loss,
        regions_featurizer,
        train_separate,
    )
    from mm_sbert.demo.report import measure_latency, query_ranks, real_photos_outcome, save_plot, verdict
    from mm_sbert.demo.synthetic_scenes import SyntheticScenes
    from mm_sbert.evaluation.results_table import evaluate_modes, format_table
    from mm_sbert.models.views import to_cross_encoder
    from mm_sbert.storage import atomic_write_json

    s = settings
    os.makedirs(output_dir, exist_ok=True)
    torch.manual_seed(seed)
    started = time.perf_counter()

    differ = {"details": "in one detail", "binding": "only in which colour, shape or slot belongs to which object"}
    print(
        f"[1/5] Generating {s['train_images']} training and {s['eval_images']} held-out scenes (seed {seed}): "
        f"families of {s['family_size']} scenes that differ {differ[families]}"
    )
    kind = families
    families = {"family_size": s["family_size"], "families": kind}
    train = SyntheticScenes(s["train_images"], captions_per_image=5, seed=seed, **families)
    held_out = SyntheticScenes(
        s["eval_images"], captions_per_image=s["eval_captions"], seed=seed + 1, exclude=train.signatures, **families
    )
    held_out_paths = held_out.save_images(os.path.join(output_dir, "held_out_images"))

    print(
        f"[2/5] Building a bi-encoder from all-MiniLM-L6-v2 (offline weights, first {s['layers']} layers), image "
        f"regions: {REGIONS[regions]}"
    )
    model = build_demo_model(
        train.image_size, s["layers"], featurizer=regions_featurizer(regions, train.image_size), **MODULE_KWARGS
    )
    eval_regions = model[0].featurizer.featurize(held_out.images)

    stages = {
        "bi_encoder": f"[3/5] Training the bi-encoder: {s['bi_encoder_steps']} steps, {s['batch_size']} captions per "
        "batch",
        "cross_encoder": f"[4/5] Training a cross-encoder started from the bi-encoder: {s['cross_encoder_steps']} "
        f"steps on lists of look-alikes (a caption with its scene and {TRAINING['negatives_per_positive']} others of "
        "its batch)",
    }
    train_start = time.perf_counter()
    cross_encoder_model, history = train_separate(
        model,
        train,
        s["bi_encoder_steps"],
        s["cross_encoder_steps"],
        s["batch_size"],
        seed,
        on_stage=lambda stage: print(stages[stage]),
    )
    train_seconds = time.perf_counter() - train_start
    cross_encoder = to_cross_encoder(cross_encoder_model)

    print(f"[5/5] Evaluating BE, CE and Coop (k={top_k}) on {s['eval_images']} held-out scenes")
    metrics = evaluate_modes(
        model,
        eval_regions,
        held_out.captions,
        held_out.caption_image_ids,
        top_k=top_k,
        recall_at=range(1, 21),
        cross_encoder=cross_encoder,
    )
    latency = measure_latency(model, eval_regions, held_out.captions, metrics, top_k, cross_encoder)
    try_it = held_out.captions[0]
    ranks = query_ranks(model, eval_regions, try_it, held_out.caption_image_ids[0], top_k, cross_encoder)

    print()
    print(f"Held-out retrieval: {s['eval_images']} images, {len(held_out.captions)} captions (recall in %)")
    print(format_table(metrics, top_k))
    print()
    ce_losses = [loss for _, objective, loss in history if objective == "cross_encoder"]
    ce_chance = cross_encoder_chance_loss(listwise=True, **TRAINING)
    for line in verdict(metrics, ce_losses[-10:], ce_chance, latency):
        print(line)
    print()
    for line in NOTES:
        print(line.format(regions=REGIONS[regions], **s, **TRAINING))

    plot_path = os.path.join(output_dir, "demo_results.png")
    save_plot(plot_path, metrics, latency, top_k)
    results = {
        "settings": {
            "seed": seed,
            **{key: s[key] for key in DEFAULTS},
            "families": kind,
            "regions": regions,
            **TRAINING,
            "top_k": top_k,
            "threads": torch.get_num_threads(),
        },
        "metrics": metrics,
        "latency_per_query_seconds": latency,
        "try_it": {"caption": try_it, "image": held_out_paths[0], "ranks": ranks},
        "train_seconds": train_seconds,
        "objective_steps": {
            objective: sum(1 for _, name, _ in history if name == objective)
            for objective in ("bi_encoder", "cross_encoder")
        },
        "final_cross_encoder_loss": sum(ce_losses[-10:]) / max(len(ce_losses[-10:]), 1),
        "cross_encoder_chance_loss": ce_chance,
        "total_seconds": time.perf_counter() - started,
    }
    atomic_write_json(os.path.join(output_dir, "demo_results.json"), results, indent=2)
    print(f"\nPlot: {plot_path}")
    print(
        f'"{try_it}": its scene ({os.path.basename(held_out_paths[0])}) ranks {ranks["coop"]} with Coop, '
        f"{ranks['be']} with the bi-encoder alone."
    )
    if save_model:
        model_path = os.path.join(output_dir, "model")
        cross_encoder_path = os.path.join(output_dir, "cross_encoder")
        model.save(model_path)
        cross_encoder_model.save(cross_encoder_path)
        print(f"Bi-encoder: {model_path}  (loads as MMSentenceTransformer)")
        print(f"Cross-encoder: {cross_encoder_path}  (loads as MMCrossEncoder)")
        index_path = os.path.join(output_dir, "index")
        print("Try it:")
        print(f"  mm-sbert index {os.path.dirname(held_out_paths[0])} --model {model_path} --output {index_path}")
        print(
            f'  mm-sbert search {index_path} "{try_it}" --cross-encoder {cross_encoder_path} '
            f"--html {os.path.join(output_dir, 'search.html')}"
        )
    print(f"Done in {results['total_seconds']:.0f} s (training {train_seconds:.0f} s).")
    print()
    for line in real_photos_outcome():
        print(line)
    return results
