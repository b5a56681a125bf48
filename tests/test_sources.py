"""What `skmm.select` and `Selector.fit` accept as features: paths, stores, GradientSketch."""

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from torch import nn
from torch.utils.data import TensorDataset

import skmm
from skmm.sources import open_features
from skmm.store import SketchStore


@pytest.fixture
def features():
    return np.random.default_rng(0).standard_normal((120, 12)).astype(np.float32)


def expected(features, **options):
    return skmm.select(features, 30, random_state=0, sketch_dim=8, **options).indices


def test_select_takes_array_files_by_path(tmp_path, features):
    np.save(tmp_path / "f.npy", features)
    np.savez(tmp_path / "f.npz", features=features)
    save_file({"features": features}, str(tmp_path / "f.safetensors"))
    reference = expected(features)
    for source in (str(tmp_path / "f.npy"), tmp_path / "f.npz", tmp_path / "f.safetensors"):
        got = skmm.select(source, 30, random_state=0, sketch_dim=8).indices
        np.testing.assert_array_equal(got, reference)


def test_estimator_fit_takes_a_path_too(tmp_path, features):
    np.save(tmp_path / "f.npy", features)
    selector = skmm.SkMM(30, sketch_dim=8, random_state=0).fit(str(tmp_path / "f.npy"))
    np.testing.assert_array_equal(selector.selection_.indices, expected(features))


def test_select_takes_a_store_path_a_store_and_a_gradient_sketch(tmp_path):
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(48, 5, generator=gen), torch.randint(0, 3, (48,), generator=gen)
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    result = skmm.sketch_gradients(
        model, data, sketch_dim=16, store=tmp_path / "store", progress=False
    )
    # the sketch and the store carry the dataset's labels, which stratify SkMM's budget
    labels = data.tensors[1].numpy()
    reference = skmm.select(
        np.asarray(result.features), 10, labels=labels, random_state=0, sketch_dim=8
    )
    store = SketchStore.open(tmp_path / "store")
    for source in (str(tmp_path / "store"), tmp_path / "store", store, result):
        got = skmm.select(source, 10, random_state=0, sketch_dim=8)
        np.testing.assert_array_equal(got.indices, reference.indices)
    stratified = skmm.select(result, 10, random_state=0, sketch_dim=8, stratify=True)
    assert [c["label"] for c in stratified.info["classes"]] == [0, 1, 2]  # the carried labels


def test_open_features_refuses_what_it_cannot_read(tmp_path, features):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is a directory, not an array file or a sketch store"):
        open_features(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such file"):
        skmm.select(str(tmp_path / "missing.npy"), 3)
    with pytest.raises(ValueError, match="key 'x'"):
        open_features(features, key="x")
    with pytest.raises(TypeError, match="a sketch store, a SketchStore or the GradientSketch"):
        skmm.select({"a": 1}, 3)
