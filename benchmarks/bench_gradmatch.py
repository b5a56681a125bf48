"""GRAD-MATCH's pursuit side by side: skmm against CORDS, the GRAD-MATCH authors' library.

Both solve min_{w ≥ 0, |supp w| ≤ n} ‖Σ_i w_i g_i − ḡ‖² + λ‖w‖² by orthogonal matching pursuit
with a non-negative refit after every pick, on the same explicit gradient matrix:

- skmm: ``skmm.selectors.gradient_matching.nonnegative_omp`` on ``DenseGradients(G)`` (the
  refit keeps a Cholesky factor of the passive picks between picks, O(k²) per change);
- CORDS (PyPI ``cords`` 0.0.4, installed with ``--no-deps`` by ``make bench``):
  ``OrthogonalMP_REG_NNLS_Parallel(Gᵀ, ḡ, nnz=n, positive=True, lam=λ)``, which rebuilds
  G_S G_Sᵀ + λI and calls ``scipy.optimize.nnls`` on it after every pick. Its refit solves
  min_{w ≥ 0} ‖(G_S G_Sᵀ + λI)w − G_S ḡ‖, which equals skmm's refit while no weight is held
  at 0 and differs after, so the picks agree up to the first binding constraint; it also
  stops when a pick repeats.

Pool: gradients of a softmax probe's head on Gaussian classes, g_i = [(p_i − e_{y_i}) ⊗ x_i,
p_i − e_{y_i}] (N rows, C(d+1) columns, float32), target ḡ their mean, λ = 1 (GRAD-MATCH's
default). The two run alternately in one process; the table gives medians, the ratio, the
picks in common and the relative residual ‖Σ w_i g_i − ḡ‖/‖ḡ‖ each reaches (lower is better).

    python benchmarks/bench_gradmatch.py             # N = 4,000, n up to 600
    python benchmarks/bench_gradmatch.py --quick     # seconds (CI smoke)
"""

from __future__ import annotations

import argparse
import importlib

import numpy as np
import torch
from common import fmt_seconds, interleaved, median, preamble, set_threads, table

from skmm.selectors.gradient_matching import DenseGradients, nonnegative_omp

LAM = 1.0


def probe_gradients(rows: int, features: int, classes: int, seed: int) -> torch.Tensor:
    """Head gradients of a random softmax probe on Gaussian classes, (rows, C·(d + 1))."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    centers = rng.normal(size=(classes, features))
    x = centers[labels] + 1.5 * rng.normal(size=(rows, features))
    weight = 0.3 * rng.normal(size=(classes, features))
    logits = x @ weight.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    residual = p - np.eye(classes)[labels]
    gradients = np.concatenate(
        [(residual[:, :, None] * x[:, None, :]).reshape(rows, -1), residual], axis=1
    )
    return torch.from_numpy(gradients.astype(np.float32))


def cords_pursuit():
    """CORDS' NNLS pursuit, or None when cords is not installed. Importing it switches numpy
    to raise on every floating-point warning (``np.seterr(all="raise")``); that is undone."""
    saved = np.geterr()
    try:
        module = importlib.import_module("cords.selectionstrategies.helpers.omp_solvers")
    except ImportError:
        return None
    finally:
        np.seterr(**saved)
    return module.OrthogonalMP_REG_NNLS_Parallel


def relative_residual(gradients: torch.Tensor, target: torch.Tensor, weights: np.ndarray) -> float:
    combined = torch.from_numpy(weights.astype(np.float64)) @ gradients.double()
    return float((combined - target.double()).norm() / target.double().norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--rows", type=int, default=None, help="pool size N")
    parser.add_argument("--budgets", type=int, nargs="+", default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    rows = args.rows or (300 if args.quick else 4000)
    features, classes = (8, 3) if args.quick else (64, 10)
    budgets = args.budgets or ([10, 30] if args.quick else [100, 300, 600])
    repeats = args.repeats or (1 if args.quick else 2)
    preamble("GRAD-MATCH pursuit: skmm vs CORDS")
    gradients = probe_gradients(rows, features, classes, seed=0)
    dense = DenseGradients(gradients)
    target = dense.mean()  # float64, as in skmm's selector; CORDS gets it in float32
    peer = cords_pursuit()
    print(
        f"pool: N = {rows}, {gradients.shape[1]} gradient columns (d = {features}, "
        f"C = {classes}), float32, λ = {LAM}; {repeats} repeat(s), medians\n"
    )
    if peer is None:
        print("CORDS not installed (make bench installs it: pip install --no-deps cords==0.0.4)\n")
    transposed, target32 = gradients.T.contiguous(), target.float()
    results = []
    for n in budgets:
        out: dict[str, object] = {}

        def ours(n: int = n, out: dict = out) -> None:
            out["skmm"] = nonnegative_omp(dense, target, n, LAM)

        def theirs(n: int = n, out: dict = out) -> None:
            out["cords"] = peer(transposed, target32, nnz=n, positive=True, lam=LAM).numpy()

        contenders = {"skmm": ours} | ({"cords": theirs} if peer else {})
        times = interleaved(contenders, repeats)
        pursuit = out["skmm"]
        weights = np.zeros(rows)
        weights[pursuit.support] = pursuit.weights
        row = [
            n,
            fmt_seconds(median(times["skmm"])),
            f"{relative_residual(gradients, target, weights):.4f}",
        ]
        if peer:
            theirs_weights = out["cords"]
            picked = set(np.flatnonzero(theirs_weights))
            common = len(picked & set(pursuit.support)) / max(1, len(pursuit.support))
            row += [
                fmt_seconds(median(times["cords"])),
                f"**{median(times['cords']) / median(times['skmm']):.1f}×**",
                len(picked),
                f"{relative_residual(gradients, target, theirs_weights):.4f}",
                f"{100 * common:.0f}%",
            ]
        else:
            row += ["—"] * 5
        results.append(row)
    print("## Pursuit time and quality\n")
    header = [
        "n",
        "skmm s",
        "skmm residual",
        "CORDS s",
        "speed-up",
        "CORDS nonzero picks",
        "CORDS residual",
        "picks in common",
    ]
    print(table(header, results))


if __name__ == "__main__":
    main()
