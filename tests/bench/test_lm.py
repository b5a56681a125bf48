"""The LoRA answer model of the text benchmarks, on a tiny random Llama built in the test."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import skmm
from skmm.bench.lm import AnswerModel, answer_token_ids, encode_prompts, tokenize_prompts
from skmm.bench.tasks import Encoded
from skmm.bench.text_target import _Rows
from skmm.gradients import sketch_gradients
from skmm.sketch import SketchMap
from tiny_models import tiny_llama

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

ANSWER_IDS = [7, 9]


def prompts(rows=6, length=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 64, (rows, length))
    last = rng.integers(1, length, rows)
    last[0] = length - 1
    return ids, last


def with_trained_adapters(model, seed=1):
    """PEFT starts lora_B at zero (so some gradients vanish); give every adapter values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def test_the_answer_model_gives_the_full_models_answer_logits():
    """From the hidden states entering layer `first`, the right-padded prompt's answer logits
    equal the whole model's on the unpadded prompt (causal attention needs no pad mask)."""
    model = tiny_llama()
    ids, last = prompts()
    encoded = encode_prompts(model, ids, last, first=1, progress=False)
    answer = AnswerModel(model, 1, ANSWER_IDS, seed=0)
    got = answer(torch.from_numpy(encoded["hidden"]), torch.from_numpy(last))
    for row in range(len(ids)):
        prefix = torch.from_numpy(ids[row : row + 1, : last[row] + 1])
        with torch.no_grad():
            full = model(input_ids=prefix).logits[0, -1, ANSWER_IDS]
            final = model.model(input_ids=prefix).last_hidden_state[0, -1]
        torch.testing.assert_close(got[row], full, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.from_numpy(encoded["embedding"][row]), final)


def test_only_the_adapters_train_and_the_base_model_is_untouched():
    model = tiny_llama()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    answer = AnswerModel(model, 1, ANSWER_IDS, seed=0)
    trainable = [name for name, p in answer.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    kinds = {name.split(".")[-4] for name in trainable}
    assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(answer.layers) == 2  # layers 1 and 2 of 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    groups = answer.param_groups(1e-3, 0.0)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for p in answer.parameters() if p.requires_grad
    )


def test_adapters_are_seeded():
    model = tiny_llama()
    first, again, other = (AnswerModel(model, 1, ANSWER_IDS, seed=s) for s in (0, 0, 1))
    name = "layers.0.self_attn.q_proj.lora_A.default.weight"
    weights = [dict(m.named_parameters())[name] for m in (first, again, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_sketched_lora_gradients_match_a_per_example_loop_and_pool_and_target_agree():
    """sketch_gradients on the answer model: each row is the sketch of that row's own loss
    gradient (autograd, one example at a time); a target set sketched by the same call gets
    the same map: the pool's rows give the same bytes, and moved rows (in other
    micro-batches) agree to float32 rounding."""
    model = tiny_llama()
    ids, last = prompts(rows=10)
    arrays = encode_prompts(model, ids, last, first=1, progress=False)
    labels = np.arange(10) % 2
    split = Encoded({"hidden": arrays["hidden"], "position": last}, arrays["embedding"], labels)
    answer = with_trained_adapters(AnswerModel(model, 1, ANSWER_IDS, seed=0))
    options = {"sketch_dim": 16, "sketch": "gaussian", "target": "loss", "progress": False}
    result = sketch_gradients(answer, _Rows(split), batch_size=4, **options)
    sketch = result.features
    assert result.metadata["per_sample"] == "hooks"  # the two-row check passed: no fallback
    names = [name for name, p in answer.named_parameters() if p.requires_grad]
    params = dict(answer.named_parameters())
    rows = []
    for row in range(10):
        logits = answer(
            torch.from_numpy(split.inputs["hidden"][row : row + 1]),
            torch.from_numpy(last[row : row + 1]),
        )
        loss = F.cross_entropy(logits, torch.tensor([labels[row]]))
        grads = torch.autograd.grad(loss, [params[name] for name in names])
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    dense = torch.stack(rows).numpy()
    expected = SketchMap(dense.shape[1], 16, "gaussian", seed=0).apply(torch.from_numpy(dense))
    np.testing.assert_allclose(sketch, expected.numpy(), rtol=1e-3, atol=1e-5)
    same = sketch_gradients(answer, _Rows(split.subset(np.arange(4))), batch_size=4, **options)
    np.testing.assert_array_equal(same.features, sketch[:4])
    moved = split.subset(np.array([7, 2, 5]))
    again = sketch_gradients(answer, _Rows(moved), batch_size=4, **options).features
    np.testing.assert_allclose(again, sketch[[7, 2, 5]], rtol=1e-5, atol=1e-6)


def test_tokenized_prompts_keep_the_whole_suffix():
    tokenizer = FakeTokenizer()
    texts = ["a b c d e f g h", "a b"]
    ids, last = tokenize_prompts(tokenizer, texts, [" q ?", " q ?"], max_length=6)
    assert ids.shape == (2, 6)
    assert ids[0].tolist() == [1, 2, 3, 4, 17, 18] and last[0] == 5  # the text cut, not the tail
    assert ids[1].tolist() == [1, 2, 17, 18, 0, 0] and last[1] == 3  # right-padded
    with pytest.raises(ValueError, match="suffix"):
        tokenize_prompts(tokenizer, texts, [" q ? q ? q ?"] * 2, max_length=4)


def test_answers_must_be_distinct_single_tokens():
    tokenizer = FakeTokenizer()
    assert answer_token_ids(tokenizer, [" a", " b"]) == [1, 2]
    with pytest.raises(ValueError, match="one token"):
        answer_token_ids(tokenizer, [" a b", " c"])
    with pytest.raises(ValueError, match="share a token"):
        answer_token_ids(tokenizer, [" a", "a"])


class FakeTokenizer:
    """Words to ids: a..z are 1..26 by letter, '?' is 18 after 'q' (17); pad is 0."""

    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        words = text.split()
        return {"input_ids": [18 if w == "?" else ord(w) - ord("a") + 1 for w in words]}


def test_a_target_sketched_through_other_adapters_is_refused():
    """Pool and target must come from the same model and adapters: a target whose LoRA
    weights differ (another model fingerprint) is a clear error, not a silent mix."""
    model = tiny_llama()
    ids, last = prompts(rows=8)
    arrays = encode_prompts(model, ids, last, first=1, progress=False)
    labels = np.arange(8) % 2
    split = Encoded({"hidden": arrays["hidden"], "position": last}, arrays["embedding"], labels)
    options = {"sketch_dim": 8, "target": "loss", "progress": False}
    pool = sketch_gradients(
        with_trained_adapters(AnswerModel(model, 1, ANSWER_IDS, 0)), _Rows(split), **options
    )
    other = with_trained_adapters(AnswerModel(model, 1, ANSWER_IDS, 0), seed=2)
    target = sketch_gradients(other, _Rows(split.subset(np.arange(3))), **options)
    with pytest.raises(ValueError, match="model_fingerprint"):
        skmm.select(pool, 4, "skmm", target=target, random_state=0)
    same = sketch_gradients(
        with_trained_adapters(AnswerModel(model, 1, ANSWER_IDS, 0)),
        _Rows(split.subset(np.arange(3))),
        **options,
    )
    assert len(skmm.select(pool, 4, "less", target=same).indices) == 4
