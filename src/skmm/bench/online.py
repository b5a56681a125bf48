"""The paper's own setting, for users who are online: StanfordCars, CLIP ViT-B/32, ResNet18.

Task ``stanford-cars``: images of 196 car models (``tanganke/stanford_cars`` on the Hugging
Face hub: 8,144 train / 8,041 test). Linear probing uses CLIP ViT-B/32's image embeddings
(``openai/clip-vit-base-patch32``); finetuning trains the last basic block of an ImageNet
ResNet18 (``microsoft/resnet-18``) and a new linear head. Every source may also be a local
directory: a dataset saved with ``datasets``' ``save_to_disk`` (splits ``train`` and
``test``, columns ``image`` and ``label``) and models saved with ``save_pretrained`` (with
their image processor), which is how the tests run it offline on tiny stand-ins.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..inputs import MissingDependencyError
from ..progress import progress_bar
from .images import MapHeadClassifier

STANFORD_CARS = "tanganke/stanford_cars"
CLIP_MODEL = "openai/clip-vit-base-patch32"
RESNET_MODEL = "microsoft/resnet-18"
OFFLINE_HINT = (
    "the stanford-cars task downloads from the Hugging Face hub; offline, pass local copies "
    "(--dataset DIR saved with save_to_disk, --linear-model DIR and --finetune-model DIR "
    "saved with save_pretrained)"
)


@dataclass
class ImageDataset:
    """Rows of one split (a ``datasets.Dataset``), integer labels and the class names."""

    rows: Any
    labels: np.ndarray
    classes: list[str]
    fingerprint: str


def _hub_call(what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a hub loader; a network or missing-file failure becomes one clear error."""
    try:
        return function(*args, **kwargs)
    except (OSError, ConnectionError, ValueError) as exc:
        raise ValueError(f"cannot load {what}: {exc}\n{OFFLINE_HINT}") from exc


def load_image_dataset(
    source: str = STANFORD_CARS, limit_train: int | None = None, limit_test: int | None = None
) -> tuple[ImageDataset, ImageDataset]:
    """The train and test splits of an image classification dataset (hub id or local dir)."""
    try:
        import datasets
    except ImportError as exc:
        raise MissingDependencyError("the stanford-cars task needs: pip install datasets") from exc
    if Path(source).is_dir():
        loaded = _hub_call(f"dataset {source}", datasets.load_from_disk, source)
    else:
        loaded = _hub_call(f"dataset {source}", datasets.load_dataset, source)
    missing = [split for split in ("train", "test") if split not in loaded]
    if missing:
        raise ValueError(f"dataset {source} has no split(s) {missing}")
    out = []
    for split, limit in (("train", limit_train), ("test", limit_test)):
        rows = loaded[split]
        if "image" not in rows.column_names or "label" not in rows.column_names:
            raise ValueError(f"dataset {source} split {split} needs columns 'image' and 'label'")
        if limit is not None:
            rows = rows.select(range(min(limit, len(rows))))
        label_feature = rows.features["label"]
        classes = list(getattr(label_feature, "names", None) or [])
        labels = np.asarray(rows["label"], dtype=np.int64)
        if not classes:
            classes = [str(c) for c in range(int(labels.max()) + 1)]
        fingerprint = (
            getattr(rows, "_fingerprint", None) or hashlib.sha256(labels.tobytes()).hexdigest()
        )
        out.append(ImageDataset(rows, labels, classes, str(fingerprint)[:16]))
    return out[0], out[1]


def load_clip(source: str = CLIP_MODEL) -> tuple[Any, nn.Module]:
    """CLIP's image processor and model (hub id or local dir)."""
    from transformers import AutoImageProcessor, CLIPModel

    processor = _hub_call(f"image processor {source}", AutoImageProcessor.from_pretrained, source)
    model = _hub_call(f"model {source}", CLIPModel.from_pretrained, source, use_safetensors=True)
    return processor, model.eval()


def load_resnet(source: str = RESNET_MODEL) -> tuple[Any, nn.Module]:
    """A ResNet's image processor and backbone (hub id or local dir)."""
    from transformers import AutoImageProcessor, ResNetModel

    processor = _hub_call(f"image processor {source}", AutoImageProcessor.from_pretrained, source)
    model = _hub_call(f"model {source}", ResNetModel.from_pretrained, source, use_safetensors=True)
    return processor, model.eval()


def clip_image_embedding(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """CLIP's projected image embedding (a tensor, whatever the transformers version returns)."""
    out = model.get_image_features(pixel_values=pixels)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def resnet_trunk(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """ResNet up to (not including) its last basic block."""
    x = model.embedder(pixels)
    stages = model.encoder.stages
    for stage in stages[:-1]:
        x = stage(x)
    for layer in stages[-1].layers[:-1]:
        x = layer(x)
    return x


def resnet_head_classifier(model: nn.Module, n_classes: int, seed: int) -> MapHeadClassifier:
    """The ResNet's last basic block and a new linear head on its pooled output."""
    channels = model.config.hidden_sizes[-1]
    return MapHeadClassifier(
        copy.deepcopy(model.encoder.stages[-1].layers[-1]), channels, n_classes, seed, 0.0
    )


@torch.no_grad()
def encode_online(
    split: ImageDataset,
    clip: tuple[Any, nn.Module],
    resnet: tuple[Any, nn.Module],
    batch_size: int = 32,
    progress: bool | None = None,
) -> dict[str, np.ndarray]:
    """CLIP embeddings (linear probing) and the ResNet trunk output (finetuning) of a split."""
    clip_processor, clip_model = clip
    resnet_processor, resnet_model = resnet
    hidden_parts, embedding_parts = [], []
    with progress_bar(len(split.labels), "encode", progress, unit="img") as bar:
        for start in range(0, len(split.labels), batch_size):
            stop = min(start + batch_size, len(split.labels))
            images = [image.convert("RGB") for image in split.rows[start:stop]["image"]]
            clip_pixels = clip_processor(images=images, return_tensors="pt")["pixel_values"]
            embedding_parts.append(clip_image_embedding(clip_model, clip_pixels).numpy())
            resnet_pixels = resnet_processor(images=images, return_tensors="pt")["pixel_values"]
            hidden_parts.append(resnet_trunk(resnet_model, resnet_pixels).numpy())
            bar.update(len(images))
    return {
        "hidden": np.concatenate(hidden_parts),
        "embedding": np.concatenate(embedding_parts),
        "labels": split.labels,
    }
