"""Hugging Face encoders (built from a config, no download) and LoRA adapters via PEFT."""

import numpy as np
import pytest
import torch

import skmm
from skmm.gradients import sketch_gradients
from skmm.gradients.params import resolve_params
from tiny_models import tiny_bert

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def token_batches(rows=12, length=7, batch=5, seed=0):
    """Dict batches as a Hugging Face collator makes them: padded ids, 2-D mask, labels."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (rows, length), generator=gen)
    lengths = torch.randint(2, length + 1, (rows,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    labels = torch.randint(0, 3, (rows,), generator=gen)
    return [
        {
            "input_ids": ids[i : i + batch],
            "attention_mask": mask[i : i + batch],
            "labels": labels[i : i + batch],
        }
        for i in range(0, rows, batch)
    ]


def loop_gradients(model, batches, names):
    model.eval()
    chosen = dict(model.named_parameters())
    rows = []
    for batch in batches:
        for i in range(batch["input_ids"].shape[0]):
            model.zero_grad()
            logits = model(
                input_ids=batch["input_ids"][i : i + 1],
                attention_mask=batch["attention_mask"][i : i + 1],
            ).logits[0]
            torch.nn.functional.cross_entropy(logits, batch["labels"][i]).backward()
            rows.append(torch.cat([chosen[name].grad.reshape(-1) for name in names]))
    return torch.stack(rows)


def test_bert_last_layer_and_head_match_a_per_example_loop():
    model = tiny_bert()
    batches = token_batches()
    params = ["bert.encoder.layer.1.*", "classifier.*"]
    names = [name for name, _ in resolve_params(model, params)]
    expected = skmm.sketch(loop_gradients(model, batches, names).numpy(), 8, kind="gaussian")
    result = sketch_gradients(
        model, batches, params=params, sketch_dim=8, sketch="gaussian", target="loss"
    )
    np.testing.assert_allclose(result.features, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(result.labels, torch.cat([b["labels"] for b in batches]))
    assert result.metadata["per_sample"] == "hooks"  # Linear and LayerNorm: one backward


def test_lora_adapters_are_the_trainable_parameters():
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"])
    model = peft.get_peft_model(tiny_bert(), config)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero; give it values so gradients differ
            torch.nn.init.normal_(parameter, std=0.1)
    names = [name for name, _ in resolve_params(model, "trainable")]
    assert names and all("lora_" in name or "classifier" in name for name in names)
    batches = token_batches(rows=8)
    expected = skmm.sketch(loop_gradients(model, batches, names).numpy(), 8, kind="gaussian")
    result = sketch_gradients(model, batches, sketch_dim=8, sketch="gaussian", target="loss")
    np.testing.assert_allclose(result.features, expected, rtol=1e-4, atol=1e-5)
    assert result.metadata["per_sample"] == "hooks"  # LoRA's A and B are nn.Linear


def test_a_custom_wrapper_receives_its_mask_unchanged():
    from skmm.gradients.per_sample import additive_attention_mask, is_hugging_face_model

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = tiny_bert().bert
            self.config = self.encoder.config  # looks like an HF model, is not one
            self.head = torch.nn.Linear(16, 3)

        def forward(self, input_ids, attention_mask):
            assert attention_mask.dim() == 2
            hidden = self.encoder(
                input_ids=input_ids,
                attention_mask=additive_attention_mask(attention_mask, torch.float32),
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).float()
            return self.head((hidden * weights).sum(1) / weights.sum(1))

    model = Wrapper()
    assert not is_hugging_face_model(model) and is_hugging_face_model(tiny_bert())
    result = sketch_gradients(model, token_batches(rows=6), params="head.*", sketch_dim=4)
    assert np.isfinite(result.features).all() and result.features.shape == (6, 4)
