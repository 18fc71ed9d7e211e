from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import torch
from sentence_transformers.base.sampler import DefaultBatchSampler


class GroupedBatchSampler(DefaultBatchSampler):
    """Batches made of whole groups of related images, so that in-batch negatives are hard ones.

    A *group* is a set of images that look alike and differ in details (the families of
    :class:`~mm_sbert.data.SyntheticScenes`, near-duplicate clusters of a real corpus). Random batches rarely hold
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
