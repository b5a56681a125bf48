import pytest

from skmm.bench.journal import RealRun
from skmm.bench.report import real_markdown, summarize_real, training_line


def test_summary_tables_mark_the_best_mean():
    runs = [
        RealRun("t", "linear", method, 10, seed, accuracy, accuracy, 0.1, 0.2)
        for method, values in (("skmm", (0.8, 0.9)), ("uniform", (0.7, 0.7)))
        for seed, accuracy in enumerate(values)
    ]
    summaries = summarize_real(runs)
    assert summaries[0].accuracy_mean == pytest.approx(0.85)
    assert summaries[0].accuracy_std == pytest.approx(0.05)
    table = real_markdown(summaries)
    assert "| skmm | **0.850 ± 0.050** |" in table
    assert "| uniform | 0.700 ± 0.000 |" in table


def test_tables_show_missing_cells_and_short_seed_counts():
    runs = [
        RealRun("t", "linear", "skmm", n, seed, 0.5, 0.5, 0.1, 0.2)
        for n in (10, 20)
        for seed in (0, 1)
    ]
    runs += [RealRun("t", "linear", "uniform", 10, 0, 0.6, 0.6, 0.1, 0.2)]
    table = real_markdown(summarize_real(runs))
    assert "| uniform | **0.600 ± 0.000 (1 seeds)** | — |" in table
    assert "| skmm | 0.500 ± 0.000 | **0.500 ± 0.000** |" in table


def test_the_training_line_names_penalties_and_learning_rates():
    hyper = {"steps": 10, "batch_size": 16, "lr_body": 5e-5, "lr_head": 2e-3}
    line = training_line({"penalties": {"20": 0.01, "50": 1.0}, "finetune": hyper, "tuning": None})
    assert line == (
        " Linear probe L2 penalty, tuned on the pool: n = 20: 0.01, n = 50: 1."
        " Finetuning: AdamW, 10 steps of 16, lr 5.0e-05 (layers) / 2.0e-03 (head),"
        " the task's defaults (not tuned)."
    )
    tuning = {"budget": 40, "validation_accuracy": {"0.3": 0.5, "1.0": 0.625}}
    assert training_line({"finetune": hyper, "tuning": tuning}).endswith(
        "tuned on the pool (uniform n = 40, validation accuracy ×0.3: 0.500, ×1.0: 0.625)."
    )
    assert training_line({}) == ""
