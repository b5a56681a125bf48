import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skmm.bench.tasks import Encoded
from skmm.bench.training import finetune, predict, schedule_steps, scores, train_linear


def test_scores_by_hand():
    predicted = np.array([0, 0, 1, 1, 1])
    truth = np.array([0, 1, 1, 1, 0])
    result = scores(predicted, truth, 2)
    assert result["accuracy"] == pytest.approx(3 / 5)
    # class 0: tp 1, fp 1, fn 1 -> F1 1/2; class 1: tp 2, fp 1, fn 1 -> F1 2/3
    assert result["macro_f1"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_linear_probe_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 90)
    features = np.eye(3)[labels] * 4 + 10 + rng.standard_normal((90, 3)) * 0.3
    probe = train_linear(features, labels, 3, penalty=1e-3)
    assert np.mean(probe.logits(features).argmax(1).numpy() == labels) == 1.0
    np.testing.assert_allclose(probe.mean, features.mean(0))
    # a stronger penalty shrinks the weights
    assert train_linear(features, labels, 3, penalty=1.0).weight.norm() < probe.weight.norm()


def test_the_schedule_grows_with_n_between_its_floor_and_cap():
    hyper = {"epochs": 10, "batch_size": 20, "min_steps": 30, "max_steps": 200}
    assert [schedule_steps(n, hyper) for n in (10, 60, 61, 200, 10_000)] == [30, 30, 40, 100, 200]


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(2, 2)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def param_groups(self, lr_body: float, lr_head: float) -> list[dict]:
        return [{"params": self.head.parameters(), "lr": lr_head}]


def blobs(rows: int, seed: int) -> Encoded:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows)
    x = (rng.standard_normal((rows, 2)) + 3 * labels[:, None]).astype(np.float32)
    return Encoded({"x": x}, x, labels)


HYPER = {"epochs": 1, "batch_size": 8, "min_steps": 40, "max_steps": 40, "eval_every": 5}


def test_finetuning_keeps_its_best_validated_state_and_stops_when_it_stops_improving():
    train, validation = blobs(64, 0), blobs(40, 1)
    rows = np.arange(64)
    hyper = {**HYPER, "lr_body": 0.0, "lr_head": 0.1, "patience": 100}
    result = finetune(TinyClassifier(), train, rows, 0, hyper, validation)
    assert result.steps == 40 and result.best_step % 5 == 0
    kept = np.mean(predict(result.model, validation) == validation.labels)
    assert kept == result.validation_score > 0.9  # the kept state is the best one scored
    again = finetune(TinyClassifier(), train, rows, 0, hyper, validation)
    assert again.best_step == result.best_step  # reproducible
    # nothing to learn (lr 0): the first score is never beaten, so it stops after `patience`
    frozen = {**hyper, "lr_head": 0.0, "patience": 2}
    stopped = finetune(TinyClassifier(), train, rows, 0, frozen, validation)
    assert (stopped.steps, stopped.best_step) == (15, 5)
    # without a validation split every step runs and the last state is kept
    plain = finetune(TinyClassifier(), train, rows, 0, hyper)
    assert (plain.steps, plain.best_step, plain.validation_score) == (40, 40, None)


def test_early_stopping_on_the_validation_loss_keeps_the_lowest_cross_entropy():
    train, validation = blobs(64, 0), blobs(40, 1)
    rows = np.arange(64)
    hyper = {**HYPER, "lr_body": 0.0, "lr_head": 0.1, "patience": 100, "stop_on": "loss"}
    result = finetune(TinyClassifier(), train, rows, 0, hyper, validation)
    with torch.no_grad():
        logits = result.model(**validation.tensors(np.arange(40)))
        loss = float(F.cross_entropy(logits, torch.from_numpy(validation.labels)))
    assert result.validation_score == pytest.approx(-loss, rel=1e-5)
    assert result.validation_score < 0
    with pytest.raises(ValueError, match="stop_on"):
        finetune(TinyClassifier(), train, rows, 0, {**hyper, "stop_on": "f1"}, validation)
