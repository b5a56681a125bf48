"""Hugging Face encoders (built from a config, no download) and LoRA adapters via PEFT."""

import numpy as np
import pytest
import torch

import skmm
from skmm.gradients import sketch_gradients
from skmm.gradients.params import resolve_params
from tiny_models import tiny_bert, tiny_llama

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


def tiny_causal_lm(seed=0):
    base = tiny_llama(vocab_size=50, hidden=16, layers=2, seed=seed)
    lora = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(base, lora)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero; give it values
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def lm_rows(lengths=(10, 7, 5, 10, 3, 8), length=10, prompt=2, seed=0):
    """Right-padded token ids, their 2-D mask, and token labels: the ids, with -100 on the
    padding and on the first ``prompt`` tokens (a prompt the loss does not score)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 50, (len(lengths), length), generator=gen)
    mask = (torch.arange(length) < torch.tensor(lengths)[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :prompt] = -100
    return ids, mask, labels


@pytest.mark.parametrize("engine", ["auto", "vmap"])
def test_causal_lm_token_loss_matches_its_own_loss_per_example(engine):
    """target="loss" with token labels on a PEFT-wrapped LlamaForCausalLM: each row is the
    gradient of the model's own (shifted, -100-ignoring) loss on that example alone, unpadded;
    right padding is masked and attention stays causal."""
    model = tiny_causal_lm()
    ids, mask, labels = lm_rows()
    names = [name for name, _ in resolve_params(model, "trainable")]
    chosen = dict(model.named_parameters())
    rows = []
    for i, length in enumerate(mask.sum(1).tolist()):
        model.zero_grad()
        model(input_ids=ids[i : i + 1, :length], labels=labels[i : i + 1, :length]).loss.backward()
        rows.append(torch.cat([chosen[name].grad.reshape(-1) for name in names]))
    expected = skmm.sketch(torch.stack(rows).numpy(), 8, kind="gaussian")
    data = [
        {
            "input_ids": ids[i : i + 3],
            "attention_mask": mask[i : i + 3],
            "labels": labels[i : i + 3],
        }
        for i in (0, 3)
    ]
    options = {"sketch_dim": 8, "sketch": "gaussian", "target": "loss", "per_sample": engine}
    result = sketch_gradients(model, data, **options)
    np.testing.assert_allclose(result.features, expected, rtol=1e-4, atol=1e-6)
    assert result.metadata["per_sample"] == ("hooks" if engine == "auto" else "vmap")


def test_an_example_with_no_scored_token_has_a_zero_gradient():
    model = tiny_causal_lm()
    ids, mask, labels = lm_rows(lengths=(6, 6, 6), length=6)
    labels[1] = -100
    data = [{"input_ids": ids, "attention_mask": mask, "labels": labels}]
    result = sketch_gradients(model, data, sketch_dim=4, target="loss")
    assert not result.features[1].any() and result.features[[0, 2]].any()


def test_a_token_classifier_scores_each_position_unshifted():
    """Labels (B, T) on outputs (B, T, K) of a model that is not a causal LM: position t's
    logits score label t, no shift."""

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(20, 6)
            self.head = torch.nn.Linear(6, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.embed(x)))

    torch.manual_seed(0)
    model = Tagger()
    tokens = torch.randint(0, 20, (4, 5))
    tags = torch.randint(0, 3, (4, 5))
    tags[0, 3:] = -100
    rows = []
    for i in range(4):
        model.zero_grad()
        keep = tags[i] != -100
        loss = torch.nn.functional.cross_entropy(model(tokens[i : i + 1])[0][keep], tags[i][keep])
        loss.backward()
        rows.append(torch.cat([model.head.weight.grad.reshape(-1), model.head.bias.grad]))
    expected = skmm.sketch(torch.stack(rows).numpy(), 4, kind="gaussian")
    result = sketch_gradients(
        model,
        [({"x": tokens}, tags)],
        params="head.*",
        sketch_dim=4,
        sketch="gaussian",
        target="loss",
    )
    np.testing.assert_allclose(result.features, expected, rtol=1e-4, atol=1e-6)


def test_the_causal_mask_blocks_later_keys_and_padding():
    from skmm.gradients.per_sample import additive_attention_mask, is_causal_lm

    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    blocked = additive_attention_mask(mask, torch.float32, causal=True) < 0
    assert blocked.shape == (2, 1, 3, 3)
    assert blocked[0, 0].tolist() == [
        [False, True, True],
        [False, False, True],
        [False, False, True],
    ]
    assert torch.equal(blocked[1, 0], torch.ones(3, 3, dtype=torch.bool).triu(1))
    assert is_causal_lm(tiny_causal_lm()) and not is_causal_lm(tiny_bert())
