"""The online task's loaders on tiny local stand-ins (no network)."""

import csv

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")
from PIL import Image  # noqa: E402

from skmm.bench.online import (  # noqa: E402
    encode_online,
    load_clip,
    load_image_dataset,
    load_resnet,
    resnet_head_classifier,
)
from skmm.bench.real import real_report  # noqa: E402


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """A 3-class image dataset, a tiny CLIP and a tiny ResNet, saved like hub copies."""
    folder = tmp_path_factory.mktemp("online")
    rng = np.random.default_rng(0)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}
    )

    def split(n):
        labels = rng.integers(0, 3, n)
        images = [
            Image.fromarray((rng.random((40, 52, 3)) * 60 + 60 * label).astype(np.uint8))
            for label in labels
        ]
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    datasets.DatasetDict({"train": split(48), "test": split(15)}).save_to_disk(folder / "cars")
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    text = {**vision, "vocab_size": 64, "bos_token_id": 0, "eos_token_id": 1}
    config = transformers.CLIPConfig(
        text_config={**text, "num_attention_heads": 2},
        vision_config={**vision, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    transformers.CLIPModel(config).save_pretrained(folder / "clip")
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder / "clip")
    resnet = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 8, 8, 16], depths=[1, 1, 1, 2], layer_type="basic"
    )
    transformers.ResNetModel(resnet).save_pretrained(folder / "resnet")
    transformers.ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(
        folder / "resnet"
    )
    return {
        "dataset": str(folder / "cars"),
        "linear_model": str(folder / "clip"),
        "finetune_model": str(folder / "resnet"),
    }


def test_loaders_encode_both_models(stand_ins):
    train, test = load_image_dataset(stand_ins["dataset"], limit_train=20)
    assert len(train.labels) == 20 and len(test.labels) == 15 and train.classes == ["a", "b", "c"]
    clip, resnet = load_clip(stand_ins["linear_model"]), load_resnet(stand_ins["finetune_model"])
    encoded = encode_online(test, clip, resnet, batch_size=4, progress=False)
    assert encoded["embedding"].shape == (15, 8)
    assert encoded["hidden"].shape[:2] == (15, 16)  # input of the last basic block
    head = resnet_head_classifier(resnet[1], 3, seed=0)
    import torch

    logits = head(torch.from_numpy(encoded["hidden"]))
    assert logits.shape == (15, 3) and torch.isfinite(logits).all()


def test_missing_local_copies_name_the_offline_options(tmp_path):
    with pytest.raises(ValueError, match="--linear-model DIR"):
        load_clip(str(tmp_path / "no-such-model"))
    empty = tmp_path / "empty"
    one_row = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))], "label": [0]})
    datasets.DatasetDict({"train": one_row}).save_to_disk(empty)
    with pytest.raises(ValueError, match=r"no split\(s\) \['test'\]"):
        load_image_dataset(str(empty))


def test_stanford_cars_task_end_to_end_on_stand_ins(stand_ins, tmp_path):
    options = {
        "protocols": ("linear", "finetune"),
        "methods": ("skmm", "uniform"),
        "budgets": (10,),
        "seeds": 1,
        "finetune_steps": 5,
        "cache_dir": tmp_path / "cache",
        "sources": stand_ins,
        "progress": False,
    }
    report = real_report(tmp_path / "out", "stanford-cars", **options)
    assert "finetune: accuracy" in report.markdown
    with open(report.files[1]) as stream:
        rows = list(csv.DictReader(stream))
    # 2 protocols × (2 methods and stratified uniform at n = 10, and the full pool)
    assert len(rows) == 8 and {row["task"] for row in rows} == {"stanford-cars"}
    with pytest.raises(ValueError, match="apply to stanford-cars"):
        real_report(tmp_path / "other", "food-reviews", sources=stand_ins)
