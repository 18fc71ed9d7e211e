from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import torch
from sentence_transformers.base.sampler import DefaultBatchSampler
from torch import Tensor


class GroupedBatchSampler(DefaultBatchSampler):
    """Batches made of whole groups of related images, so that in-batch negatives are hard ones.

    A *group* is a set of images that look alike and differ in details (the families of
    :class:`~mm_sbert.demo.SyntheticScenes`, near-duplicate clusters of a real corpus). Random batches rarely hold
    two images of one group, so in-batch negatives (the bi-encoder's softmax, the cross-encoder's swapped pairs)
    are almost always easy. This sampler puts whole groups into a batch: each group contributes one caption of
    each of its images (a *unit*), and a batch never holds two units of one group, so every image appears at
    most once per batch (no false negatives for losses that do not read the ``label`` column).

    Groups take turns giving a unit until every caption was used once per epoch; the order of groups, of the units
    and of the captions inside them is shuffled per epoch (``seed + epoch``). A unit that does not fit into the rest
    of a batch is split: its remainder starts a later batch.

    Pass it to the training arguments with the groups bound, e.g.
    ``batch_sampler=functools.partial(GroupedBatchSampler, groups=families_per_row)``.

    Args:
        dataset: the training dataset (rows = (caption, image) pairs).
        batch_size / drop_last / valid_label_columns / generator / seed: as for the host's samplers; the first
            of ``valid_label_columns`` found in the dataset gives each row's image id.
        groups: the group of each row, ``len(dataset)`` hashable values.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        *,
        groups: Sequence[Hashable],
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        if len(groups) != len(dataset):
            raise ValueError(f"GroupedBatchSampler got {len(groups)} groups for a dataset of {len(dataset)} rows")
        labels = self._image_labels(dataset, valid_label_columns)
        # group -> image -> rows of that image
        self.rows_by_group: dict[Hashable, dict[Hashable, list[int]]] = defaultdict(lambda: defaultdict(list))
        for row, (group, label) in enumerate(zip(groups, labels)):
            self.rows_by_group[group][label].append(row)
        self.num_rows = len(dataset)

    @staticmethod
    def _image_labels(dataset: Any, valid_label_columns: list[str] | None) -> list[Hashable]:
        for column in valid_label_columns or []:
            if column in dataset.column_names:
                return list(dataset[column])
        # Without an image id column every row is its own image.
        return list(range(len(dataset)))

    def _units(self) -> list[tuple[Hashable, list[int]]]:
        """This epoch's units: ``(group, rows)`` with one row per image of the group, groups taking turns.

        Round ``r`` holds the ``r``-th unit of every group that has one, in a random group order, so consecutive
        units come from different groups and the epoch does not end on a run of one group's units.
        """
        units_by_group = []
        for group, images in self.rows_by_group.items():
            queues = [self._shuffled(rows) for rows in images.values()]
            units = []
            while any(queues):
                units.append((group, self._shuffled([queue.pop() for queue in queues if queue])))
            units_by_group.append(units)
        ordered = []
        for round_index in range(max(len(units) for units in units_by_group)):
            in_round = [units[round_index] for units in units_by_group if round_index < len(units)]
            ordered += self._shuffled(in_round)
        return ordered

    def _shuffled(self, items: list) -> list:
        return [items[i] for i in torch.randperm(len(items), generator=self.generator).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        if self.generator is not None and self.seed is not None:
            self.generator.manual_seed(self.seed + self.epoch)
        pending = self._units()
        while pending:
            batch: list[int] = []
            groups_in_batch: set[Hashable] = set()
            index = 0
            while len(batch) < self.batch_size and index < len(pending):
                group, rows = pending[index]
                if group in groups_in_batch:
                    index += 1
                    continue
                space = self.batch_size - len(batch)
                batch += rows[:space]
                groups_in_batch.add(group)
                if len(rows) > space:
                    pending[index] = (group, rows[space:])
                    index += 1
                else:
                    del pending[index]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        # Exact for groups that fill batches evenly; the loader only uses it for progress and schedules.
        if self.drop_last:
            return self.num_rows // self.batch_size
        return (self.num_rows + self.batch_size - 1) // self.batch_size


def neighbour_groups(embeddings: Tensor, group_size: int, seed: int = 0) -> list[int]:
    """A group id per embedding, grouping each item with its nearest neighbours by cosine similarity.

    The groups a :class:`GroupedBatchSampler` needs for a real corpus, whose images come without families: with the
    bi-encoder's image embeddings, a group holds images the bi-encoder confuses, so the in-batch negatives of a
    batch of groups are as hard as the bi-encoder's top candidates over the whole corpus, which a cross-encoder
    reranks later (random batches hold mostly easy ones).

    Items are visited in a random order (``seed``); an item not yet grouped starts a group and takes its most similar
    items not yet grouped until the group has ``group_size`` items. Every item is in exactly one group; the last
    groups may be smaller or looser, since their neighbours were taken.

    Args:
        embeddings: ``[items, dim]`` embeddings (normalised here).
        group_size: items per group (>= 2).
        seed: seed of the visiting order.

    Returns:
        ``groups[i]``: the group id (0, 1, ...) of item ``i``.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a group of one has no look-alike), got {group_size}")
    if embeddings.dim() != 2 or embeddings.size(0) == 0:
        raise ValueError(f"embeddings must be a non-empty [items, dim] matrix, got shape {tuple(embeddings.shape)}")
    embeddings = torch.nn.functional.normalize(embeddings.detach().float().cpu(), dim=1)
    if not torch.isfinite(embeddings).all():
        raise ValueError("embeddings hold NaN or infinite values; groups from them would be arbitrary")
    num_items = embeddings.size(0)
    groups = [-1] * num_items
    generator = torch.Generator().manual_seed(seed)
    next_group = 0
    for start in torch.randperm(num_items, generator=generator).tolist():
        if groups[start] != -1:
            continue
        groups[start] = next_group
        members = 1
        similarities = embeddings @ embeddings[start]
        for item in similarities.argsort(descending=True).tolist():
            if members == group_size:
                break
            if groups[item] == -1:
                groups[item] = next_group
                members += 1
        next_group += 1
    return groups


def image_neighbour_groups(
    model: Any,
    dataset: Any,
    group_size: int,
    seed: int = 0,
    label_column: str = "label",
    image_column: str = "image",
    batch_size: int = 256,
    show_progress_bar: bool | None = None,
) -> list[int]:
    """The group of every row of a training dataset: its image's :func:`neighbour_groups` group under ``model``.

    Each distinct image (``label_column``) is embedded once with the model's bi-encoder view, as the dataset yields
    it (a feature store's regions when a :class:`~mm_sbert.data.StoreImageResolver` is installed, else the image
    itself), and grouped with its nearest neighbours. Pass the result to :class:`GroupedBatchSampler`.

    Args:
        model: an :class:`~mm_sbert.MMSentenceTransformer` (the bi-encoder that ranks the candidates to rerank).
        dataset: rows with an image and its id; ``datasets.Dataset``.
        group_size: images per group.
        seed: seed of the grouping order.
        label_column / image_column: the columns holding the image id and the image.
        batch_size: images embedded per forward pass.
        show_progress_bar: as for ``model.encode``.

    Returns:
        ``groups[row]`` for every row of ``dataset``.
    """
    from tqdm.auto import tqdm

    for column in (label_column, image_column):
        if column not in dataset.column_names:
            raise ValueError(f"The dataset has no column {column!r}; its columns are {dataset.column_names}")
    labels = list(dataset.with_format(None).select_columns([label_column])[label_column])
    first_row = {label: row for row, label in reversed(list(enumerate(labels)))}
    rows = sorted(first_row.values())
    if show_progress_bar is None:
        show_progress_bar = len(rows) > batch_size
    chunks = []
    for start in tqdm(
        range(0, len(rows), batch_size), desc="Embedding images to group", disable=not show_progress_bar
    ):
        images = dataset.select(rows[start : start + batch_size])[image_column]
        chunks.append(model.encode(images, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False))
    group_of_image = neighbour_groups(torch.cat(chunks), group_size, seed)
    group_of_label = {labels[row]: group_of_image[index] for index, row in enumerate(rows)}
    return [group_of_label[label] for label in labels]
