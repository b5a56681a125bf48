import numpy as np
import pytest

from skmm.bench.journal import RealRun
from skmm.bench.report import paired_differences, real_markdown, summarize_real, training_line


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


def test_paired_differences_and_ceilings_by_hand():
    accuracy = {"uniform": (0.60, 0.70, 0.65), "skmm": (0.70, 0.72, 0.70)}
    runs = [
        RealRun("t", "finetune", method, 10, seed, value, value, 0.1, 0.2)
        for method, values in accuracy.items()
        for seed, value in enumerate(values)
    ]
    runs += [RealRun("t", "finetune", "skmm", 20, 0, 0.9, 0.9, 0.1, 0.2)]  # no uniform pair
    runs += [RealRun("t", "finetune", "full-pool", 90, s, 0.8, 0.8, 0, 1) for s in range(2)]
    runs += [RealRun("t", "linear", "full-pool", 90, 0, 0.75, 0.7, 0, 1)]
    differences = paired_differences(runs)
    mean, error, seeds = differences[("finetune", "skmm", 10)]
    assert mean == pytest.approx(0.0566667, abs=1e-6) and seeds == 3
    assert error == pytest.approx(np.std([0.10, 0.02, 0.05], ddof=1) / np.sqrt(3))
    assert ("finetune", "skmm", 20) not in differences
    table = real_markdown(summarize_real(runs), runs)
    assert "n=90" not in table  # the full pool is a line, not a column
    assert "Full pool (90 rows, the ceiling): 0.800 ± 0.000 over 2 seed(s)." in table
    assert "Full pool (90 rows, the linear probe on the same pool): 0.750" in table
    assert "| skmm | **+0.057 ± 0.023** | — |" in table
    one_seed = [run for run in runs if run.seed == 0]
    assert "| skmm | +0.100 (1 seed) | — |" in real_markdown(summarize_real(one_seed), one_seed)


def test_the_training_line_names_penalties_and_learning_rates():
    hyper = {"min_steps": 10, "max_steps": 10, "batch_size": 16, "lr_body": 5e-5, "lr_head": 2e-3}
    line = training_line({"penalties": {"20": 0.01, "50": 1.0}, "finetune": hyper, "tuning": None})
    assert line == (
        " Linear probe L2 penalty, tuned on the pool: n = 20: 0.01, n = 50: 1."
        " Finetuning: AdamW, 10 steps, batches of 16, lr 5.0e-05 (layers) / 2.0e-03 (head),"
        " the task's defaults (not tuned)."
    )
    schedule = {**hyper, "epochs": 20, "max_steps": 600, "eval_every": 25, "patience": 4}
    assert training_line({"finetune": schedule, "tuning": None, "validation_rows": 500}) == (
        " 500 pool rows set aside for validation (stratified; no selector sees them)."
        " Finetuning: AdamW, 20 epochs within 10–600 steps, early stopping on the validation"
        " part (every 25 steps, patience 4), batches of 16, lr 5.0e-05 (layers) / 2.0e-03"
        " (head), the task's defaults (not tuned)."
    )
    tuning = {"budget": 40, "validation_accuracy": {"0.3": 0.5, "1.0": 0.625}}
    assert training_line({"finetune": hyper, "tuning": tuning}).endswith(
        "tuned on the pool (uniform n = 40, validation accuracy ×0.3: 0.500, ×1.0: 0.625)."
    )
    assert training_line({}) == ""
