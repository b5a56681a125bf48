"""What a selection says about itself: summary, warnings, the picture, and training with it."""

import sys
import warnings

import numpy as np
import pytest
import torch

import skmm
from skmm.selection import SelectionWarning


def clusters(rows=600, classes=4, dim=20, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, dim)) * 3
    labels = rng.integers(0, classes, rows)
    features = (centers[labels] + rng.standard_normal((rows, dim))).astype(np.float32)
    return features, labels


def test_the_summary_reports_classes_directions_c_s_and_timings():
    features, labels = clusters()
    selection = skmm.select(
        features, 40, labels=labels, random_state=0, sketch_dim=16, stratify=False
    )
    text = selection.summary()
    lines = text.splitlines()
    assert lines[0].startswith("selected 40 of 600 rows with skmm in ")
    assert lines[0].endswith("(seed 0)")
    assert "stages: sketch " in text and "design " in text
    k = selection.info["directions"]["k"]
    assert f"directions matched: k = {k} of m = 16 about the mean, and the intercept (rule " in text
    c_s, matched = selection.info["c_S"], selection.info["c_S_directions"]
    assert matched == k + 1
    assert (
        f"c_S = {c_s:.3g} on the {matched} matched directions: the coreset's worst-covered "
        f"direction has 1/{c_s:.3g} = {100 / c_s:.0f}% of the pool's energy (lower is better; "
        "1 = as well covered as the pool)"
    ) in text
    counts = selection.info["class_counts"]
    assert counts["labels"] == [0, 1, 2, 3] and sum(counts["coreset"]) == 40
    assert counts["pool"] == np.bincount(labels).tolist()
    row = lines[[line.split()[:1] for line in lines].index(["0"])]
    pool0, core0 = counts["pool"][0], counts["coreset"][0]
    assert row.split() == [
        "0",
        str(pool0),
        f"{100 * pool0 / 600:.1f}%",
        str(core0),
        f"{100 * core0 / 40:.1f}%",
    ]


def test_a_left_out_class_and_few_directions_are_warned_about():
    features, labels = clusters(classes=6)
    with pytest.warns(SelectionWarning, match=r"of 6 labeled classes got no rows.*at least 6"):
        skmm.select(features, 3, "uniform", labels=labels, random_state=0)
    labels[labels == 5] = 4
    labels[0] = 5  # a class of one row
    left_out = r"of 6 labeled classes got no rows.*\(.*5\); pass stratify=True"
    with pytest.warns(SelectionWarning, match=left_out):
        skmm.select(features, 10, "uniform", labels=labels, random_state=0)
    two_clusters, _ = clusters(classes=2)
    with pytest.warns(SelectionWarning, match=r"SkMM matched only [12] direction"):
        selection = skmm.select(two_clusters, 10, random_state=0, directions="gap")
    assert "warning: SkMM matched only" in selection.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SelectionWarning)  # a chosen k is not warned about
        skmm.select(two_clusters, 10, random_state=0, directions=2)


def test_balanced_strata_below_the_number_of_classes_warn():
    features, labels = clusters(classes=5)
    with pytest.warns(SelectionWarning, match=r"2 class\(es\) get no rows.*n = 3 is below the 5"):
        selection = skmm.select(
            features, 3, "uniform", labels=labels, stratify="balanced", random_state=0
        )
    assert len(selection) == 3


def test_random_state_used_says_when_the_seed_changed_nothing():
    features, labels = clusters()
    unsketched = skmm.select(features, 20, random_state=0)  # r = 20 <= m: a greedy design
    assert unsketched.info["random_state_used"] is False
    assert "deterministic" in unsketched.info["random_state_note"]
    again = skmm.select(features, 20, random_state=1)
    np.testing.assert_array_equal(unsketched.indices, again.indices)
    for method, options in (("herding", {}), ("kcenter", {"init": "mean"})):
        assert not skmm.select(features, 20, method, random_state=0, **options).info[
            "random_state_used"
        ]
    for method, options in (("uniform", {}), ("skmm", {"sketch_dim": 8}), ("kcenter", {})):
        info = skmm.select(features, 20, method, random_state=0, **options).info
        assert info["random_state_used"] and "random_state_note" not in info
    stratified = skmm.select(features, 20, "uniform", labels=labels, stratify=True, random_state=0)
    assert stratified.info["random_state_used"]
    assert all("timings" in entry for entry in stratified.info["classes"])


def test_sampler_draws_rows_of_the_subset_by_weight():
    features, labels = clusters(rows=200)
    selection = skmm.select(features, 30, "craig", labels=labels, random_state=0)
    assert selection.weights is not None
    sampler = selection.sampler(num_samples=20_000, seed=0)
    drawn = np.bincount(list(sampler), minlength=30) / 20_000
    np.testing.assert_allclose(drawn, selection.weights, atol=0.02)
    assert list(selection.sampler(seed=3)) == list(selection.sampler(seed=3))
    assert len(list(skmm.select(features, 5, "uniform", random_state=0).sampler())) == 5


def test_a_weight_column_carries_the_weights_into_a_hugging_face_subset():
    datasets = pytest.importorskip("datasets")
    features, labels = clusters(rows=200)
    data = datasets.Dataset.from_dict({"x": features.tolist(), "label": labels.tolist()})
    selection = skmm.select(features, 30, "craig", labels=labels, random_state=0)
    subset = selection.subset(data, weight_column="weight")
    np.testing.assert_allclose(subset["weight"], selection.weights * 30)
    assert subset["label"] == labels[selection.indices].tolist()
    with pytest.raises(TypeError, match="selection.sampler"):
        selection.subset(features, weight_column="weight")


def test_labels_alone_give_one_design_per_class_and_the_summary_shows_each():
    features, labels = clusters()
    selection = skmm.select(features, 40, labels=labels, random_state=0, sketch_dim=16)
    assert selection.info["params"]["stratify"] == "proportional"
    text = selection.summary()
    assert "one design per class (its own moments about its mean, and the intercept)" in text
    assert "stages: sketch " in text and "design " in text
    rows = {line.split()[0]: line.split() for line in text.splitlines()[4:8]}
    for entry in selection.info["classes"]:
        row = rows[str(entry["label"])]
        assert int(row[5]) == entry["directions"]["k"]
        assert float(row[6]) == pytest.approx(entry["c_S"], rel=1e-2)


def test_the_picture_is_a_png_with_spectrum_pool_and_classes(tmp_path):
    pytest.importorskip("matplotlib")
    features, labels = clusters()
    selection = skmm.select(features, 30, labels=labels, random_state=0, sketch_dim=16)
    figure = selection.plot(features, labels, path=tmp_path / "coreset.png")
    assert (tmp_path / "coreset.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(figure.axes) == 3
    assert "k = " in figure.axes[0].get_title()
    unlabeled = skmm.select(features, 30, "kcenter", random_state=0).plot(features)
    assert len(unlabeled.axes) == 2
    with pytest.raises(ValueError, match="pool of 600"):
        selection.plot(features[:100])


def test_the_picture_without_matplotlib_says_what_to_install(monkeypatch):
    features, _ = clusters()
    selection = skmm.select(features, 5, "uniform", random_state=0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        selection.plot(features)


def test_a_torch_loader_trains_with_the_sampler():
    features, labels = clusters(rows=200)
    selection = skmm.select(features, 30, "craig", labels=labels, random_state=0)
    data = torch.utils.data.TensorDataset(torch.from_numpy(features), torch.from_numpy(labels))
    loader = torch.utils.data.DataLoader(
        selection.subset(data), batch_size=10, sampler=selection.sampler(seed=0)
    )
    seen = torch.cat([y for _, y in loader])
    assert seen.shape == (30,) and set(seen.tolist()) <= set(labels[selection.indices].tolist())


def test_a_targeted_summary_names_the_target_and_the_candidates():
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((400, 6))
    target = rng.standard_normal((30, 6)) + 2.0
    text = skmm.select(pool, 20, target=target, candidates=4, random_state=0).summary()
    assert "of the target's 30 rows" in text
    assert "chosen among the 80 pool rows nearest the target (candidates = 4" in text
    assert "target's energy" in text
    plain = skmm.select(pool, 20, target=target, random_state=0).summary()
    assert "of the target's 30 rows" in plain and "nearest the target" not in plain
