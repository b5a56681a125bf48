"""Per-sample gradients from one batched backward with hooks, against vmap and a plain loop."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from skmm.gradients import sketch_gradients
from skmm.gradients.batches import iterate_batches
from skmm.gradients.params import resolve_params
from skmm.gradients.per_sample import GradientComputer

from .test_sketching import image_data, loop_gradients, small_cnn


def per_sample_rows(model, data, params, target, engine, batch_size=16, seed=3):
    """The (N, r) per-sample gradients of ``engine`` and the engine that produced them."""
    computer = GradientComputer(
        model, resolve_params(model, params), target, seed, torch.device("cpu"), engine
    )
    rows, start = [], 0
    for batch in iterate_batches(data, batch_size, 0):
        rows.append(computer(batch, start))
        start += batch.size
    return torch.cat(rows), computer.engine


def assert_same_rows(actual, expected):
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("target", ["jacobian", "loss", "loss_random"])
@pytest.mark.parametrize("params", ["trainable", ["0.*"], ["5.*", "1.weight"]])
def test_conv_batchnorm_and_linear_match_vmap_and_a_loop(target, params):
    model, data = small_cnn(), image_data(rows=37)
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    hooked, engine = per_sample_rows(model, data, params, target, "auto")
    assert engine == "hooks"
    mapped, _ = per_sample_rows(model, data, params, target, "vmap")
    assert_same_rows(hooked, mapped)
    names = [name for name, _ in resolve_params(model, params)]
    assert_same_rows(hooked, loop_gradients(model, data, names, target, seed=3))


class Tokens(nn.Module):
    """Embedding, a pre-norm residual MLP over positions with padding, masked mean pooling."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(30, 12)
        self.norm = nn.LayerNorm(12)
        self.up = nn.Linear(12, 24)
        self.down = nn.Linear(24, 12)
        self.head = nn.Linear(12, 4)

    def forward(self, ids, mask):
        hidden = self.embed(ids)
        update = self.down(torch.relu(self.up(self.norm(hidden))))
        hidden = hidden + update
        keep = mask.unsqueeze(-1).float()
        return self.head((hidden * keep).sum(1) / keep.sum(1))


def token_data(rows=21, length=9):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 30, (rows, length), generator=gen)
    lengths = torch.randint(1, length - 2, (rows,), generator=gen)  # trailing padding
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    labels = torch.randint(0, 4, (rows,), generator=gen)
    return [
        {"ids": ids[i : i + 8], "mask": mask[i : i + 8], "labels": labels[i : i + 8]}
        for i in range(0, rows, 8)
    ]


@pytest.mark.parametrize("target", ["jacobian", "loss"])
def test_sequence_layers_with_padding_match_vmap(target):
    model, data = Tokens(), token_data()
    params = ["norm.*", "up.*", "down.*", "head.*"]
    hooked, engine = per_sample_rows(model, data, params, target, "auto", batch_size=8)
    assert engine == "hooks"
    mapped, _ = per_sample_rows(model, data, params, target, "vmap", batch_size=8)
    assert_same_rows(hooked, mapped)


def test_sketches_from_hooks_and_vmap_agree():
    model, data = small_cnn(), image_data(rows=40)
    runs = {
        engine: sketch_gradients(model, data, sketch_dim=16, target="loss", per_sample=engine)
        for engine in ("hooks", "vmap")
    }
    assert runs["hooks"].metadata["per_sample"] == "hooks"
    assert runs["vmap"].metadata["per_sample"] == "vmap"
    scale = np.abs(runs["vmap"].features).max()
    np.testing.assert_allclose(
        runs["hooks"].features, runs["vmap"].features, rtol=1e-5, atol=1e-6 * scale
    )


class InPlace(nn.Module):
    """Outputs of hooked layers modified in place later: ReLU(inplace=True), `+=`."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.first = nn.Linear(6, 6)
        self.norm = nn.BatchNorm1d(6).eval()
        self.second = nn.Linear(6, 3)

    def forward(self, x):
        out = self.first(x)
        out += x
        out = nn.functional.relu(self.norm(out), inplace=True)
        return self.second(out)


def test_outputs_modified_in_place_afterwards_are_handled():
    model = InPlace()
    model.norm.running_mean.fill_(0.2)
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(30, 6, generator=gen), torch.randint(0, 3, (30,), generator=gen)
    )
    hooked, engine = per_sample_rows(model, data, "trainable", "loss", "auto")
    assert engine == "hooks"
    mapped, _ = per_sample_rows(model, data, "trainable", "loss", "vmap")
    assert_same_rows(hooked, mapped)


class SequenceFirst(nn.Module):
    """A Linear applied to (T, B, d): its input does not lead with the batch dimension."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.mix = nn.Linear(5, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.mix(x.transpose(0, 1)).transpose(0, 1).mean(1))


def test_a_layer_that_is_not_batch_first_falls_back_to_vmap_with_a_warning():
    model = SequenceFirst()
    gen = torch.Generator().manual_seed(0)
    # T = B = 8: every shape check passes, only the comparison with vmap can tell.
    data = torch.utils.data.TensorDataset(
        torch.randn(24, 8, 5, generator=gen), torch.randint(0, 2, (24,), generator=gen)
    )
    with pytest.warns(RuntimeWarning, match="disagree with vmap"):
        rows, engine = per_sample_rows(model, data, "trainable", "loss", "auto", batch_size=8)
    assert engine == "vmap"
    mapped, _ = per_sample_rows(model, data, "trainable", "loss", "vmap", batch_size=8)
    assert_same_rows(rows, mapped)


class Attention(nn.Module):
    """nn.MultiheadAttention calls out_proj through its weights, never its forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attention(x, x, x, need_weights=False)[0].mean(1))


def test_a_layer_called_through_its_weights_falls_back_to_vmap():
    model = Attention()
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(12, 4, 8, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    )
    params = ["attention.out_proj.*", "head.*"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        rows, engine = per_sample_rows(model, data, params, "loss", "auto", batch_size=5)
    assert engine == "vmap"
    mapped, _ = per_sample_rows(model, data, params, "loss", "vmap", batch_size=5)
    assert_same_rows(rows, mapped)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.encode = nn.Linear(4, 4)
        self.decode = nn.Linear(4, 4)
        self.decode.weight = self.encode.weight

    def forward(self, x):
        return self.decode(torch.tanh(self.encode(x)))


@pytest.mark.parametrize(
    ("model", "params"),
    [
        (Tied(), "trainable"),  # a weight shared by two layers
        (Tokens(), ["embed.*", "head.*"]),  # an embedding: no rule
        (nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False)), "1.*"),
    ],
)
def test_unsupported_parameters_use_vmap_and_hooks_on_request_is_an_error(model, params):
    chosen = resolve_params(model, params)
    computer = GradientComputer(model, chosen, "jacobian", 0, torch.device("cpu"), "auto")
    assert computer.engine == "vmap"
    with pytest.raises(ValueError, match="per_sample='hooks'"):
        GradientComputer(model, chosen, "jacobian", 0, torch.device("cpu"), "hooks")


def test_kronecker_factors():
    from skmm.gradients.structured import kronecker_factors

    assert kronecker_factors(256) == (16, 16)
    assert kronecker_factors(512) == (16, 32)
    assert kronecker_factors(7) == (1, 7)


def test_kronecker_sketch_preserves_inner_products_in_expectation():
    from skmm.gradients.structured import KroneckerSketch

    gen = torch.Generator().manual_seed(0)
    shapes = {"weight": torch.Size([6, 5]), "bias": torch.Size([6]), "conv": (3, 2, 2, 2)}
    first = {name: torch.randn(1, *shape, generator=gen) for name, shape in shapes.items()}
    second = {
        name: value + 0.5 * torch.randn(value.shape, generator=gen) for name, value in first.items()
    }
    exact = sum(float((first[n] * second[n]).sum()) for n in shapes)
    norm = sum(float(first[n].square().sum()) for n in shapes)
    products, norms = [], []
    for seed in range(600):
        maps = KroneckerSketch(shapes, 12, seed, torch.device("cpu"), torch.float64)
        a = maps.of_gradients({n: v.double() for n, v in first.items()})
        b = maps.of_gradients({n: v.double() for n, v in second.items()})
        products.append(float((a * b).sum()))
        norms.append(float(a.square().sum()))
    for values, target in ((products, exact), (norms, norm)):
        values = np.array(values)
        assert abs(values.mean() - target) < 4 * values.std() / np.sqrt(values.size)


@pytest.mark.parametrize("target", ["jacobian", "loss"])
def test_kronecker_sketch_from_factors_equals_sketch_of_formed_gradients(target):
    model, data = small_cnn(), image_data(rows=37)
    model[1].running_mean.uniform_(-0.5, 0.5)
    runs = {
        engine: sketch_gradients(
            model, data, sketch_dim=24, sketch="kronecker", target=target, per_sample=engine
        )
        for engine in ("hooks", "vmap")
    }
    assert runs["hooks"].metadata["per_sample"] == "hooks"
    assert runs["hooks"].metadata["sketch"] == "kronecker"
    scale = np.abs(runs["vmap"].features).max()
    np.testing.assert_allclose(
        runs["hooks"].features, runs["vmap"].features, rtol=1e-5, atol=1e-5 * scale
    )
    tokens = sketch_gradients(
        Tokens(),
        token_data(),
        sketch_dim=16,
        sketch="kronecker",
        params=["up.*", "down.*", "head.*"],
        target=target,
        batch_size=8,
    )
    formed = sketch_gradients(
        Tokens(),
        token_data(),
        sketch_dim=16,
        sketch="kronecker",
        params=["up.*", "down.*", "head.*"],
        target=target,
        batch_size=8,
        per_sample="vmap",
    )
    np.testing.assert_allclose(tokens.features, formed.features, rtol=1e-5, atol=1e-6)
