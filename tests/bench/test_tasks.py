import numpy as np
import pytest

from skmm.bench.tasks import cached_encoding, prepare_task


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
