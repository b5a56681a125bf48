import csv
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import skmm
import skmm.cli
from skmm.bench.target import (
    WARMUP,
    _coreset,
    cut_target,
    loss_gradients,
    probe_gradients,
    run_target,
    run_target_task,
    target_scores,
)
from skmm.bench.tasks import Encoded, PreparedTask
from skmm.bench.training import train_linear

from .test_images import fashion_available


def encoded(labels, rng, centers):
    labels = np.asarray(labels, dtype=np.int64)
    embedding = centers[labels] + 0.3 * rng.standard_normal((len(labels), centers.shape[1]))
    return Encoded({}, embedding.astype(np.float32), labels)


def clustered_task(classes=(0, 1), n_pool=600, n_classes=6, seed=0):
    """Well-separated clusters, one per class; the target is a few of the classes."""
    rng = np.random.default_rng(seed)
    centers = 4.0 * rng.standard_normal((n_classes, 12))
    pool = encoded(rng.integers(0, n_classes, n_pool), rng, centers)
    validation = encoded(np.repeat(np.arange(n_classes), 10), rng, centers)
    test = encoded(np.repeat(np.arange(n_classes), 20), rng, centers)
    prepared = PreparedTask("toy", pool, test, None, n_classes, {}, {}, validation)
    return cut_target(prepared, "toy-target", {c: 1.0 for c in classes})


def test_the_target_is_the_held_out_rows_and_the_test_rows_of_its_classes():
    task = clustered_task(classes=(4, 1))
    assert task.classes == (4, 1)
    assert set(task.target.labels) == {1, 4} and len(task.target.labels) == 20
    assert set(task.test.labels) == {1, 4} and len(task.test.labels) == 40
    assert len(task.pool.labels) == 600  # the pool is untouched
    assert task.settings == {"target_classes": [4, 1], "target_rows": 20, "test_rows": 40}


def test_a_shifted_mix_keeps_a_seeded_share_of_each_class(tmp_path):
    rng = np.random.default_rng(0)
    centers = 4.0 * rng.standard_normal((3, 6))
    split = encoded(np.repeat(np.arange(3), 30), rng, centers)
    prepared = PreparedTask("toy", split, split, None, 3, {}, {}, split)
    shares = {0: 1.0, 1: 0.5, 2: 0.1}
    task = cut_target(prepared, "mix", shares)
    assert np.bincount(task.target.labels).tolist() == [30, 15, 3]
    assert np.bincount(task.test.labels).tolist() == [30, 15, 3]
    assert task.settings["target_shares"] == {"0": 1.0, "1": 0.5, "2": 0.1}
    again = cut_target(prepared, "mix", shares)
    np.testing.assert_array_equal(task.target.embedding, again.target.embedding)
    # the label oracle draws the target's class mix from the pool
    runs = run_target_task(task, ("uniform",), (16,), 1, tmp_path, references=False)
    assert len(runs) == 1
    rows = _coreset(task, (task.pool.embedding, task.target.embedding), 16, "pool-target-mix", 0)
    assert np.bincount(task.pool.labels[rows], minlength=3).tolist() == [10, 5, 1]


def test_a_target_class_absent_from_the_held_out_rows_is_refused():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 4))
    validation = encoded([0, 0, 1], rng, centers)
    prepared = PreparedTask("toy", validation, validation, None, 3, {}, {}, validation)
    with pytest.raises(ValueError, match=r"no rows of \[2\]"):
        cut_target(prepared, "t", {1: 1.0, 2: 1.0})
    with pytest.raises(ValueError, match="held-out validation part"):
        cut_target(PreparedTask("toy", validation, validation, None, 3, {}), "t", {1: 1.0})


def test_target_scores_count_predictions_outside_the_target_as_wrong():
    truth = np.array([3, 3, 5, 5])
    predicted = np.array([3, 0, 5, 3])  # 0 is not a target class
    result = target_scores(predicted, truth, (3, 5))
    assert result["accuracy"] == 0.5
    # class 3: tp 1, fp 1, fn 1 -> 0.5; class 5: tp 1, fp 0, fn 1 -> 2/3
    assert result["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_the_grid_holds_every_method_and_the_references_and_resumes(tmp_path):
    task = clustered_task()
    methods = ("uniform", "skmm-targeted", "skmm")
    options = {"references": True, "journal": tmp_path / "runs.csv", "progress": False}
    runs = run_target_task(task, methods, (12, 24), 2, tmp_path / "cache", **options)
    cells = {(r.method, r.n) for r in runs}
    for n in (12, 24):
        assert {(m, n) for m in (*methods, "pool-target-mix")} <= cells
    assert ("target-only", 20) in cells and ("full-pool", 600) in cells
    assert len(runs) == 2 * (4 * 2 + 2)
    assert all(0.0 <= r.accuracy <= 1.0 for r in runs)
    # the label oracle trains on the target's classes only: on these clusters it is exact
    assert all(r.accuracy == 1.0 for r in runs if r.method == "pool-target-mix")
    with open(tmp_path / "runs.csv") as stream:
        assert len(list(csv.DictReader(stream))) == len(runs)
    again = run_target_task(task, methods, (12, 24), 2, tmp_path / "cache", **options)
    assert [(r.method, r.n, r.seed, r.accuracy) for r in again] == [
        (r.method, r.n, r.seed, r.accuracy) for r in runs
    ]


def test_targeted_skmm_takes_more_of_the_target_classes_than_the_pool_holds():
    """The pool is a third target classes; SkMM given the target set picks mostly them."""
    task = clustered_task(classes=(0, 1))
    inside = np.isin(task.pool.labels, task.classes)
    for seed in range(3):
        rows = skmm.select(
            task.pool.embedding, 24, target=task.target.embedding, random_state=seed
        ).indices
        assert inside[rows].mean() >= 2 * inside.mean()


def test_loss_gradients_are_the_probes_cross_entropy_gradients():
    task = clustered_task()
    probe = train_linear(task.pool.embedding[:60], task.pool.labels[:60], task.n_classes, 0.1)
    rows = task.target.embedding[:5]
    labels = task.target.labels[:5]
    got = loss_gradients(probe, rows, labels)
    assert got.shape == (5, (rows.shape[1] + 1) * task.n_classes) and got.dtype == np.float32
    for i in range(5):
        weight = probe.weight.clone().double().requires_grad_(True)
        bias = probe.bias.clone().double().requires_grad_(True)
        x = torch.from_numpy((rows[i : i + 1] - probe.mean) / probe.scale).double()
        loss = F.cross_entropy(x @ weight + bias, torch.from_numpy(labels[i : i + 1]))
        loss.backward()
        expected = torch.cat([weight.grad, bias.grad[None]]).flatten().numpy()
        np.testing.assert_allclose(got[i], expected, rtol=1e-5, atol=1e-6)


def test_gradient_features_share_one_sketch_and_feed_every_method(tmp_path):
    task = clustered_task()
    pool, target = probe_gradients(task, {"12": 1.0, "30": 0.1})
    assert pool.shape == (600, WARMUP["sketch_dim"]) and target.shape == (20, WARMUP["sketch_dim"])
    again_pool, again_target = probe_gradients(task, {"12": 1.0, "30": 0.1})
    np.testing.assert_array_equal(pool, again_pool)
    np.testing.assert_array_equal(target, again_target)
    methods = ("uniform", "less", "knn", "skmm-targeted", "skmm-near", "skmm-near-2")
    runs = run_target_task(
        task, methods, (12,), 2, tmp_path, features="gradients", journal=tmp_path / "runs.csv"
    )
    assert {r.method for r in runs} >= set(methods)
    with pytest.raises(ValueError, match="unknown features 'pixels'"):
        run_target_task(task, methods, (12,), 1, tmp_path, features="pixels")


def test_bad_requests_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown targeted task"):
        run_target("nope", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown method 'kcenter'.*skmm-near-8"):
        run_target(methods=("kcenter",), cache_dir=tmp_path)
    task = clustered_task()
    with pytest.raises(ValueError, match="below the pool size 600"):
        run_target_task(task, ("uniform",), (600,), 1, tmp_path)


@pytest.mark.skipif(
    not fashion_available() and not os.environ.get("SKMM_REQUIRE_BENCH_DATA"),
    reason="Fashion-MNIST (apt-get install dataset-fashion-mnist) or EfficientNet-Lite0 missing",
)
def test_quick_targeted_fashion_mnist_from_the_cli(tmp_path, capsys):
    args = ["bench", "target", "--quick", "--quiet", "--out", str(tmp_path / "out")]
    args += ["--cache", str(tmp_path / "cache"), "--methods", "uniform", "skmm-targeted"]
    assert skmm.cli.main(args) == 0
    printed = capsys.readouterr().out
    head = printed.split("\n", 1)[0]
    assert head.startswith("Targeted benchmark fashion-mnist-tops, selectors see the embeddings")
    assert "of the same mix" in head
    assert "target classes [0, 2, 4, 6]" in head
    assert "cross-entropy on the target rows" in head
    assert "| skmm-targeted |" in printed and "| pool-target-mix |" in printed
    assert "Target set only (" in printed and "Full pool (" in printed
    assert "linear: accuracy − uniform's, paired over seeds" in printed
    for name in ("table.md", "runs.csv", "accuracy.png"):
        assert (tmp_path / "out" / name).exists()
