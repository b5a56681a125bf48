"""The Selector interface every method implements, and stratified (per-class) budgets.

A selector is an estimator in scikit-learn's style: parameters in ``__init__``, validated in
:meth:`Selector.fit`, the result in ``selection_``. Subclasses implement two steps:

- ``_prepare(features, labels, seed)`` turns the validated (N, r) matrix (and the class
  code of each row, when labels were given) into what the method works on (SkMM: the
  sketch; most baselines: the features in memory), once for the whole pool;
- ``_select(data, n, seed)`` picks n rows of ``data`` and returns local indices, optional
  weights and diagnostics.

With ``stratify`` and labels, :meth:`fit` splits the budget over classes and runs
``_select`` on each class's rows with its own derived seed. A method marked
``stratify_with_labels`` (SkMM) does so, with class-proportional budgets, whenever labels are
given and ``stratify`` is left at None (``stratify=False`` turns it off).

Under torchrun every rank calls :meth:`fit` with the same arguments. A selector marked
``row_separable`` (SkMM, uniform) then works on this rank's rows (:mod:`skmm.rows`) and
reduces across ranks; any other method runs on rank 0 over the whole pool, and the
selection is broadcast, so every rank returns the same result.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from .. import distributed
from ..inputs import (
    FeatureMatrix,
    as_feature_matrix,
    check_budget,
    check_labels,
)
from ..memory import check_memory
from ..seeding import derive_seed, resolve_seed, track_seed_use
from ..selection import Selection, SelectionWarning, selection_warnings
from ..sources import check_same_sketch, open_features

STRATIFY_MODES = ("proportional", "balanced")


@dataclass
class MethodOutput:
    """What ``_select`` returns: local row indices, optional weights, diagnostics, and the
    seconds its stages took (``timings``, merged into ``info["timings"]``)."""

    indices: np.ndarray
    weights: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


class Selector:
    """Base class: ``Selector(n, ...).fit(features, labels=None).selection_``."""

    name: ClassVar[str] = ""
    requires_labels: ClassVar[bool] = False
    row_separable: ClassVar[bool] = False
    """True when the method runs on each rank's rows and reduces across ranks."""
    stratify_with_labels: ClassVar[bool] = False
    """True when labels alone (``stratify=None``) mean class-proportional budgets."""
    targeted: ClassVar[bool] = False
    """True when the method can select for a target set's features (``fit(..., target=)``)."""
    requires_target: ClassVar[bool] = False
    """True when the method selects only for a target: ``fit`` without one is an error."""

    def __init__(
        self,
        n: int,
        *,
        stratify: bool | str | Mapping[Any, int] | None = None,
        random_state: int | np.random.Generator | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = False,
    ) -> None:
        self.n = n
        self.stratify = stratify
        self.random_state = random_state
        self.device = device
        self.progress = progress

    @classmethod
    def param_names(cls) -> list[str]:
        """Names of the constructor's parameters (the method's options, plus ``n``).

        Read from ``__init__`` alone: as in scikit-learn, every method's constructor lists
        all of its options, the common ones included, explicitly.
        """
        return [
            param.name
            for param in inspect.signature(cls.__init__).parameters.values()
            if param.name != "self" and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL)
        ]

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters as set."""
        return {name: getattr(self, name) for name in self.param_names()}

    def _resolved_options(self) -> dict[str, Any]:
        """What options as set stand for where the options alone decide it (a None default's
        value, an alias's name), recorded in ``info["params"]`` so that a selection says what
        ran. Called after :meth:`_check_params`; default: nothing. Defaults computed from the
        data (a leverage ``k``, a ridge or bandwidth from the pool) stay None there, and
        the method reports the values it used in ``info``."""
        return {}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    def _check_params(self, n_pool: int, n_cols: int) -> None:
        """Validate method-specific parameters; raise ValueError/TypeError naming the problem."""

    def _memory_bytes(self, n_pool: int, n_cols: int, n: int, itemsize: int) -> int:
        """Bytes of the largest arrays the method allocates; default: the features as a tensor."""
        return n_pool * n_cols * itemsize

    def _memory_advice(self) -> str:
        """What to do instead when :meth:`_memory_bytes` exceeds the memory limit."""
        return (
            "sketch the features first and select from the sketch (skmm.sketch(features, 512) "
            "streams a memory-mapped file in chunks), or use method='skmm', which sketches as "
            "it reads"
        )

    def _prepare(
        self, features: FeatureMatrix, labels: np.ndarray | None, seed: int
    ) -> tuple[Any, dict[str, Any]]:
        """What ``_select`` works on, plus diagnostics; default: the features as one tensor.

        ``labels`` holds each row's class code (0..C−1, int64) when labels were given.
        """
        return features.to_tensor(), {}

    @classmethod
    def _restrict(cls, data: Any, rows: np.ndarray) -> Any:
        """The part of ``data`` for the pool rows ``rows`` (used per class when stratifying).

        Tensors and arrays are indexed by row; tuples and lists are restricted item by item;
        objects with a ``restrict`` method (:mod:`skmm.rows` layouts and rows) restrict themselves.
        """
        if data is None:
            return None
        if hasattr(data, "restrict"):
            return data.restrict(rows)
        if isinstance(data, (tuple, list)):
            return type(data)(cls._restrict(item, rows) for item in data)
        if isinstance(data, np.ndarray):
            return data[rows]
        return data[torch.as_tensor(rows, device=data.device)]

    def _select(self, data: Any, n: int, seed: int) -> MethodOutput:
        raise NotImplementedError

    def fit(self, features: object, labels: object = None, target: object = None) -> Selector:
        """Select ``n`` rows of ``features`` (N, r); the result is stored in ``selection_``.

        ``features`` may also be a path (an array file or a sketch store), a
        :class:`~skmm.store.SketchStore` or a :class:`~skmm.gradients.GradientSketch`
        (:func:`~skmm.sources.open_features`); their labels are used when ``labels`` is None.
        ``target``: the features of a target set (T, r), in any of those forms, for methods
        that select for one (``targeted``); the rows are still chosen from ``features``.
        Under torchrun, every rank passes the same ``features`` (e.g. the same memory-mapped
        file or sketch store) and gets the same selection.
        """
        if target is None and self.requires_target:
            raise ValueError(
                f"method {self.name!r} selects for a target set and needs one: pass "
                "target=... (the target's features, of the same kind as the pool's)"
            )
        if target is not None:
            if not self.targeted:
                from . import REGISTRY

                which = ", ".join(sorted(n for n, c in REGISTRY.items() if c.targeted))
                raise ValueError(
                    f"method {self.name!r} does not select for a target; methods that do: {which}"
                )
            check_same_sketch(features, target)
            target = open_features(target)[0]
        features, carried = open_features(features)
        if labels is None:
            labels = carried
        size = distributed.world()[1]
        if size > 1 and not self.row_separable:
            self.selection_ = distributed.run_on_main(
                lambda: self._fit(features, labels, 1, target)
            )
            self.selection_.info["distributed"] = {"world_size": size, "ran_on": "rank 0"}
        else:
            self.selection_ = self._fit(features, labels, size, target)
        return self

    def _fit(self, features: object, labels: object, size: int, target: object) -> Selection:
        began = time.perf_counter()
        seed = resolve_seed(self.random_state)
        if size > 1:
            seed = distributed.broadcast_object(seed)
        matrix = as_feature_matrix(features, device=self.device)
        n_pool = matrix.n_rows
        n = check_budget(self.n, n_pool)
        if self.progress not in (True, False, None):
            raise TypeError(f"progress must be True, False or None, got {self.progress!r}")
        self._target = None
        if target is not None:
            self._target = as_feature_matrix(target, name="target", device=matrix.device)
            if self._target.n_cols != matrix.n_cols:
                raise ValueError(
                    f"target has {self._target.n_cols} columns but the pool's features have "
                    f"{matrix.n_cols}; both must be features of the same kind (the same model, "
                    "parameters and sketch)"
                )
        codes = classes = None
        if labels is not None:
            classes, codes = check_labels(labels, n_pool)
        elif self.requires_labels:
            raise ValueError(f"method {self.name!r} needs labels: pass labels=... (one per row)")
        stratify = self.stratify
        if stratify is None and codes is not None and self.stratify_with_labels and target is None:
            stratify = "proportional"
        budgets = class_budgets(stratify, n, classes, codes)
        self._check_params(n_pool, matrix.n_cols)
        itemsize = torch.empty((), dtype=matrix.compute_dtype).element_size()
        check_memory(
            self._memory_bytes(n_pool, matrix.n_cols, n, itemsize),
            f"method {self.name!r} on {n_pool} × {matrix.n_cols} features",
            self._memory_advice(),
            matrix.device,
        )
        select_seed = derive_seed(seed, "select")
        class_seeds = (
            [] if budgets is None else [derive_seed(seed, "class", c) for c in range(budgets.size)]
        )
        with track_seed_use() as seed_uses:
            prepare_began = time.perf_counter()
            data, info = self._prepare(matrix, codes, seed)
            timings = {**info.pop("timings", {}), "prepare": time.perf_counter() - prepare_began}
            select_began = time.perf_counter()
            if budgets is None:
                output = self._select(data, n, select_seed)
                indices, weights = output.indices, output.weights
                timings.update(output.timings)
                info.update(output.info)
            else:
                indices, weights = self._select_per_class(
                    data, budgets, codes, classes, class_seeds, info
                )
            timings["select"] = time.perf_counter() - select_began
        indices = np.asarray(indices, dtype=np.int64)
        _check_output(indices, weights, n, n_pool, type(self).__name__)
        timings["total"] = time.perf_counter() - began
        info = {
            "method": self.name,
            "n": n,
            "n_pool": n_pool,
            "n_features": matrix.n_cols,
            "random_state": seed,
            "random_state_used": seed_uses[0] > 0,
            "device": str(matrix.device),
            "params": {
                k: v
                for k, v in {
                    **self.get_params(),
                    **self._resolved_options(),
                    "stratify": stratify,
                }.items()
                if k != "random_state"
            },
            **info,
            "timings": timings,
        }
        if not info["random_state_used"]:
            info["random_state_note"] = (
                f"{self.name} with these options is deterministic: random_state was not used, "
                "and every seed gives this selection"
            )
        if self._target is not None:
            info["target"] = {"n_rows": self._target.n_rows, **info.get("target", {})}
            self._target = None
        if codes is not None and classes is not None:
            info["class_counts"] = {
                "labels": classes.tolist(),
                "pool": np.bincount(codes, minlength=classes.size).tolist(),
                "coreset": np.bincount(codes[indices], minlength=classes.size).tolist(),
            }
        if size > 1:
            info["distributed"] = {"world_size": size, "ran_on": "all ranks"}
        selection = Selection(indices, weights, info)
        for message in selection_warnings(info):
            warnings.warn(message, SelectionWarning, stacklevel=4)
        return selection

    def _select_per_class(
        self,
        data: Any,
        budgets: np.ndarray,
        codes: np.ndarray,
        classes: np.ndarray,
        seeds: list[int],
        info: dict[str, Any],
    ) -> tuple[np.ndarray, np.ndarray | None]:
        n = int(budgets.sum())
        all_indices: list[np.ndarray] = []
        all_weights: list[np.ndarray] = []
        per_class: list[dict[str, Any]] = []
        weighted = True
        for code, budget in enumerate(budgets):
            rows = np.flatnonzero(codes == code)
            entry: dict[str, Any] = {
                "label": classes[code].item(),
                "size": int(rows.size),
                "budget": int(budget),
            }
            if budget > 0:
                output = self._select(self._restrict(data, rows), int(budget), seeds[code])
                all_indices.append(rows[np.asarray(output.indices, dtype=np.int64)])
                if output.weights is None:
                    weighted = False
                else:
                    all_weights.append(np.asarray(output.weights) * (budget / n))
                entry.update(output.info)
                entry["timings"] = output.timings
            per_class.append(entry)
        info["classes"] = per_class
        indices = np.concatenate(all_indices)
        weights = np.concatenate(all_weights) if weighted else None
        return indices, weights


def class_budgets(
    stratify: object, n: int, classes: np.ndarray | None, codes: np.ndarray | None
) -> np.ndarray | None:
    """Per-class budgets summing to n, or None when not stratifying.

    ``True``/``"proportional"``: n split in proportion to class sizes (largest remainders);
    ``"balanced"``: as equal as class sizes allow (water-filling); a mapping: explicit
    budgets per label, which must sum to n.
    """
    if stratify is None or stratify is False:
        return None
    if classes is None or codes is None:
        raise ValueError("stratify needs labels: pass labels=... with one label per row")
    sizes = np.bincount(codes, minlength=classes.size)
    if isinstance(stratify, Mapping):
        budgets = np.zeros(classes.size, dtype=np.int64)
        lookup = {
            label.item() if hasattr(label, "item") else label: i for i, label in enumerate(classes)
        }
        for label, budget in stratify.items():
            key = label.item() if hasattr(label, "item") else label
            if key not in lookup:
                raise ValueError(f"stratify names label {label!r}, which is not in labels")
            if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
                raise ValueError(f"budget for label {label!r} must be an int >= 0, got {budget!r}")
            budgets[lookup[key]] = int(budget)
        if int(budgets.sum()) != n:
            raise ValueError(f"stratify budgets sum to {int(budgets.sum())}, not n = {n}")
    elif stratify is True or stratify == "proportional":
        exact = n * sizes / sizes.sum()
        budgets = np.floor(exact).astype(np.int64)
        short = n - int(budgets.sum())
        order = np.lexsort((np.arange(classes.size), -(exact - budgets)))
        budgets[order[:short]] += 1
    elif stratify == "balanced":
        budgets = _water_fill(sizes, n)
    else:
        raise ValueError(
            f"unknown stratify {stratify!r}; use True, 'proportional', 'balanced', "
            "or a mapping from label to budget"
        )
    left_out = np.flatnonzero((budgets == 0) & (sizes > 0))
    if left_out.size and not isinstance(stratify, Mapping):
        named = ", ".join(repr(classes[c].item()) for c in left_out[:5])
        more = f" and {left_out.size - 5} more" if left_out.size > 5 else ""
        short = (
            f"n = {n} is below the {int((sizes > 0).sum())} classes"
            if n < int((sizes > 0).sum())
            else "their shares round to 0 rows"
        )
        warnings.warn(
            f"stratify={stratify!r}: {left_out.size} class(es) get no rows ({named}{more}): "
            f"{short}; raise n, or pass explicit budgets as a mapping from label to rows",
            SelectionWarning,
            stacklevel=5,
        )
    too_small = np.flatnonzero(budgets > sizes)
    if too_small.size:
        c = int(too_small[0])
        raise ValueError(
            f"class {classes[c].item()!r} has {int(sizes[c])} members, fewer than its budget "
            f"{int(budgets[c])}"
        )
    return budgets


def _water_fill(sizes: np.ndarray, n: int) -> np.ndarray:
    """Budgets as equal as possible, capped at class sizes, summing to n."""
    budgets = np.zeros(sizes.size, dtype=np.int64)
    remaining = n
    open_classes = np.flatnonzero(sizes > 0)
    while remaining > 0 and open_classes.size:
        share, extra = divmod(remaining, open_classes.size)
        room = sizes[open_classes] - budgets[open_classes]
        grant = np.minimum(room, share)
        grant[:extra] += (room[:extra] > grant[:extra]).astype(np.int64)
        budgets[open_classes] += grant
        remaining -= int(grant.sum())
        open_classes = open_classes[budgets[open_classes] < sizes[open_classes]]
        if int(grant.sum()) == 0:
            break
    return budgets


def _check_output(
    indices: np.ndarray, weights: np.ndarray | None, n: int, n_pool: int, method: str
) -> None:
    """The contract every method must meet; a violation is a bug in skmm, not the input."""
    if indices.shape != (n,) or np.unique(indices).size != n:
        raise RuntimeError(f"{method} returned {indices.size} indices, not {n} distinct ones")
    if indices.min() < 0 or indices.max() >= n_pool:
        raise RuntimeError(f"{method} returned an index outside [0, {n_pool})")
    if weights is not None:
        weights = np.asarray(weights)
        if weights.shape != (n,) or (weights < 0).any() or abs(weights.sum() - 1.0) > 1e-9:
            raise RuntimeError(
                f"{method} returned weights that are not n non-negatives summing to 1"
            )


REGISTRY: dict[str, type[Selector]] = {}


def register(cls: type[Selector]) -> type[Selector]:
    """Class decorator adding a selector to the method registry under ``cls.name``."""
    if not cls.name or cls.name in REGISTRY:
        raise RuntimeError(f"selector name {cls.name!r} is empty or already registered")
    REGISTRY[cls.name] = cls
    return cls
