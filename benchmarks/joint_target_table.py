"""One table of several targeted journals of the same task (docs/benchmarks.md, text-food).

Each journal is ``PATH`` or ``PATH:SUFFIX``; a suffix is appended to its method names (say
" (jacobian)"), so grids whose selectors saw other features sit side by side, and each
method's paired differences to uniform, less and knn of the same seeds are computed across
journals. Uniform and the references do not look at the features, so their runs in the first
journal stand for every grid. Cells with fewer than ``--seeds`` seeds are left out.

    python benchmarks/joint_target_table.py bench-out/target-text/runs.csv \\
        "bench-out/target-text-jacobian/runs.csv: (jacobian)"
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from skmm.bench.journal import read_runs_csv
from skmm.bench.report import real_markdown, summarize_real
from skmm.bench.text_target import CEILINGS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("journals", nargs="+", help="runs.csv, optionally :SUFFIX")
    parser.add_argument("--seeds", type=int, default=3, help="seeds a cell needs to be shown")
    args = parser.parse_args()
    runs = []
    for spec in args.journals:
        path, _, suffix = spec.partition(":")
        runs += [replace(r, method=r.method + suffix) for r in read_runs_csv(Path(path))]
    seeds: dict[tuple[str, int], set[int]] = {}
    for run in runs:
        seeds.setdefault((run.method, run.n), set()).add(run.seed)
    complete = [
        r for r in runs if len(seeds[(r.method, r.n)]) >= args.seeds or r.method == "zero-shot"
    ]
    baselines = ["uniform", "less", "knn"]
    print(real_markdown(summarize_real(complete), complete, ceilings=CEILINGS, baselines=baselines))


if __name__ == "__main__":
    main()
