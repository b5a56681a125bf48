"""Selections and sketches run the same way on one process and on each of P gloo ranks.

``tests/test_distributed.py`` calls :func:`selections` and :func:`sketches` in its own
process and launches this file as a script on two ranks (``RANK``/``WORLD_SIZE`` set as
torchrun sets them); every rank saves what it got, and the test compares them with the
single process's results.

    python distributed_scenarios.py WORKDIR selections sketches
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

import skmm
import skmm.design
from skmm.design import WhitenedRows, greedy_design
from skmm.distributed import world
from skmm.gradients import sketch_gradients
from skmm.inputs import as_feature_matrix
from skmm.rows import PoolRows
from skmm.store import SketchStore

POOL_ROWS = 3000
SHARD_ROWS = 32
SKETCH_OPTIONS = {"sketch_dim": 8, "batch_size": 16, "shard_rows": SHARD_ROWS, "progress": False}


def pool(rows=POOL_ROWS, cols=300, seed=0):
    """float32 rows of 12 Gaussian clusters of random sizes, with their cluster labels."""
    rng = np.random.default_rng(seed)
    centers = 4.0 * rng.standard_normal((12, cols))
    labels = rng.choice(12, size=rows, p=rng.dirichlet(np.ones(12)))
    features = centers[labels] + rng.standard_normal((rows, cols))
    return features.astype(np.float32), labels


def model_and_data(rows=300):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.randn(rows, 10, generator=gen), torch.randint(0, 3, (rows,), generator=gen)
    )
    return model, data


def prepare(workdir):
    """Files every run reads: the sketched pool as a store and as a .npy file."""
    features, _ = pool()
    sketched = skmm.sketch(features, 64, seed=5)
    np.save(workdir / "sketched.npy", sketched)
    store = SketchStore.open_for_writing(
        workdir / "sketched-store", {"sketch_dim": 64}, shard_rows=100
    )
    store.append(sketched)
    store.finish()
    tiny = SketchStore.open_for_writing(workdir / "tiny-store", {"sketch_dim": 64}, shard_rows=50)
    tiny.append(sketched[:300])
    tiny.finish()
    model, data = model_and_data()
    for tag in ("ranks2", "single"):  # interrupted at row 56: shard 0 whole, 16 rows of shard 1
        try:
            sketch_gradients(
                model,
                interrupted_at(data, 56),
                store=workdir / f"grads-resumed-{tag}",
                flush_seconds=0,
                **SKETCH_OPTIONS,
            )
        except Interrupted:
            pass
        manifest = json.loads((workdir / f"grads-resumed-{tag}" / "manifest.json").read_text())
        assert (len(manifest["shards"]), manifest["partial"]["rows"]) == (1, 16)


class Interrupted(Exception):
    pass


def interrupted_at(data, row):
    """``data`` in batches of 8 rows, raising Interrupted at ``row``."""
    for start in range(0, len(data), 8):
        if start == row:
            raise Interrupted
        yield data.tensors[0][start : start + 8], data.tensors[1][start : start + 8]


def selections(workdir, tag):
    """name -> array, for every selection the test compares (``tag`` is unused)."""
    features, labels = pool()
    out = {}
    for objective in ("aopt", "logdet", "diagonal"):
        limit = {"max_iter": 150} if objective == "diagonal" else {}
        chosen = skmm.select(
            features, 40, sketch_dim=64, objective=objective, random_state=0, **limit
        )
        out[f"skmm_{objective}"] = chosen.indices
        if chosen.weights is not None:
            out[f"skmm_{objective}_weights"] = chosen.weights
    out["skmm_stratified"] = skmm.select(
        features, 30, sketch_dim=64, labels=labels, stratify="balanced", random_state=1
    ).indices
    target = features[labels < 3][::4] + 0.5  # three of the twelve clusters, shifted
    out["skmm_candidates"] = skmm.select(
        features, 30, sketch_dim=64, target=target, candidates=4, random_state=4
    ).indices
    for objective in ("aopt", "diagonal"):  # rows of 3 blocks of 100 columns, each sketched
        limit = {"max_iter": 150} if objective == "diagonal" else {}
        out[f"skmm_blocks_{objective}"] = skmm.select(
            features, 30, sketch_dim=64, blocks=3, objective=objective, random_state=5, **limit
        ).indices
    out["skmm_sparse_sign"] = skmm.select(
        features, 25, sketch_dim=80, sketch="sparse_sign", random_state=2
    ).indices
    store = SketchStore.open(workdir / "sketched-store", verify=False).features
    out["skmm_store"] = skmm.select(store, 40, sketch_dim=64, random_state=0).indices
    out["skmm_store_blocks"] = skmm.select(store, 20, blocks=4, random_state=0).indices
    mapped = np.load(workdir / "sketched.npy", mmap_mode="r")
    out["skmm_memmap_diagonal"] = skmm.select(
        mapped, 40, sketch_dim=64, objective="diagonal", max_iter=150, random_state=0
    ).indices
    whitened = WhitenedRows(PoolRows.of(as_feature_matrix(mapped[:, :16])), None, None, keep=False)
    out["lazy_aopt"] = greedy_design(whitened, 30, "aopt", lazy=True).order
    saved, skmm.design.WINDOW_ROWS = skmm.design.WINDOW_ROWS, 16  # each rank's window in use
    try:
        out["lazy_aopt_window"] = greedy_design(whitened, 30, "aopt", lazy=True).order
    finally:
        skmm.design.WINDOW_ROWS = saved
    tiny = SketchStore.open(workdir / "tiny-store", verify=False).features  # rank 0: no rows
    for objective, extra in (("aopt", {}), ("logdet", {}), ("diagonal", {"max_iter": 50})):
        chosen = skmm.select(tiny, 12, objective=objective, random_state=1, **extra)
        out[f"tiny_{objective}"] = chosen.indices
    out["tiny_uniform"] = skmm.select(tiny, 12, "uniform", random_state=1).indices
    out["uniform"] = skmm.select(features, 50, "uniform", random_state=2).indices
    out["uniform_stratified"] = skmm.select(
        features, 50, "uniform", labels=labels, stratify=True, random_state=3
    ).indices
    try:  # an option error raised on rank 0 reaches every rank instead of leaving it waiting
        skmm.select(features, 5, "kcenter", init="farthest")
    except ValueError as error:
        out["kcenter_error"] = np.asarray(str(error))
    kcenter = skmm.select(features, 20, "kcenter", random_state=0)
    out["kcenter"] = kcenter.indices
    out["ran_on"] = np.asarray(
        [
            chosen.info.get("distributed", {}).get("ran_on", "one process")
            for chosen in (kcenter, skmm.select(features, 5, "uniform", random_state=0))
        ]
    )
    return out


def sketches(workdir, tag):
    """Sketched gradients in memory, and written to the store ``grads-{tag}``."""
    model, data = model_and_data()
    options = SKETCH_OPTIONS
    in_memory = sketch_gradients(model, data, **options)
    batches = [
        (data.tensors[0][i : i + 20], data.tensors[1][i : i + 20]) for i in range(0, 300, 20)
    ]
    streamed = sketch_gradients(model, batches, **options)
    stored = sketch_gradients(model, data, store=workdir / f"grads-{tag}", **options)
    resumed = workdir / f"grads-resumed-{tag}"  # from a partial shard, saving one each piece
    sketch_gradients(model, data, store=resumed, flush_seconds=0, **options)
    return {
        "grads": in_memory.features,
        "grads_labels": in_memory.labels,
        "grads_iterable": streamed.features,
        "grads_store": np.asarray(stored.features),
    }


PARTS = {"selections": selections, "sketches": sketches}


if __name__ == "__main__":
    directory = Path(sys.argv[1])
    rank, size = world()
    for part in sys.argv[2:]:
        results = PARTS[part](directory, f"ranks{size}")
        np.savez(directory / f"{part}-rank{rank}.npz", **results)
