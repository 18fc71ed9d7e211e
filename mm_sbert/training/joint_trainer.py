from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments
from torch import nn

from mm_sbert.models.views import multimodal_module
from mm_sbert.training.alternating_batch_sampler import AlternatingBatchSampler
from mm_sbert.training.training_args import paper_training_args

BI_ENCODER = "bi_encoder"
CROSS_ENCODER = "cross_encoder"


class JointTrainer(SentenceTransformerTrainer):
    """The host trainer set up for the paper's regimes: bi-encoder, cross-encoder, or both alternating.

    Give it one ``(caption, image, label)`` dataset and the loss(es) to train:

    - ``bi_encoder_loss`` only: the bi-encoder regime (e.g. :class:`~mm_sbert.losses.HardNegativeTripletLoss`, or
      the host's ``MultipleNegativesRankingLoss`` as the InfoNCE baseline);
    - ``cross_encoder_loss`` only: the cross-encoder regime (:class:`~mm_sbert.losses.CrossEncoderBCELoss`);
    - both: the joint model. The dataset goes into a ``DatasetDict`` once per objective step of a round
      (``{"bi_encoder": ..., "cross_encoder": ...}``, each its own ``Dataset`` object) with one loss per entry, and
      a round-robin sampler alternates them: step 0 bi-encoder, step 1 cross-encoder, ...
      ``steps_ratio=(2, 1)`` makes each round two bi-encoder steps and one cross-encoder step. Every step is one
      forward, backward and optimizer step on the shared weights, like the reference's ``objectives_sequence``.

    Under DDP the host's ``ROUND_ROBIN`` would give each rank one objective only (batch ``i`` goes to rank
    ``i % world_size``); :class:`AlternatingBatchSampler` emits ``world_size`` batches per objective so that all
    ranks run the same objective at each step.

    All three are the host's code path (optimizer, schedule, checkpoints, ``resume_from_checkpoint``, DDP under
    ``torchrun`` / ``accelerate launch``). ``model`` is the bi-encoder view; its ``MultimodalTransformer`` holds
    the cross-encoder head, so each checkpoint loads as both ``MMSentenceTransformer(path)`` and
    ``MMCrossEncoder(path)``. Besides the host's ``loss``, every log line carries ``bi_encoder_loss`` and / or
    ``cross_encoder_loss`` (the mean of that objective's steps since the last log), and
    :attr:`objective_history` keeps ``(step, objective, loss)`` of every training step of this process. Each
    objective that takes a step adds its view to the module's ``trained_views``, which is saved with the model, so
    the score head of a model trained as a bi-encoder only is known to be untrained. Data that does not fill one
    batch is refused (the last incomplete batch is dropped, so no step would run).

    Args:
        model: the :class:`~mm_sbert.MMSentenceTransformer` to train.
        train_dataset: rows ``caption``, ``image``, ``label`` (see :mod:`mm_sbert.data`).
        bi_encoder_loss: the bi-encoder objective, or None.
        cross_encoder_loss: the cross-encoder objective, or None.
        steps_ratio: bi-encoder : cross-encoder steps per round in joint training.
        args: training arguments; default :func:`~mm_sbert.training.paper_training_args` for the regime. Joint
            training always uses :class:`AlternatingBatchSampler` (``multi_dataset_batch_sampler`` is not used).
        batch_samplers: a batch sampler per objective (``"bi_encoder"`` / ``"cross_encoder"``), as a callable taking
            the host's batch sampler arguments (e.g. ``{"cross_encoder": functools.partial(GroupedBatchSampler,
            groups=...)}`` for cross-encoder batches of look-alike images); other objectives use
            ``args.batch_sampler``.
        trainer_kwargs: anything else the host trainer takes (``evaluator``, ``callbacks``, ``eval_dataset``, ...);
            a plain ``eval_dataset`` is evaluated with every objective's loss.

    Example:
        >>> model = MMSentenceTransformer.from_backbone("bert-base-uncased", featurizer=..., region_feature_dim=...)
        >>> trainer = JointTrainer(
        ...     model,
        ...     train_dataset=ImageCaptionCorpus.from_coco_json("captions_train2017.json").to_dataset(),
        ...     bi_encoder_loss=HardNegativeTripletLoss(model, margin=0.1),
        ...     cross_encoder_loss=CrossEncoderBCELoss(model),
        ...     args=paper_training_args("out/joint", "joint"),
        ... )
        >>> trainer.train()
    """

    def __init__(
        self,
        model: Any,
        train_dataset: Any,
        bi_encoder_loss: nn.Module | None = None,
        cross_encoder_loss: nn.Module | None = None,
        steps_ratio: tuple[int, int] = (1, 1),
        args: SentenceTransformerTrainingArguments | None = None,
        batch_samplers: dict[str, Callable[..., Any]] | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        objectives = {BI_ENCODER: bi_encoder_loss, CROSS_ENCODER: cross_encoder_loss}
        objectives = {name: loss for name, loss in objectives.items() if loss is not None}
        if not objectives:
            raise ValueError("JointTrainer needs a bi_encoder_loss, a cross_encoder_loss, or both")
        if "loss" in trainer_kwargs:
            raise ValueError("Pass the objectives as bi_encoder_loss / cross_encoder_loss, not loss=")
        if hasattr(train_dataset, "keys"):
            raise ValueError(
                "JointTrainer takes one Dataset with the columns caption, image, label and builds the per-objective "
                "DatasetDict itself; pass a datasets.Dataset, not a DatasetDict"
            )
        if len(steps_ratio) != 2 or min(steps_ratio) < 1:
            raise ValueError(f"steps_ratio must be two positive ints (bi-encoder, cross-encoder), got {steps_ratio}")
        regime = next(iter(objectives)) if len(objectives) == 1 else "joint"
        if args is None:
            args = paper_training_args("mm_sbert_output", regime)
        batch = args.per_device_train_batch_size * max(1, args.world_size)
        if args.dataloader_drop_last and len(train_dataset) < batch:
            # Every batch would be dropped as incomplete: the run would take no step and save the start model.
            raise ValueError(
                f"The training data holds {len(train_dataset)} pairs, fewer than one batch of {batch}, so no training "
                f"step could run; use a batch size of at most {len(train_dataset)} or more data"
            )

        unknown = set(batch_samplers or {}) - set(objectives)
        if unknown:
            raise ValueError(
                f"batch_samplers has entries {sorted(unknown)} for objectives this trainer does not train"
            )
        self.regime = regime
        self.objective_batch_samplers = dict(batch_samplers or {})
        self.objective_history: list[tuple[int, str, float]] = []
        self._pending_losses: dict[str, list[torch.Tensor]] = defaultdict(list)

        if len(objectives) == 1:
            # One objective: the host's plain single-dataset path.
            ((objective, loss),) = objectives.items()
            self._objective_of_dataset: dict[str | None, str] = {None: objective}
            super().__init__(model=model, args=args, train_dataset=train_dataset, loss=loss, **trainer_kwargs)
            return

        repeats = dict(zip((BI_ENCODER, CROSS_ENCODER), steps_ratio))
        datasets, losses = {}, {}
        self._objective_of_dataset = {}
        for objective, loss in objectives.items():
            for copy in range(repeats[objective]):
                name = objective if copy == 0 else f"{objective}_{copy}"
                # A fresh Dataset object per entry: the host sets a per-dataset transform in place, so one object
                # twice would label every batch with the last name and break the alternation (and touch ours).
                datasets[name] = train_dataset.select(range(len(train_dataset)))
                losses[name] = loss
                self._objective_of_dataset[name] = objective
        from datasets import DatasetDict

        eval_dataset = trainer_kwargs.pop("eval_dataset", None)
        if eval_dataset is not None and not hasattr(eval_dataset, "keys"):
            # The host wants one evaluation dataset per loss; evaluate each objective on the same rows.
            eval_dataset = DatasetDict({name: eval_dataset.select(range(len(eval_dataset))) for name in datasets})
        super().__init__(
            model=model,
            args=args,
            train_dataset=DatasetDict(datasets),
            eval_dataset=eval_dataset,
            loss=losses,
            **trainer_kwargs,
        )

    def get_batch_sampler(self, dataset: Any, **kwargs: Any) -> Any:
        factory = self.objective_batch_samplers.get(self._objective_of(dataset))
        if factory is not None:
            return factory(dataset, **kwargs)
        return super().get_batch_sampler(dataset, **kwargs)

    def _objective_of(self, dataset: Any) -> str | None:
        """The objective whose training rows ``dataset`` is (the host passes the per-objective datasets); None for
        evaluation datasets, which keep the host's sampler."""
        if None in self._objective_of_dataset:
            return self._objective_of_dataset[None] if dataset is self.train_dataset else None
        # Several objectives: the training data is the DatasetDict built in __init__, one entry per objective step.
        for name, candidate in self.train_dataset.items():
            if candidate is dataset:
                return self._objective_of_dataset.get(name)
        return None

    def get_multi_dataset_batch_sampler(
        self, dataset: Any, batch_samplers: list[Any], generator: torch.Generator | None = None, seed: int | None = 0
    ) -> AlternatingBatchSampler:
        # Not the host's ROUND_ROBIN: under DDP it would hand each rank a single objective (see the sampler).
        return AlternatingBatchSampler(dataset, batch_samplers=batch_samplers, generator=generator, seed=seed)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        objective = self._objective_of_dataset.get(inputs.get("dataset_name"))
        output = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if objective is not None and self.model.training:
            self._record_trained(objective)
            loss = (output[0] if return_outputs else output).detach()
            self._pending_losses[objective].append(loss)
            self.objective_history.append((self.state.global_step, objective, loss.item()))
        return output

    def _record_trained(self, objective: str) -> None:
        """Add ``objective``'s view to the module's ``trained_views`` (saved with the model), so a view no objective
        trained is never taken for a trained one (see :func:`~mm_sbert.models.check_view_trained`)."""
        module = multimodal_module(self.model)
        if module is not None and objective not in (module.trained_views or []):
            module.trained_views = sorted({*(module.trained_views or []), objective})

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._pending_losses:
            logs = dict(logs)
            for objective, values in self._pending_losses.items():
                if values:
                    logs[f"{objective}_loss"] = round(torch.stack(values).mean().item(), 4)
            self._pending_losses.clear()
        return super().log(logs, start_time)
