from __future__ import annotations

import functools

import pytest
import torch
from conftest import build_views
from training_helpers import one_torch_thread, swatch_corpus, tiny_args  # noqa: F401 (autouse fixture)
from transformers import TrainerCallback

from mm_sbert import MMCrossEncoder, MMSentenceTransformer
from mm_sbert.losses import CrossEncoderBCELoss, HardNegativeTripletLoss
from mm_sbert.training import GroupedBatchSampler, JointTrainer

BE, CE = "bi_encoder", "cross_encoder"


def make_trainer(output_dir, objectives=(BE, CE), steps_ratio=(1, 1), callbacks=None, **args):
    bi_encoder, _ = build_views("bert", seed=0)
    losses = {}
    if BE in objectives:
        losses["bi_encoder_loss"] = HardNegativeTripletLoss(bi_encoder, margin=0.2)
    if CE in objectives:
        losses["cross_encoder_loss"] = CrossEncoderBCELoss(bi_encoder)
    args.setdefault("max_steps", 6)
    args.setdefault("per_device_train_batch_size", 6)
    trainer = JointTrainer(
        bi_encoder,
        train_dataset=swatch_corpus(num_images=12).to_dataset(),
        steps_ratio=steps_ratio,
        args=tiny_args(output_dir, **args),
        callbacks=callbacks,
        **losses,
    )
    return trainer


class GradientProbe(TrainerCallback):
    """Records, before each optimizer step, which parameter groups got a gradient."""

    def __init__(self):
        self.steps = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        def norm(parameter):
            return 0.0 if parameter.grad is None else parameter.grad.norm().item()

        module = model[0]
        self.steps.append(
            {
                "head": norm(module.classifier.weight),
                "pooler": norm(module.backbone.pooler.dense.weight),
                "encoder": norm(module.backbone.encoder.layer[0].attention.self.query.weight),
                "img_embedding": norm(module.img_embedding.weight),
            }
        )


def test_objectives_alternate_step_by_step_and_both_losses_are_logged(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6, logging_steps=2)
    trainer.train()
    history = trainer.objective_history
    assert [step for step, _, _ in history] == list(range(6))
    assert [objective for _, objective, _ in history] == [BE, CE] * 3
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    for window, entry in enumerate(logs):
        (_, _, be_loss), (_, _, ce_loss) = history[2 * window : 2 * window + 2]
        assert entry["bi_encoder_loss"] == pytest.approx(be_loss, abs=1e-4)
        assert entry["cross_encoder_loss"] == pytest.approx(ce_loss, abs=1e-4)


def test_steps_ratio_repeats_an_objective_within_each_round(tmp_path):
    trainer = make_trainer(tmp_path, steps_ratio=(2, 1), max_steps=6)
    trainer.train()
    assert [objective for _, objective, _ in trainer.objective_history] == [BE, BE, CE] * 2


def test_head_learns_only_from_the_cross_encoder_objective_and_the_transformer_from_both(tmp_path):
    probe = GradientProbe()
    trainer = make_trainer(tmp_path, max_steps=4, callbacks=[probe])
    trainer.train()
    assert len(probe.steps) == 4
    for step, grads in enumerate(probe.steps):
        if step % 2 == 0:  # bi-encoder step
            assert grads["head"] == 0.0 and grads["pooler"] == 0.0
        else:  # cross-encoder step
            assert grads["head"] > 0.0 and grads["pooler"] > 0.0
        assert grads["encoder"] > 0.0 and grads["img_embedding"] > 0.0


@pytest.mark.parametrize("objective", [BE, CE])
def test_single_regimes_use_the_same_trainer_with_one_dataset(tmp_path, objective):
    trainer = make_trainer(tmp_path, objectives=(objective,), max_steps=3)
    assert not hasattr(trainer.train_dataset, "keys")  # the host's plain single-dataset path
    trainer.train()
    assert [name for _, name, _ in trainer.objective_history] == [objective] * 3
    assert f"{objective}_loss" in trainer.state.log_history[0] or trainer.state.log_history[-1]["train_loss"] > 0


def test_checkpoints_load_as_bi_encoder_and_cross_encoder(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    corpus = swatch_corpus(num_images=3, captions_per_image=1)
    pairs = list(zip(corpus.captions, corpus.images))
    model = trainer.model.eval()
    loaded_bi_encoder = MMSentenceTransformer(str(checkpoint), device="cpu")
    loaded_cross_encoder = MMCrossEncoder(str(checkpoint), device="cpu")
    torch.testing.assert_close(
        loaded_bi_encoder.encode(corpus.images, convert_to_tensor=True),
        model.encode(corpus.images, convert_to_tensor=True),
    )
    torch.testing.assert_close(
        torch.as_tensor(loaded_cross_encoder.predict(pairs)),
        torch.as_tensor(model.to_cross_encoder().predict(pairs)),
    )
    # The trained head, not a fresh one, is in the cross-encoder view.
    torch.testing.assert_close(loaded_cross_encoder[0].classifier.weight, model[0].classifier.weight)


class CrashAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_crash_and_resume_continues_the_same_run(tmp_path):
    settings = dict(max_steps=6, save_strategy="steps", save_steps=3)
    uninterrupted = make_trainer(tmp_path / "a", **settings)
    uninterrupted.train()

    crashing = make_trainer(tmp_path / "b", callbacks=[CrashAt(4)], **settings)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.train()
    assert (tmp_path / "b" / "checkpoint-3").is_dir()

    resumed = make_trainer(tmp_path / "b", **settings)
    resumed.train(resume_from_checkpoint=True)  # the newest checkpoint in output_dir
    # The same batches and objectives from step 3 on, and the same final weights.
    assert resumed.objective_history == uninterrupted.objective_history[3:]
    final, reference = resumed.model.state_dict(), uninterrupted.model.state_dict()
    for key in reference:
        torch.testing.assert_close(final[key], reference[key], atol=1e-6, rtol=1e-5, msg=key)


def test_rejects_missing_losses_and_dataset_dicts(tmp_path):
    bi_encoder, _ = build_views("bert")
    dataset = swatch_corpus(num_images=3).to_dataset()
    with pytest.raises(ValueError, match="bi_encoder_loss"):
        JointTrainer(bi_encoder, train_dataset=dataset, args=tiny_args(tmp_path))
    from datasets import DatasetDict

    with pytest.raises(ValueError, match="not a DatasetDict"):
        JointTrainer(
            bi_encoder,
            train_dataset=DatasetDict({"a": dataset}),
            bi_encoder_loss=HardNegativeTripletLoss(bi_encoder),
            args=tiny_args(tmp_path),
        )


def test_plain_eval_dataset_is_scored_by_both_objectives(tmp_path):
    bi_encoder, _ = build_views("bert", seed=0)
    dataset = swatch_corpus(num_images=6).to_dataset()
    trainer = JointTrainer(
        bi_encoder,
        train_dataset=dataset,
        eval_dataset=dataset,
        bi_encoder_loss=HardNegativeTripletLoss(bi_encoder),
        cross_encoder_loss=CrossEncoderBCELoss(bi_encoder),
        args=tiny_args(tmp_path, per_device_eval_batch_size=6),
    )
    metrics = trainer.evaluate()
    assert metrics["eval_bi_encoder_loss"] > 0 and metrics["eval_cross_encoder_loss"] > 0
    assert trainer.objective_history == []  # evaluation steps are not training steps


class LabelSpy(torch.nn.Module):
    """Wraps a loss and records the image ids (labels) of every batch it sees."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss
        self.batches = []

    def forward(self, features, labels):
        self.batches.append(labels.tolist())
        return self.loss(features, labels)


@pytest.mark.parametrize("grouped_objective", [BE, CE])
def test_batch_samplers_apply_to_their_objective_only(tmp_path, grouped_objective):

    bi_encoder, _ = build_views("bert", seed=0)
    dataset = swatch_corpus(num_images=12, captions_per_image=3).to_dataset()
    group_of_image = [image // 3 for image in range(12)]  # 4 groups of 3 images
    spies = {
        BE: LabelSpy(HardNegativeTripletLoss(bi_encoder, margin=0.2)),
        CE: LabelSpy(CrossEncoderBCELoss(bi_encoder)),
    }
    trainer = JointTrainer(
        bi_encoder,
        train_dataset=dataset,
        bi_encoder_loss=spies[BE],
        cross_encoder_loss=spies[CE],
        batch_samplers={
            grouped_objective: functools.partial(
                GroupedBatchSampler, groups=[group_of_image[label] for label in dataset["label"]]
            )
        },
        args=tiny_args(tmp_path, max_steps=12, per_device_train_batch_size=6),
    )
    trainer.train()

    def whole_groups(batch):
        groups = {group_of_image[label] for label in batch}
        return sorted(batch) == sorted(image for image in range(12) if group_of_image[image] in groups)

    assert len(spies[BE].batches) == len(spies[CE].batches) == 6
    assert all(whole_groups(batch) for batch in spies[grouped_objective].batches)
    other = CE if grouped_objective == BE else BE
    assert not all(whole_groups(batch) for batch in spies[other].batches)


def test_batch_samplers_reject_objectives_not_trained(tmp_path):
    bi_encoder, _ = build_views("bert")
    with pytest.raises(ValueError, match="cross_encoder"):
        JointTrainer(
            bi_encoder,
            train_dataset=swatch_corpus(num_images=3).to_dataset(),
            bi_encoder_loss=HardNegativeTripletLoss(bi_encoder),
            batch_samplers={"cross_encoder": GroupedBatchSampler},
            args=tiny_args(tmp_path),
        )


def test_single_objective_batch_sampler_leaves_evaluation_batches_alone(tmp_path):
    bi_encoder, _ = build_views("bert", seed=0)
    dataset = swatch_corpus(num_images=12, captions_per_image=3).to_dataset()
    grouped = functools.partial(GroupedBatchSampler, groups=[label // 3 for label in dataset["label"]])
    trainer = JointTrainer(
        bi_encoder,
        train_dataset=dataset,
        eval_dataset=dataset.select(range(6)),  # 6 rows: the training rows' groups would not fit it
        bi_encoder_loss=HardNegativeTripletLoss(bi_encoder, margin=0.2),
        batch_samplers={BE: grouped},
        args=tiny_args(tmp_path, max_steps=2, per_device_train_batch_size=6, per_device_eval_batch_size=6),
    )
    assert isinstance(trainer.get_train_dataloader().batch_sampler, GroupedBatchSampler)
    assert not isinstance(trainer.get_eval_dataloader().batch_sampler, GroupedBatchSampler)
    assert trainer.evaluate()["eval_loss"] > 0


def test_data_that_does_not_fill_one_batch_is_refused_not_trained_for_zero_steps(tmp_path):
    # 12 swatches x 3 captions = 36 rows; the last incomplete batch is dropped, so a batch of 37 never runs.
    with pytest.raises(ValueError, match="holds 36 pairs, fewer than one batch of 37, so no training step could run"):
        make_trainer(tmp_path, per_device_train_batch_size=37, dataloader_drop_last=True)
    # Kept, the incomplete batch trains.
    trainer = make_trainer(tmp_path, objectives=(BE,), per_device_train_batch_size=37, max_steps=1)
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.parametrize("objectives", [(BE,), (CE,), (BE, CE)])
def test_each_objective_that_steps_records_its_view(tmp_path, objectives):
    trainer = make_trainer(tmp_path, objectives=objectives, max_steps=2)
    trainer.model[0].trained_views = []
    trainer.train()
    assert trainer.model[0].trained_views == sorted(objectives)
