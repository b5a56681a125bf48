"""`params`: "last:K" counts blocks (transformer layers, the head), and the choice is printed."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import skmm
from skmm.gradients.params import blocks, describe_params, resolve_params
from tiny_models import tiny_bert

transformers = pytest.importorskip("transformers")


def names(model, params):
    return [name for name, _ in resolve_params(model, params)]


def test_last_2_of_a_transformer_classifier_is_the_last_layer_and_the_head():
    model = tiny_bert()
    chosen = names(model, "last:2")
    assert chosen == names(model, ["bert.encoder.layer.1.*", "bert.pooler.*", "classifier.*"])
    assert names(model, "last:1") == names(model, ["bert.pooler.*", "classifier.*"])
    assert len(blocks(model)) == 4  # embeddings, layer 0, layer 1, head
    with pytest.raises(ValueError, match="1 <= K <= 4"):
        resolve_params(model, "last:5")


def test_last_k_of_a_plain_stack_is_its_last_layers_with_parameters():
    cnn = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)
    )
    assert names(cnn, "last:2") == ["1.weight", "1.bias", "4.weight", "4.bias"]

    class Mlp(nn.Module):  # no stack: one block per module with parameters
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)

    assert names(Mlp(), "last:2") == ["b.weight", "b.bias", "c.weight", "c.bias"]


def test_the_chosen_parameters_are_described_and_printed(capsys):
    model = tiny_bert()
    described = describe_params(model, names(model, "last:2"))
    assert described == (
        "20 parameter tensors: bert.encoder.layer.1.* (16), bert.pooler.* (2), classifier.* (2)"
    )
    assert describe_params(model, names(model, "trainable")) == "41 parameter tensors: all 41"
    data = TensorDataset(torch.randint(1, 40, (4, 5)))
    skmm.sketch_gradients(model, data, params="last:2", sketch_dim=4)
    err = capsys.readouterr().err
    assert "skmm: gradients of 20 parameter tensors: bert.encoder.layer.1.* (16)" in err
    skmm.sketch_gradients(model, data, params="last:2", sketch_dim=4, progress=False)
    assert capsys.readouterr().err == ""
