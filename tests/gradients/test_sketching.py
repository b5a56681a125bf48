import itertools
import json
import types

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import skmm
from skmm.gradients import load_gradient_sketch, sinks, sketch_gradients
from skmm.gradients.params import resolve_params
from skmm.gradients.per_sample import random_labels, random_signs
from skmm.store import SketchStore, StoreError


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
    )


def image_data(rows=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(rows, 1, 8, 8, generator=gen)
    labels = torch.randint(0, 5, (rows,), generator=gen)
    return TensorDataset(images, labels)


def loop_gradients(model, data, names, target, seed=0):
    """Reference: one forward and backward per example, in eval mode."""
    model.eval()
    chosen = dict(model.named_parameters())
    rows = []
    for index in range(len(data)):
        inputs, label = data[index]
        model.zero_grad()
        output = model(inputs[None])[0]
        if target == "loss":
            value = nn.functional.cross_entropy(output, label)
        elif target == "loss_random":
            value = nn.functional.cross_entropy(output, random_labels(seed, index, 1, 5)[0])
        else:
            value = (output * random_signs(seed, index, 1, output.numel())[0]).sum()
        value.backward()
        rows.append(torch.cat([chosen[name].grad.reshape(-1) for name in names]))
    return torch.stack(rows)


@pytest.mark.parametrize("target", ["jacobian", "loss", "loss_random"])
@pytest.mark.parametrize("params", ["trainable", "last:2", ["0.*", "5.weight"]])
def test_streamed_sketch_equals_sketch_of_the_explicit_gradients(target, params):
    model, data = small_cnn(), image_data()
    names = [name for name, _ in resolve_params(model, params)]
    explicit = loop_gradients(model, data, names, target, seed=3)
    expected = skmm.sketch(explicit.numpy(), 16, kind="gaussian", seed=3)
    result = sketch_gradients(
        model, data, params=params, sketch_dim=16, sketch="gaussian", seed=3, target=target
    )
    np.testing.assert_allclose(result.features, expected, rtol=1e-4, atol=1e-5)
    assert result.features.dtype == np.float32
    np.testing.assert_array_equal(result.labels, data.tensors[1].numpy())
    assert result.metadata["params"] == names
    assert result.metadata["n_params"] == explicit.shape[1]


def test_eval_mode_freezes_batchnorm_and_dropout():
    model, data = small_cnn(), image_data()
    model[1].running_mean.fill_(0.3)
    before = model[1].running_mean.clone()
    first = sketch_gradients(model, data, sketch_dim=8, seed=0).features
    second = sketch_gradients(model, data, sketch_dim=8, seed=0).features
    np.testing.assert_array_equal(first, second)
    assert torch.equal(model[1].running_mean, before)


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
def test_results_agree_across_batch_sizes_to_float32_rounding(kind):
    # vmap's batched kernels may sum in another order for another batch size: the sketches
    # agree to float32 rounding, not bit for bit (the same batch size is bit for bit).
    model, data = small_cnn(), image_data(rows=150)
    runs = [
        sketch_gradients(model, data, sketch_dim=16, sketch=kind, batch_size=size).features
        for size in (1, 7, 64, 150)
    ]
    scale = np.abs(runs[0]).max()
    for run in runs[1:]:
        np.testing.assert_allclose(run, runs[0], rtol=1e-5, atol=1e-6 * scale)


def test_dataloader_dicts_and_plain_iterables_are_accepted():
    model, data = small_cnn(), image_data()
    reference = sketch_gradients(model, data, sketch_dim=8).features
    loader = DataLoader(data, batch_size=9)
    from_loader = sketch_gradients(model, loader, sketch_dim=8)
    # rows are regrouped into the same aligned micro-batches, however the data was batched
    np.testing.assert_array_equal(from_loader.features, reference)
    images = data.tensors[0]
    batches = [images[i : i + 16] for i in range(0, 40, 16)]
    plain = sketch_gradients(model, batches, sketch_dim=8)
    np.testing.assert_array_equal(plain.features, reference)
    assert plain.labels is None
    with pytest.raises(ValueError, match="shuffle"):
        sketch_gradients(model, DataLoader(data, shuffle=True), sketch_dim=8)
    with pytest.raises(ValueError, match="needs labels"):
        sketch_gradients(model, batches, sketch_dim=8, target="loss")


def test_linear_head_closed_form_equals_autograd():
    torch.manual_seed(1)
    head = nn.Linear(6, 3)
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(50, 6, generator=gen)
    labels = torch.randint(0, 3, (50,), generator=gen)
    data = TensorDataset(features, labels)
    wrapped = nn.Sequential(head)  # not a bare nn.Linear: goes through vmap(grad)
    for target in ("jacobian", "loss", "loss_random"):
        closed = sketch_gradients(head, data, sketch_dim=8, sketch="gaussian", target=target)
        autograd = sketch_gradients(wrapped, data, sketch_dim=8, sketch="gaussian", target=target)
        np.testing.assert_allclose(closed.features, autograd.features, rtol=1e-5, atol=1e-6)


def test_regression_targets_use_half_squared_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))
    x, y = torch.randn(10, 4), torch.randn(10, 1)
    result = sketch_gradients(model, TensorDataset(x, y), sketch_dim=4, target="loss")
    names = [name for name, _ in model.named_parameters()]
    rows = []
    for i in range(10):
        model.zero_grad()
        (0.5 * (model(x[i : i + 1])[0] - y[i]).square().sum()).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    expected = skmm.sketch(torch.stack(rows).numpy(), 4, kind="sparse_sign")
    np.testing.assert_allclose(result.features, expected, rtol=1e-4, atol=1e-6)
    assert result.labels is None and result.metadata["params"] == names


def test_tiny_transformer_encoder():
    torch.manual_seed(0)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 8)
            self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, tokens):
            return self.head(self.layer(self.embed(tokens)).mean(dim=1))

    model = Encoder()
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randint(0, 20, (12, 5), generator=gen), torch.randint(0, 3, (12,)))
    names = [name for name, _ in resolve_params(model, ["layer.linear*", "head.*"])]
    explicit = loop_gradients(model, data, names, "loss")
    expected = skmm.sketch(explicit.numpy(), 8, kind="gaussian")
    result = sketch_gradients(
        model,
        data,
        params=["layer.linear*", "head.*"],
        sketch_dim=8,
        sketch="gaussian",
        target="loss",
    )
    np.testing.assert_allclose(result.features, expected, rtol=1e-4, atol=1e-5)


def test_store_round_trip_resume_and_refusal(tmp_path):
    model, data = small_cnn(), image_data(rows=70)
    store = tmp_path / "store"
    full = sketch_gradients(model, data, sketch_dim=8, store=store, shard_rows=16, batch_size=5)
    direct = sketch_gradients(model, data, sketch_dim=8, batch_size=5)
    np.testing.assert_array_equal(full.features, direct.features)
    np.testing.assert_array_equal(load_gradient_sketch(store).labels, data.tensors[1].numpy())
    options = {"sketch_dim": 8, "store": store, "shard_rows": 16, "batch_size": 5}
    again = sketch_gradients(model, data, **options)
    np.testing.assert_array_equal(again.features, full.features)
    with pytest.raises(StoreError, match="seed"):
        sketch_gradients(model, data, **{**options, "seed": 1})
    with pytest.raises(StoreError, match="model_fingerprint"):
        sketch_gradients(small_cnn(seed=5), data, **options)
    with pytest.raises(StoreError, match="shard_rows: stored 20, requested 64"):
        sketch_gradients(model, data, **{**options, "batch_size": 64})


def test_progress_counts_every_batch_not_only_every_shard(tmp_path, monkeypatch):
    updates = []

    class Recorder:
        def __init__(self, total, desc, enabled, unit="it"):
            self.total = total

        def update(self, count=1):
            updates.append(count)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr("skmm.gradients.sketching.progress_bar", Recorder)
    model, data = small_cnn(), image_data(rows=70)
    sketch_gradients(model, data, sketch_dim=8, store=tmp_path / "s", shard_rows=20, batch_size=5)
    assert [count for count in updates if count] == [5] * 14  # 5 rows per batch, 14 batches
    updates.clear()
    sketch_gradients(model, data, sketch_dim=8, batch_size=5)
    assert [count for count in updates if count] == [5] * 14


def test_interrupted_run_resumes_to_an_identical_store(tmp_path):
    model, data = small_cnn(), image_data(rows=70)
    reference = tmp_path / "reference"
    sketch_gradients(model, data, sketch_dim=8, store=reference, shard_rows=16, batch_size=8)

    class Interrupt(Exception):
        pass

    def failing_batches():
        for start in range(0, 70, 10):
            if start == 50:
                raise Interrupt
            yield data.tensors[0][start : start + 10], data.tensors[1][start : start + 10]

    class Counting(Dataset):
        def __init__(self):
            self.read = set()

        def __len__(self):
            return len(data)

        def __getitem__(self, index):
            self.read.add(index)
            return data[index]

    resumed = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        sketch_gradients(
            model, failing_batches(), sketch_dim=8, store=resumed, shard_rows=16, batch_size=8
        )
    with pytest.raises(StoreError, match="incomplete"):
        load_gradient_sketch(resumed)
    counting = Counting()
    sketch_gradients(model, counting, sketch_dim=8, store=resumed, shard_rows=16, batch_size=8)
    assert min(counting.read) == 48  # three shards of 16 rows were kept, not recomputed
    for path in sorted(reference.iterdir()):
        assert (resumed / path.name).read_bytes() == path.read_bytes(), path.name


class Interrupt(Exception):
    pass


def batches_until(data, rows, size=10):
    """``data`` in batches of ``size``, raising Interrupt once ``rows`` rows were given."""
    for start in range(0, len(data), size):
        if start >= rows:
            raise Interrupt
        yield data.tensors[0][start : start + size], data.tensors[1][start : start + size]


class Counting(Dataset):
    """A dataset that remembers which rows were read."""

    def __init__(self, data):
        self.data, self.read = data, set()

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        self.read.add(index)
        return self.data[index]


def snapshot(path):
    return {entry.name: entry.read_bytes() for entry in sorted(path.iterdir())}


@pytest.mark.parametrize("stops", [(10,), (30,), (60,), (20, 50)])
def test_a_pool_smaller_than_a_shard_is_saved_as_it_goes_and_resumes_identically(
    tmp_path, capsys, stops
):
    # 70 rows, default 4,096-row shards: one short shard, saved as a partial shard after
    # every micro-batch (flush_seconds=0); interrupted at each of ``stops`` rows, then resumed.
    model, data = small_cnn(), image_data(rows=70)
    options = {"sketch_dim": 8, "batch_size": 8, "progress": False}
    reference = tmp_path / "reference"
    sketch_gradients(model, data, store=reference, **options)
    store = tmp_path / "store"
    saved = 0
    for stop in stops:
        with pytest.raises(Interrupt):
            sketch_gradients(
                model, batches_until(data, stop), store=store, flush_seconds=0, **options
            )
        partial = json.loads((store / "manifest.json").read_text())["partial"]
        assert partial["rows"] % 8 == 0 and max(saved, stop - 16) < partial["rows"] <= stop
        saved = partial["rows"]
    counting = Counting(data)
    resumed = sketch_gradients(model, counting, store=store, **{**options, "progress": None})
    assert min(counting.read) == saved  # the saved rows were not recomputed
    assert f"already holds {saved} rows" in capsys.readouterr().err
    assert snapshot(store) == snapshot(reference)
    np.testing.assert_array_equal(resumed.features, load_gradient_sketch(reference).features)
    sketch_gradients(model, data, store=store, **{**options, "progress": None})
    assert "is already complete (70 rows): nothing to sketch" in capsys.readouterr().err


def test_whole_shards_and_a_partial_one_resume_identically(tmp_path, capsys):
    model, data = small_cnn(), image_data(rows=70)
    options = {"sketch_dim": 8, "batch_size": 8, "shard_rows": 16}
    reference = tmp_path / "reference"
    sketch_gradients(model, data, store=reference, **options)
    store = tmp_path / "store"
    with pytest.raises(Interrupt):
        sketch_gradients(model, batches_until(data, 60), store=store, flush_seconds=0, **options)
    manifest = json.loads((store / "manifest.json").read_text())
    assert len(manifest["shards"]) == 3 and manifest["partial"]["rows"] == 8
    rows = 48 + manifest["partial"]["rows"]
    sketch_gradients(model, data, store=store, **options)
    message = f"already holds {rows} rows (3 whole shard(s) of 16, {rows - 48} of the next)"
    assert message in capsys.readouterr().err
    assert snapshot(store) == snapshot(reference)


def test_the_partial_shard_is_saved_once_per_flush_interval(tmp_path, monkeypatch):
    clock = itertools.count(step=25.0)  # the sink's clock: each reading is 25 s later
    monkeypatch.setattr(sinks, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    saved = []
    set_partial = skmm.store.SketchStore.set_partial

    def recording(store, entry):
        saved.append(entry["rows"])
        set_partial(store, entry)

    monkeypatch.setattr(skmm.store.SketchStore, "set_partial", recording)
    model, data = small_cnn(), image_data(rows=70)
    sketch_gradients(model, data, sketch_dim=8, batch_size=8, store=tmp_path / "s")
    # one reading when the sink opens, one per piece of 8 rows, one after each save: with
    # flush_seconds=60 every third piece is saved (75 s after the last save)
    assert saved == [24, 48, 70]
    np.testing.assert_array_equal(
        load_gradient_sketch(tmp_path / "s").features,
        sketch_gradients(model, data, sketch_dim=8, batch_size=8).features,
    )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"target": "hessian"}, "jacobian, loss, loss_random, jacobian_blocks"),
        ({"sketch": "fjlt"}, "gaussian, sparse_sign"),
        ({"sketch_dim": 0}, "sketch_dim"),
        ({"params": ["nothing.*"]}, "matches no parameter"),
        ({"params": "last:99"}, "last:99"),
        ({"data": []}, "no rows"),
        ({"flush_seconds": -1.0}, "flush_seconds"),
    ],
)
def test_bad_requests(options, match):
    data = options.pop("data", image_data(rows=4))
    with pytest.raises(ValueError, match=match):
        sketch_gradients(small_cnn(), data, **{"sketch_dim": 8, **options})


def test_the_callers_training_mode_is_restored():
    model = small_cnn()
    model.train()
    sketch_gradients(model, image_data(rows=4), sketch_dim=8)
    assert model.training
    model.eval()
    sketch_gradients(model, image_data(rows=4), sketch_dim=8)
    assert not model.training


def test_non_finite_gradients_name_the_examples():
    model = nn.Sequential(nn.Linear(3, 2), nn.Softplus(), nn.Linear(2, 2))
    rows = torch.randn(10, 3)
    rows[7] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite per-sample gradients for example\(s\) \[7\]"):
        sketch_gradients(model, TensorDataset(rows), sketch_dim=4, batch_size=4)


def test_a_complete_store_of_one_short_shard_is_read_back(tmp_path):
    model, data = small_cnn(), image_data(rows=10)
    options = {"sketch_dim": 8, "store": tmp_path / "store", "shard_rows": 16, "batch_size": 4}
    first = sketch_gradients(model, data, **options)
    again = sketch_gradients(model, data, **options)
    assert first.features.shape == (10, 8)
    np.testing.assert_array_equal(again.features, first.features)


def loop_output_gradients(model, data, names):
    """Reference: the gradient of every output of every example, rows (i, k) in order."""
    model.eval()
    chosen = dict(model.named_parameters())
    rows = []
    for index in range(len(data)):
        inputs = data[index][0]
        outputs = model(inputs[None])[0].reshape(-1)
        for k in range(outputs.numel()):
            model.zero_grad()
            model(inputs[None])[0].reshape(-1)[k].backward()
            rows.append(torch.cat([chosen[name].grad.reshape(-1) for name in names]))
    return torch.stack(rows)


@pytest.mark.parametrize("per_sample", ["auto", "vmap"])
@pytest.mark.parametrize("params", ["trainable", "last:2"])
def test_jacobian_blocks_are_every_outputs_gradient_sketched_by_one_map(per_sample, params):
    model, data = small_cnn(), image_data(rows=24)
    names = [name for name, _ in resolve_params(model, params)]
    explicit = loop_output_gradients(model, data, names)  # (24·5, r)
    expected = skmm.sketch(explicit.numpy(), 16, kind="sparse_sign", seed=2).reshape(24, 5 * 16)
    result = sketch_gradients(
        model,
        data,
        params=params,
        sketch_dim=16,
        seed=2,
        target="jacobian_blocks",
        per_sample=per_sample,
        batch_size=8,
        progress=False,
    )
    np.testing.assert_allclose(result.features, expected, rtol=1e-4, atol=1e-5)
    assert result.metadata["blocks"] == 5
    assert result.metadata["per_sample"] == ("hooks" if per_sample == "auto" else "vmap")
    # the random-sign Jacobian row is one combination of these blocks, Σ_k v_ik J_ik
    signs = random_signs(2, 0, 24, 5).numpy()
    combined = (result.features.reshape(24, 5, 16) * signs[:, :, None]).sum(axis=1)
    jacobian = sketch_gradients(model, data, params=params, sketch_dim=16, seed=2, progress=False)
    np.testing.assert_allclose(jacobian.features, combined, rtol=1e-4, atol=1e-5)


def test_jacobian_blocks_of_a_linear_head_and_with_kronecker_maps():
    torch.manual_seed(1)
    head = nn.Linear(6, 3)
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(30, 6, generator=gen), torch.randint(0, 3, (30,)))
    for kind in ("sparse_sign", "kronecker"):
        closed = sketch_gradients(head, data, sketch_dim=8, sketch=kind, target="jacobian_blocks")
        wrapped = sketch_gradients(
            nn.Sequential(head), data, sketch_dim=8, sketch=kind, target="jacobian_blocks"
        )
        assert closed.metadata["per_sample"] == "closed form"
        assert closed.features.shape == (30, 3 * 8)
        np.testing.assert_allclose(closed.features, wrapped.features, rtol=1e-5, atol=1e-6)


def test_a_store_of_jacobian_blocks_resumes_identically(tmp_path):
    model, data = small_cnn(), image_data(rows=40)
    options = {"sketch_dim": 8, "target": "jacobian_blocks", "batch_size": 8, "progress": False}
    whole = sketch_gradients(model, data, **options)
    store = tmp_path / "store"
    first = sketch_gradients(model, data, store=store, shard_rows=16, **options)
    np.testing.assert_array_equal(first.features, whole.features)
    resumed = sketch_gradients(model, data, store=store, shard_rows=16, **options)
    np.testing.assert_array_equal(resumed.features, whole.features)
    opened = SketchStore.open(store)
    assert (opened.blocks, opened.width, opened.shape) == (5, 40, (40, 40))
    with pytest.raises(StoreError, match="target"):
        sketch_gradients(
            model, data, store=store, shard_rows=16, **{**options, "target": "jacobian"}
        )


def test_jacobian_blocks_refusals():
    data = image_data(rows=8)
    with pytest.raises(ValueError, match="K = 300 outputs"):
        sketch_gradients(
            nn.Sequential(nn.Flatten(), nn.Linear(64, 300)),
            data,
            sketch_dim=8,
            target="jacobian_blocks",
        )
    batches = (data.tensors[0][i : i + 4] for i in range(0, 8, 4))
    with pytest.raises(TypeError, match="one-shot iterator"):
        sketch_gradients(small_cnn(), batches, sketch_dim=8, target="jacobian_blocks")
