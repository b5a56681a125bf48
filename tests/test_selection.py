import numpy as np
import pytest
import torch

from skmm import Selection


def _selection():
    return Selection(
        np.array([4, 0, 2]),
        np.array([0.5, 0.25, 0.25]),
        {"method": "skmm", "n_pool": 6, "c_S": float("inf"), "eigenvalues": torch.ones(2)},
    )


def test_fields_are_normalized():
    selection = _selection()
    assert selection.indices.dtype == np.int64
    assert selection.weights.dtype == np.float64
    assert len(selection) == 3 and selection.n_pool == 6
    assert "skmm" in repr(selection)


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_round_trip_keeps_everything(tmp_path, suffix):
    path = tmp_path / f"sel{suffix}"
    _selection().save(path)
    loaded = Selection.load(path)
    np.testing.assert_array_equal(loaded.indices, [4, 0, 2])
    np.testing.assert_array_equal(loaded.weights, [0.5, 0.25, 0.25])
    assert loaded.info["c_S"] is None  # non-finite floats become null in strict JSON
    assert loaded.info["eigenvalues"] == [1.0, 1.0]


def test_npy_keeps_indices_only(tmp_path):
    _selection().save(tmp_path / "sel.npy")
    loaded = Selection.load(tmp_path / "sel.npy")
    np.testing.assert_array_equal(loaded.indices, [4, 0, 2])
    assert loaded.weights is None


def test_bad_suffix_and_foreign_json(tmp_path):
    with pytest.raises(ValueError, match="use .json, .npy or .npz"):
        _selection().save(tmp_path / "sel.csv")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a saved skmm selection"):
        Selection.load(tmp_path / "other.json")


@pytest.mark.parametrize(
    ("indices", "weights", "match"),
    [
        ([1, 1], None, "distinct"),
        ([-1, 2], None, "non-negative"),
        ([[1, 2]], None, "1-D"),
        ([0.5, 1.0], None, "integer"),
        ([1, 2], [1.0], "weights"),
    ],
)
def test_invalid_selections(indices, weights, match):
    with pytest.raises(ValueError, match=match):
        Selection(np.asarray(indices), weights)


def test_subset_of_arrays_tensors_lists_and_frames():
    pd = pytest.importorskip("pandas")
    selection = _selection()
    data = np.arange(12).reshape(6, 2)
    np.testing.assert_array_equal(selection.subset(data), data[[4, 0, 2]])
    assert selection.subset(torch.arange(6)).tolist() == [4, 0, 2]
    assert selection.subset(list("abcdef")) == ["e", "a", "c"]
    frame = pd.DataFrame({"x": range(6)})
    assert selection.subset(frame)["x"].tolist() == [4, 0, 2]


def test_subset_of_a_torch_dataset():
    dataset = torch.utils.data.TensorDataset(torch.arange(6))
    subset = _selection().subset(dataset)
    assert isinstance(subset, torch.utils.data.Subset)
    assert [int(item[0]) for item in subset] == [4, 0, 2]


def test_subset_of_a_hugging_face_dataset():
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"text": list("abcdef")})
    assert _selection().subset(data)["text"] == ["e", "a", "c"]


def test_subset_checks_the_pool_size():
    with pytest.raises(ValueError, match="pool of 6"):
        _selection().subset(np.arange(5))
