import numpy as np
import pytest
import torch

from skmm.bench.tasks import (
    Encoded,
    PreparedTask,
    cached_encoding,
    hold_out_validation,
    prepare_task,
    validation_rows,
)


def test_an_encoding_is_computed_once_then_read_from_its_cache(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {
            "embedding": np.arange(6, dtype=np.float32).reshape(3, 2),
            "labels": np.array([0, 1, 0]),
            "hidden": np.ones((3, 4), np.float32),
        }

    path = tmp_path / "split.npz"
    first = cached_encoding(path, compute)
    again = cached_encoding(path, compute)
    assert len(calls) == 1 and path.exists()
    for encoded in (first, again):
        np.testing.assert_array_equal(encoded.labels, [0, 1, 0])
        assert list(encoded.inputs) == ["hidden"]
        assert encoded.tensors(slice(0, 2))["hidden"].shape == (2, 4)
    np.testing.assert_array_equal(again.embedding, first.embedding)


def test_bad_task_requests_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'imagenet'"):
        prepare_task("imagenet", tmp_path)
    with pytest.raises(ValueError, match="apply to stanford-cars, not food-reviews"):
        prepare_task("food-reviews", tmp_path, sources={"dataset": "x"})
    with pytest.raises(ValueError, match="image_size must be at least 32"):
        prepare_task("fashion-mnist", tmp_path, image_size=16)


def test_the_validation_part_is_stratified_seeded_and_disjoint_from_the_pool():
    labels = np.repeat([0, 1, 2], [80, 16, 4])
    held = validation_rows(labels, 0.125, 1000)
    assert len(held) == 12 and np.all(np.diff(held) > 0)
    assert np.bincount(labels[held], minlength=3).tolist() == [10, 2, 0]  # 10, 2 and 0.5
    np.testing.assert_array_equal(held, validation_rows(labels, 0.125, 1000))
    assert len(validation_rows(labels, 0.5, 7)) == 7  # the cap
    # a class of one row keeps it in the pool
    few = np.array([0, 1, 1, 1])
    assert 0 not in few[validation_rows(few, 0.5, 10)]

    split = Encoded({"x": np.arange(100)[:, None]}, np.zeros((100, 2)), labels)
    task = PreparedTask("t", split, split, torch.nn.Identity(), 3, {}, {"a": 1})
    held_task = hold_out_validation(task)
    pool, validation = held_task.train, held_task.validation
    assert len(pool.labels) == 88 and len(validation.labels) == 12
    assert set(pool.inputs["x"][:, 0]).isdisjoint(validation.inputs["x"][:, 0])
    assert held_task.settings == {"a": 1, "validation_rows": 12}
