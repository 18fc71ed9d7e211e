from __future__ import annotations

import functools
from collections import Counter

import pytest
import torch
from datasets import Dataset
from sentence_transformers.base.sampler import DefaultBatchSampler

from mm_sbert.training import GroupedBatchSampler, image_neighbour_groups, neighbour_groups


def corpus(num_groups: int = 6, images_per_group: int = 4, captions_per_image: int = 5):
    """Rows (caption, image id) image by image, and the group of each row."""
    labels = [image for image in range(num_groups * images_per_group) for _ in range(captions_per_image)]
    dataset = Dataset.from_dict({"caption": [f"caption {row}" for row in range(len(labels))], "label": labels})
    groups = [label // images_per_group for label in labels]
    return dataset, groups


def sampler(dataset, groups, batch_size=8, drop_last=False, seed=0):
    return GroupedBatchSampler(
        dataset,
        batch_size=batch_size,
        drop_last=drop_last,
        valid_label_columns=["label"],
        generator=torch.Generator(),
        seed=seed,
        groups=groups,
    )


def test_every_row_comes_once_per_epoch_and_no_batch_shows_an_image_twice():
    dataset, groups = corpus()
    batches = list(sampler(dataset, groups))
    rows = [row for batch in batches for row in batch]
    assert sorted(rows) == list(range(len(dataset)))
    labels = dataset["label"]
    for batch in batches:
        assert len({labels[row] for row in batch}) == len(batch)


def test_batches_are_made_of_whole_groups():
    dataset, groups = corpus(num_groups=6, images_per_group=4)
    batches = list(sampler(dataset, groups, batch_size=8))
    labels = dataset["label"]
    # 4 images per group, 8 rows per batch: every batch holds all images of exactly two groups.
    for batch in batches:
        per_group = Counter(groups[row] for row in batch)
        assert len(per_group) == 2 and set(per_group.values()) == {4}
        assert {labels[row] for row in batch} == {
            image for group in per_group for image in range(4 * group, 4 * group + 4)
        }


def test_random_batches_rarely_hold_a_whole_group_but_grouped_ones_always_do():
    dataset, groups = corpus(num_groups=25, images_per_group=4)
    random_batches = list(DefaultBatchSampler(torch.utils.data.RandomSampler(dataset), batch_size=8, drop_last=False))

    def share_of_rows_with_a_group_mate(batches):
        mates = [sum(groups[other] == groups[row] for other in batch) - 1 for batch in batches for row in batch]
        return sum(mate > 0 for mate in mates) / len(mates)

    assert share_of_rows_with_a_group_mate(list(sampler(dataset, groups))) == 1.0
    assert share_of_rows_with_a_group_mate(random_batches) < 0.5


def test_order_depends_on_seed_and_epoch_only():
    dataset, groups = corpus()
    first, again = sampler(dataset, groups, seed=3), sampler(dataset, groups, seed=3)
    assert list(first) == list(again)
    epoch_0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch_0
    assert list(sampler(dataset, groups, seed=4)) != epoch_0


def test_uneven_groups_are_split_across_batches_without_losing_rows():
    dataset, groups = corpus(num_groups=5, images_per_group=3, captions_per_image=2)
    batches = list(sampler(dataset, groups, batch_size=4))
    assert sorted(row for batch in batches for row in batch) == list(range(len(dataset)))
    assert all(len(batch) <= 4 for batch in batches)
    kept = list(sampler(dataset, groups, batch_size=4, drop_last=True))
    assert all(len(batch) == 4 for batch in kept)


def test_without_a_label_column_every_row_is_its_own_image():
    dataset, groups = corpus()
    dataset = dataset.remove_columns("label")
    batches = list(
        GroupedBatchSampler(dataset, batch_size=8, drop_last=False, valid_label_columns=["label"], groups=groups)
    )
    assert sorted(row for batch in batches for row in batch) == list(range(len(dataset)))


def test_groups_must_match_the_dataset():
    dataset, groups = corpus()
    with pytest.raises(ValueError, match="groups for a dataset of"):
        sampler(dataset, groups[:-1])


def test_can_be_bound_with_partial_like_the_host_expects():
    dataset, groups = corpus()
    factory = functools.partial(GroupedBatchSampler, groups=groups)
    built = factory(dataset, batch_size=8, drop_last=False, valid_label_columns=["label"], generator=None, seed=0)
    assert sorted(row for batch in built for row in batch) == list(range(len(dataset)))


def clustered_embeddings(num_clusters: int = 6, per_cluster: int = 4, dim: int = 16, seed: int = 0):
    """Clusters of near-identical vectors around orthogonal centres, shuffled; the cluster of every row."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:num_clusters] * 10
    clusters = torch.arange(num_clusters).repeat_interleave(per_cluster)
    order = torch.randperm(len(clusters), generator=generator)
    clusters = clusters[order]
    embeddings = centres[clusters] + 0.1 * torch.randn(len(clusters), dim, generator=generator)
    return embeddings, clusters.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neighbour_groups_put_each_item_with_its_nearest_neighbours(seed):
    embeddings, clusters = clustered_embeddings(seed=seed)
    groups = neighbour_groups(embeddings, group_size=4, seed=seed)
    # Every group is exactly one cluster: the same partition up to the group ids.
    assert len(set(groups)) == 6
    assert {(group, cluster) for group, cluster in zip(groups, clusters)} == set(
        {group: cluster for group, cluster in zip(groups, clusters)}.items()
    )
    assert sorted(Counter(groups).values()) == [4] * 6


def test_neighbour_groups_cover_every_item_once_when_sizes_do_not_divide():
    embeddings, _ = clustered_embeddings(num_clusters=5, per_cluster=3)
    groups = neighbour_groups(embeddings, group_size=4)
    assert len(groups) == 15 and min(groups) == 0
    sizes = Counter(groups)
    assert sum(sizes.values()) == 15 and max(sizes.values()) == 4
    assert sorted(sizes) == list(range(len(sizes)))


def test_neighbour_groups_refuse_what_they_cannot_group():
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        neighbour_groups(torch.randn(4, 3), group_size=1)
    with pytest.raises(ValueError, match=r"non-empty \[items, dim\] matrix, got shape \(4,\)"):
        neighbour_groups(torch.randn(4), group_size=2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        neighbour_groups(torch.tensor([[1.0, 0.0], [float("nan"), 1.0]]), group_size=2)


def test_image_neighbour_groups_group_the_images_the_model_embeds_alike():
    from conftest import build_views

    from mm_sbert.demo import color_swatches

    model, _ = build_views("bert")
    corpus = color_swatches(num_images=8, captions_per_image=3)
    dataset = corpus.to_dataset()
    groups = image_neighbour_groups(model, dataset, group_size=2, seed=3)
    labels = dataset["label"]
    # All captions of an image share its group; the groups are those of the model's image embeddings.
    assert len(groups) == len(dataset)
    assert all(groups[row] == groups[labels.index(label)] for row, label in enumerate(labels))
    reference = neighbour_groups(model.encode(corpus.images, convert_to_tensor=True), group_size=2, seed=3)
    assert [groups[labels.index(image_id)] for image_id in corpus.image_ids] == reference
    with pytest.raises(ValueError, match="no column 'label'"):
        image_neighbour_groups(model, dataset.remove_columns("label"), group_size=2)
