"""What users hand `sketch_gradients` first: Hugging Face datasets, tuples, masks, dicts."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import skmm
from skmm.store import SketchStore
from tiny_models import tiny_bert

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

ROWS, LENGTH = 12, 7


def token_columns():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 40, (ROWS, LENGTH), generator=gen)
    lengths = torch.randint(2, LENGTH + 1, (ROWS,), generator=gen)
    mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).long()
    labels = torch.randint(0, 3, (ROWS,), generator=gen)
    return ids * mask, mask, labels


def reference(labels=True, target="jacobian"):
    """The same rows as dict batches of tensors, the shape skmm always took."""
    ids, mask, label_rows = token_columns()
    batches = []
    for start in range(0, ROWS, 5):
        batch = {"input_ids": ids[start : start + 5], "attention_mask": mask[start : start + 5]}
        if labels:
            batch["labels"] = label_rows[start : start + 5]
        batches.append(batch)
    return skmm.sketch_gradients(
        tiny_bert(), batches, sketch_dim=8, batch_size=5, target=target, progress=False
    )


def hf_dataset(labels=True):
    ids, mask, label_rows = token_columns()
    columns = {
        "input_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "text": [f"review {i}" for i in range(ROWS)],  # left out: not numeric
        "idx": list(range(ROWS)),  # left out: BertForSequenceClassification takes no idx
    }
    if labels:
        columns["label"] = label_rows.tolist()
    return datasets.Dataset.from_dict(columns)


@pytest.mark.parametrize("torch_format", [False, True])
@pytest.mark.parametrize("labels", [True, False])
def test_a_hugging_face_dataset_is_read_in_batches_of_rows(torch_format, labels):
    data = hf_dataset(labels)
    if torch_format:
        data = data.with_format("torch")
    result = skmm.sketch_gradients(tiny_bert(), data, sketch_dim=8, batch_size=5, progress=False)
    expected = reference(labels)
    np.testing.assert_allclose(result.features, expected.features, rtol=1e-5, atol=1e-6)
    if labels:
        np.testing.assert_array_equal(result.labels, token_columns()[2].numpy())
    else:
        assert result.labels is None


def test_a_hugging_face_iterable_dataset_and_the_loss_target():
    data = hf_dataset().to_iterable_dataset()
    result = skmm.sketch_gradients(
        tiny_bert(), data, sketch_dim=8, batch_size=5, target="loss", progress=False
    )
    expected = reference(target="loss")
    np.testing.assert_allclose(result.features, expected.features, rtol=1e-5, atol=1e-6)
    selection = skmm.select(result, 4, random_state=0, stratify=True)
    assert len(selection) == 4


def test_what_a_hugging_face_dataset_cannot_be_gets_the_fix():
    ids, _, labels = token_columns()
    ragged = datasets.Dataset.from_dict(
        {"input_ids": [row[: 2 + i % 4] for i, row in enumerate(ids.tolist())], "label": labels}
    )
    with pytest.raises(ValueError, match="different lengths.*padding='max_length'"):
        skmm.sketch_gradients(tiny_bert(), ragged, sketch_dim=8, progress=False)
    with pytest.raises(ValueError, match="different lengths.*DataCollatorWithPadding"):
        skmm.sketch_gradients(
            tiny_bert(), ragged.with_format("torch"), sketch_dim=8, progress=False
        )
    text = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    with pytest.raises(ValueError, match="no numeric column.*tokenize"):
        skmm.sketch_gradients(tiny_bert(), text, sketch_dim=8, progress=False)
    splits = datasets.DatasetDict({"train": hf_dataset(), "test": hf_dataset()})
    with pytest.raises(TypeError, match=r"pass one split, e.g. dataset\['train'\]"):
        skmm.sketch_gradients(tiny_bert(), splits, sketch_dim=8, progress=False)
    with pytest.raises(TypeError, match="holds examples, not features"):
        skmm.select(hf_dataset(), 3)


def test_skmm_sketch_takes_a_task_returning_a_hugging_face_dataset(tmp_path):
    task = tmp_path / "task.py"
    task.write_text(
        textwrap.dedent(
            """
            import datasets, torch, transformers

            def make():
                torch.manual_seed(0)
                config = transformers.BertConfig(
                    vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=16, num_labels=3)
                model = transformers.BertForSequenceClassification(config)
                gen = torch.Generator().manual_seed(0)
                ids = torch.randint(1, 40, (10, 6), generator=gen).tolist()
                data = datasets.Dataset.from_dict(
                    {"input_ids": ids, "attention_mask": [[1] * 6] * 10, "label": [0, 1] * 5})
                return model, data
            """
        )
    )
    out = tmp_path / "store"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "skmm",
            "sketch",
            "--task",
            f"{task}:make",
            "--out",
            str(out),
            "--sketch-dim",
            "8",
            "--params",
            "last:2",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    store = SketchStore.open(out)
    assert store.shape == (10, 8)
    np.testing.assert_array_equal(store.labels, [0, 1] * 5)


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def test_a_mask_passed_as_the_second_item_of_a_tuple_is_refused_with_the_fix():
    hidden = torch.randn(6, 4, 3)
    mask = torch.ones(6, 4)
    for second in (mask, mask.long()):
        with pytest.raises(ValueError, match=r"read as \(inputs, labels\).*shape \(6, 4\).*dict"):
            skmm.sketch_gradients(
                small_model(), TensorDataset(hidden, second), sketch_dim=4, progress=False
            )
    regression = torch.randn(6, 3)  # (B, K) float targets stay labels
    result = skmm.sketch_gradients(
        small_model(),
        TensorDataset(hidden, regression),
        sketch_dim=4,
        target="loss",
        progress=False,
    )
    assert result.features.shape == (6, 4) and result.labels is None


def test_three_parts_and_single_examples_get_the_shape_that_works():
    three = TensorDataset(torch.randn(6, 12), torch.ones(6, 12), torch.zeros(6).long())
    with pytest.raises(ValueError, match=r"3 parts.*as a dict.*\(\{\.\.\.\}, labels\)"):
        skmm.sketch_gradients(small_model(), three, sketch_dim=4, progress=False)
    examples = [(torch.randn(12), torch.tensor(1)) for _ in range(4)]  # rows, not batches
    with pytest.raises(ValueError, match="single example.*torch Dataset"):
        skmm.sketch_gradients(small_model(), examples, sketch_dim=4, progress=False)


def test_skmms_own_vmap_check_raises_no_performance_warning(recwarn):
    params = ["bert.encoder.layer.1.*", "classifier.*"]  # the hooks engine, checked once
    result = skmm.sketch_gradients(
        tiny_bert(), hf_dataset(), params=params, sketch_dim=8, batch_size=5, progress=False
    )
    assert result.metadata["per_sample"] == "hooks"
    assert not [w for w in recwarn if "performance drop" in str(w.message)]


def test_a_bare_array_or_tensor_is_refused_with_the_dataset_that_works():
    for data in (np.zeros((6, 12), dtype=np.float32), torch.zeros(6, 12)):
        with pytest.raises(TypeError, match=r"TensorDataset\(torch.as_tensor\(inputs\)"):
            skmm.sketch_gradients(small_model(), data, sketch_dim=4, progress=False)
