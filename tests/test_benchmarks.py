"""CI smoke for benchmarks/: every script's quick mode runs and prints its tables.

No time is asserted here (speed lives in the benchmarks and docs/performance.md); this only
keeps the scripts runnable as the code changes.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADINGS = {
    "sketch": ["## Rates", "## Peers", "## Streamed", "## Time against N", "## Selection quality"],
    "moments": ["## m = "],
    "gradients": ["## Throughput"],
    "baselines": ["## k-center greedy and herding", "## Time against N", "## Facility location"],
    "gradmatch": ["## Pursuit time and quality"],
    "greedy": [
        "## Targets",
        "## Lazy against plain A-optimal greedy",
        "## End-to-end SkMM selection",
    ],
    "sparse": ["## Sparse against dense", "## Time against nnz"],
}


def test_every_benchmark_prints_its_tables_in_quick_mode():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])
        ),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--threads", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    sections = re.split(r"<!-- (\w+): .*? -->", done.stdout)
    for name, headings in HEADINGS.items():
        assert f"<!-- {name}: exit 0" in done.stdout
        text = sections[sections.index(name) + 1]
        assert text.lstrip().startswith("# ") and "command: `" in text and "machine: " in text
        for heading in headings:
            assert heading in text, f"{name}: no {heading!r}"
        tables = re.findall(r"^\|---\|.*\n((?:\|.*\|\n)+)", text, flags=re.MULTILINE)
        assert len(tables) >= len(headings), f"{name}: a table has no rows"
