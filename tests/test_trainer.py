"""Training with a selection: a transformers.Trainer run on a weighted coreset (CPU, 3 steps).

This is the example of README.md ("Train on the selection") run as a test.
"""

import numpy as np
import pytest
import torch

import skmm
from tiny_models import tiny_bert

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")


class WeightedTrainer(transformers.Trainer):
    """Cross-entropy weighted per example by the subset's "weight" column (mean 1)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weight = inputs.pop("weight")
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        losses = torch.nn.functional.cross_entropy(outputs.logits, labels, reduction="none")
        loss = (losses * weight).mean()
        return (loss, outputs) if return_outputs else loss


def test_a_trainer_trains_on_a_weighted_selection(tmp_path):
    model = tiny_bert()
    gen = torch.Generator().manual_seed(0)
    train = datasets.Dataset.from_dict(
        {
            "input_ids": torch.randint(1, 40, (40, 8), generator=gen).tolist(),
            "attention_mask": [[1] * 8] * 40,
            "label": torch.randint(0, 3, (40,), generator=gen).tolist(),
        }
    )
    grads = skmm.sketch_gradients(model, train, params="last:2", sketch_dim=16, progress=False)
    selection = skmm.select(grads, 12, "craig", random_state=0)  # the labels come with grads
    assert selection.weights is not None
    coreset = selection.subset(train, weight_column="weight")
    before = model.classifier.weight.detach().clone()

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,  # keep the weight column for compute_loss
    )
    trainer = WeightedTrainer(model=model, args=args, train_dataset=coreset)
    result = trainer.train()
    assert trainer.state.global_step == 3
    assert np.isfinite(result.training_loss)
    assert not torch.equal(model.classifier.weight.detach(), before)
