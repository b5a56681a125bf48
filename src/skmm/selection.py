"""The result of a selection: indices, optional weights and diagnostics, with safe file I/O."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import load_array, read_json, sniff_format, write_json, write_npy, write_npz

FORMAT = "skmm.selection"
FORMAT_VERSION = 1
AUTOMATIC_RULES = ("budget", "eigengap", "sketch", "rank")
"""SkMM's direction rules that choose k from the spectrum (not given, not the rank)."""


class SelectionWarning(UserWarning):
    """A selection that is valid but suspicious (a class left out, very few directions)."""


def selection_warnings(info: dict[str, Any]) -> list[str]:
    """What looks wrong about a selection from its ``info``: a labeled class that got no rows
    (without ``stratify``, which warns about its own budgets; for a targeted selection the
    message says it is expected where the target lacks the class), or SkMM matching only one
    or two directions by an automatic rule."""
    found: list[str] = []
    counts = info.get("class_counts")
    stratify = (info.get("params") or {}).get("stratify")
    if counts and stratify in (None, False):
        missing = [
            label
            for label, pool, got in zip(
                counts["labels"], counts["pool"], counts["coreset"], strict=True
            )
            if pool > 0 and got == 0
        ]
        if missing:
            named = ", ".join(map(repr, missing[:5])) + (" ..." if len(missing) > 5 else "")
            present = sum(1 for pool in counts["pool"] if pool > 0)
            n = int(info.get("n") or sum(counts["coreset"]))
            if n < present:
                fix = f"n = {n} is below the {present} classes: raise n to at least {present}"
            elif "target" in info:
                fix = (
                    "expected if the target set has no rows of them; if it has, pass "
                    "stratify={label: budget, ...} to give each class its rows"
                )
            else:
                fix = "pass stratify=True for class-proportional budgets (or stratify='balanced')"
            found.append(
                f"{len(missing)} of {len(counts['labels'])} labeled classes got no rows in the "
                f"coreset of {n} ({named}); {fix}"
            )
    directions = info.get("directions")
    if isinstance(directions, dict) and directions.get("rule") in AUTOMATIC_RULES:
        k = int(directions.get("k", 0))
        whose = "the target's" if "target" in info else "the pool's"
        if k <= 2:
            found.append(
                f"SkMM matched only {k} direction(s) of {whose} sketched moments (rule "
                f"{directions['rule']!r}): the coreset covers {whose.removeprefix('the ')[:-2]} "
                f"along {k} direction(s) only. On a classifier's gradients pass stratify=True; "
                "directions=K matches K directions"
            )
    return found


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: numpy/torch values to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, (torch.device, torch.dtype, Path)):
        return str(value)
    return repr(value)


@dataclass(frozen=True, eq=False)
class Selection:
    """Selected rows of a pool.

    ``indices``: int64, n distinct pool rows (in the method's order: greedy methods list them
    in the order picked). ``weights``: float64, one per index, summing to 1, for methods that
    produce a weighting (SkMM: its moment-matching weights on the chosen rows), else None.
    ``info``: diagnostics and stage timings in seconds (JSON-ready).
    """

    indices: np.ndarray
    weights: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        indices = np.asarray(self.indices)
        if indices.ndim != 1 or indices.dtype.kind not in "iu":
            raise ValueError(
                f"indices must be a 1-D integer array, got {indices.dtype} {indices.shape}"
            )
        indices = indices.astype(np.int64)
        if indices.size and indices.min() < 0:
            raise ValueError("indices must be non-negative")
        if np.unique(indices).size != indices.size:
            raise ValueError("indices must be distinct")
        object.__setattr__(self, "indices", indices)
        if self.weights is not None:
            weights = np.asarray(self.weights, dtype=np.float64)
            if weights.shape != indices.shape:
                raise ValueError(f"{weights.size} weights for {indices.size} indices")
            object.__setattr__(self, "weights", weights)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __repr__(self) -> str:
        method = self.info.get("method", "?")
        pool = self.info.get("n_pool", "?")
        weighted = "weighted" if self.weights is not None else "unweighted"
        return f"Selection(method={method!r}, n={len(self)}, n_pool={pool}, {weighted})"

    @property
    def n_pool(self) -> int | None:
        """Size of the pool the selection was made from, when known."""
        value = self.info.get("n_pool")
        return int(value) if value is not None else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the format written by :meth:`save` to .json)."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "indices": self.indices.tolist(),
            "weights": None if self.weights is None else self.weights.tolist(),
            "info": to_jsonable(self.info),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: .json (everything), .npy (indices only) or .npz (all, no pickle)."""
        suffix = Path(path).suffix.lower()
        if suffix == ".json":
            write_json(path, self.to_dict())
        elif suffix == ".npy":
            write_npy(path, self.indices)
        elif suffix == ".npz":
            arrays = {
                "indices": self.indices,
                "info": np.asarray(json.dumps(to_jsonable(self.info))),
            }
            if self.weights is not None:
                arrays["weights"] = self.weights
            write_npz(path, **arrays)
        else:
            raise ValueError(
                f"unsupported output type {suffix!r} for {path}; use .json, .npy or .npz"
            )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Selection:
        """Read a selection written by :meth:`save` (never unpickles)."""
        path = Path(path)
        kind = sniff_format(path)
        if kind == "npy":
            return cls(np.asarray(load_array(path, mmap=False)))
        if kind == "npz":
            with np.load(path, allow_pickle=False) as archive:
                if "indices" not in archive:
                    raise ValueError(f"{path} is not a saved selection: it has no 'indices' array")
                weights = archive["weights"] if "weights" in archive else None
                info = json.loads(str(archive["info"])) if "info" in archive else {}
                return cls(archive["indices"], weights, info)
        payload = read_json(path)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path} is not a saved skmm selection (no format {FORMAT!r})")
        if payload.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path} has selection format version {payload.get('version')}")
        return cls(
            np.asarray(payload["indices"], dtype=np.int64),
            payload.get("weights"),
            payload.get("info") or {},
        )

    def summary(self) -> str:
        """A short text report: size, seed and timings, the directions matched and c_S
        explained, class counts of the coreset against the pool's shares, and warnings."""
        info = self.info
        timings = info.get("timings") or {}
        head = f"selected {len(self)} of {info.get('n_pool', '?')} rows"
        if "method" in info:
            head += f" with {info['method']}"
        if "total" in timings:
            head += f" in {timings['total']:.2f}s"
        if "random_state" in info:
            head += f" (seed {info['random_state']})"
        lines = [head]
        per_class = [entry for entry in info.get("classes") or [] if "directions" in entry]
        target = isinstance(info.get("target"), dict)
        stage_seconds = {
            name: seconds
            for name, seconds in timings.items()
            if name not in ("total", "prepare", "select")
        }
        for entry in per_class:
            for name, seconds in (entry.get("timings") or {}).items():
                stage_seconds[name] = stage_seconds.get(name, 0.0) + seconds
        if stage_seconds:
            stages = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in stage_seconds.items())
            lines.append(f"  stages: {stages}")
        directions = info.get("directions")
        if isinstance(directions, dict):
            sketch = info.get("sketch") or {}
            of = f" of m = {sketch['sketch_dim']}" if "sketch_dim" in sketch else ""
            gap = directions.get("gap_ratio")
            ratio = f", eigengap ratio {gap:.3g}" if isinstance(gap, (int, float)) else ""
            blocks = sketch.get("blocks", 1)
            about = " about the mean, and the intercept" if info.get("centered") else ""
            if blocks > 1 and info.get("centered"):
                about = " about each block's mean, with an intercept per block"
            of_target = f", of the target's {info['target']['n_rows']} rows" if target else ""
            lines.append(
                f"  directions matched: k = {directions['k']}{of}{about}{of_target} "
                f"(rule {directions['rule']!r}{ratio})"
            )
            if blocks > 1:
                lines.append(
                    f"  each row is {blocks} blocks (a {blocks}-output Jacobian): its rank-"
                    f"{blocks} moment is added at once"
                )
        candidates = info.get("candidates")
        if isinstance(candidates, dict) and "rows" in candidates:
            lines.append(
                f"  chosen among the {candidates['rows']} pool rows nearest the target "
                f"(candidates = {candidates['factor']:g}: max(⌈c·n⌉, target rows))"
            )
        whose = "the target's" if target else "the pool's"
        if "c_S" in info:
            lines.append("  " + _explain_c_s(info["c_S"], info.get("c_S_directions"), whose))
        designs = {entry["label"]: entry for entry in per_class}
        if designs:
            about = " about its mean, and the intercept" if per_class[0].get("centered") else ""
            moments = "the target's moments" if target else f"its own moments{about}"
            lines.append(f"  one design per class ({moments}): k and c_S below")
        counts = info.get("class_counts")
        if counts:
            pool_total, core_total = sum(counts["pool"]), max(1, sum(counts["coreset"]))
            width = max(5, *(len(str(label)) for label in counts["labels"]))
            extra = f"  {'k':>4} {'c_S':>8}" if designs else ""
            lines.append(
                f"  {'class':<{width}}  {'pool':>8} {'share':>6}  {'coreset':>7} {'share':>6}"
                + extra
            )
            for label, pool, got in zip(
                counts["labels"], counts["pool"], counts["coreset"], strict=True
            ):
                line = (
                    f"  {label!s:<{width}}  {pool:>8} {100 * pool / pool_total:5.1f}%"
                    f"  {got:>7} {100 * got / core_total:5.1f}%"
                )
                if label in designs:
                    entry = designs[label]
                    c_s = entry.get("c_S")
                    c_s_text = "inf" if c_s is None or not math.isfinite(c_s) else f"{c_s:.3g}"
                    line += f"  {entry['directions']['k']:>4} {c_s_text:>8}"
                lines.append(line)
        if "random_state_note" in info:
            lines.append(f"  note: {info['random_state_note']}")
        lines.extend(f"  warning: {message}" for message in selection_warnings(info))
        return "\n".join(lines)

    def sampler(
        self, num_samples: int | None = None, *, replacement: bool = True, seed: int | None = None
    ) -> torch.utils.data.WeightedRandomSampler:
        """A sampler over the rows of :meth:`subset` (positions 0..n−1) that draws row j with
        probability ``weights[j]``: the weighting in training, for a torch ``DataLoader``
        (``sampler=``) or a ``transformers.Trainer``. ``num_samples`` defaults to n (one
        epoch); an unweighted selection draws uniformly."""
        if len(self) == 0:
            raise ValueError("the selection is empty: there is nothing to sample")
        weights = np.full(len(self), 1.0 / len(self)) if self.weights is None else self.weights
        generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        return torch.utils.data.WeightedRandomSampler(
            torch.as_tensor(weights, dtype=torch.float64),
            len(self) if num_samples is None else int(num_samples),
            replacement=replacement,
            generator=generator,
        )

    def plot(
        self,
        features: Any,
        labels: Any = None,
        *,
        path: str | os.PathLike[str] | None = None,
    ) -> Any:
        """One figure of the selection (see :func:`skmm.plotting.plot_selection`): the sketched
        spectrum with the matched directions, the pool on its two leading centered directions
        with the coreset highlighted, and class counts; written as PNG to ``path`` when given.
        Needs matplotlib (``pip install 'skmm[bench]'``)."""
        from .plotting import plot_selection

        return plot_selection(self, features, labels, path)

    def subset(self, data: Any, *, weight_column: str | None = None) -> Any:
        """The selected part of ``data`` (in ``indices`` order).

        Hugging Face datasets give ``data.select(indices)``, torch datasets a
        ``torch.utils.data.Subset``, DataFrames ``data.iloc[indices]``, numpy arrays and
        tensors their rows, and other sequences a list. ``weight_column`` (Hugging Face
        datasets) adds a column of n·wⱼ (mean 1; all 1 when unweighted), the per-example
        loss weights that carry the selection's weighting into training.
        """
        if weight_column is not None:
            if type(data).__module__.split(".")[0] != "datasets":
                raise TypeError(
                    f"weight_column needs a Hugging Face dataset, got {type(data).__name__}; "
                    "for other data pass selection.sampler() to the DataLoader, or use "
                    "selection.weights"
                )
            weights = np.ones(len(self)) if self.weights is None else self.weights * len(self)
            return self.subset(data).add_column(weight_column, weights.tolist())
        try:
            size = len(data)
        except TypeError:
            raise TypeError(
                f"cannot take a subset of {type(data).__name__}: it has no length"
            ) from None
        if self.n_pool is not None and size != self.n_pool:
            raise ValueError(
                f"data has {size} rows but the selection was made from a pool of {self.n_pool}"
            )
        if self.indices.size and self.indices.max() >= size:
            raise ValueError(
                f"index {int(self.indices.max())} is out of range for data of length {size}"
            )
        indices = self.indices
        if hasattr(data, "iloc"):
            return data.iloc[indices]
        if type(data).__module__.split(".")[0] == "datasets" and callable(
            getattr(data, "select", None)
        ):
            return data.select(indices.tolist())
        if isinstance(data, torch.utils.data.Dataset):
            return torch.utils.data.Subset(data, indices.tolist())
        if isinstance(data, np.ndarray):
            return data[indices]
        if isinstance(data, torch.Tensor):
            return data[torch.as_tensor(indices, device=data.device)]
        if hasattr(data, "__getitem__"):
            return [data[int(i)] for i in indices]
        raise TypeError(f"cannot take a subset of {type(data).__name__}")


def _explain_c_s(c_s: Any, k: Any, whose: str = "the pool's") -> str:
    """c_S in one line: the least c with Σ̃ ⪯ c·Σ̃_S (Σ̃ the pool's or the target's moment) on
    the matched directions."""
    on = f" on the {k} matched directions" if k else ""
    if c_s is None or not math.isfinite(float(c_s)):
        return f"c_S = inf{on}: the coreset leaves a matched direction uncovered"
    return (
        f"c_S = {float(c_s):.3g}{on}: the coreset's worst-covered direction has "
        f"1/{float(c_s):.3g} = {100 / float(c_s):.0f}% of {whose} energy (lower is better; "
        f"1 = as well covered as {whose.removesuffix(chr(39) + 's')})"
    )
