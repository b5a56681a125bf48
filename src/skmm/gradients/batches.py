"""Turn a dataset, a DataLoader or an iterable of batches into (inputs, labels) batches.

Accepted batch shapes: a tensor (inputs only); a tuple or list ``(inputs, labels)`` or
``(inputs,)``; a dict (Hugging Face style) whose ``"labels"`` or ``"label"`` entry holds the
labels and whose other tensor entries are passed to the model as keyword arguments. Inputs
are a tensor (passed positionally) or a dict of tensors (passed as keywords). The row order
must be fixed: a shuffling DataLoader is refused, since stored rows must line up with the
dataset's indices.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

LABEL_KEYS = ("labels", "label")


@dataclass
class Batch:
    """Model inputs (a tensor, or keyword tensors) and labels (or None) for ``size`` rows."""

    inputs: torch.Tensor | dict[str, torch.Tensor]
    labels: torch.Tensor | None
    size: int

    def to(self, device: torch.device) -> Batch:
        inputs = (
            {key: value.to(device) for key, value in self.inputs.items()}
            if isinstance(self.inputs, dict)
            else self.inputs.to(device)
        )
        labels = None if self.labels is None else self.labels.to(device)
        return Batch(inputs, labels, self.size)

    def rows(self, start: int, stop: int) -> Batch:
        """Rows ``[start, stop)`` of this batch."""
        inputs = (
            {key: value[start:stop] for key, value in self.inputs.items()}
            if isinstance(self.inputs, dict)
            else self.inputs[start:stop]
        )
        labels = None if self.labels is None else self.labels[start:stop]
        return Batch(inputs, labels, stop - start)


def join_batches(parts: list[Batch]) -> Batch:
    """The rows of ``parts`` in order, as one batch (the parts must agree on their keys)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first.inputs, dict):
        keys = first.inputs.keys()
        if any(not isinstance(p.inputs, dict) or p.inputs.keys() != keys for p in parts):
            raise ValueError("consecutive batches hold different input keys")
        inputs: torch.Tensor | dict[str, torch.Tensor] = {
            key: torch.cat([p.inputs[key] for p in parts]) for key in keys
        }
    else:
        if any(isinstance(p.inputs, dict) for p in parts):
            raise ValueError("consecutive batches mix tensor and keyword inputs")
        inputs = torch.cat([p.inputs for p in parts])
    with_labels = [p.labels is not None for p in parts]
    if any(with_labels) and not all(with_labels):
        raise ValueError("some batches have labels and others do not")
    labels = torch.cat([p.labels for p in parts]) if all(with_labels) else None
    return Batch(inputs, labels, sum(p.size for p in parts))


def dataset_length(data: object) -> int | None:
    """Rows in ``data`` when it can tell (a sized dataset or a DataLoader over one)."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if not isinstance(dataset, Dataset):
        return None
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


def iterate_batches(
    data: object, batch_size: int, start: int = 0, stop: int | None = None
) -> Iterator[Batch]:
    """Batches of ``data`` in a fixed row order (see the module docstring for the shapes).

    ``start`` > 0 skips rows: a map-style dataset is indexed from there (rows before it are
    never read); other sources are read and the rows dropped. The first batch then holds
    rows from ``start`` on. ``stop`` ends the rows there (a map-style dataset is indexed up
    to it; other sources stop being read once past it).
    """
    if isinstance(data, DataLoader):
        if isinstance(data.sampler, RandomSampler):
            raise ValueError(
                "the DataLoader shuffles (shuffle=True): rows must come in a fixed order so "
                "the stored gradients line up with the dataset; pass the dataset itself"
            )
        source: Iterable[object] = data
    elif isinstance(data, Dataset) and hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        end = len(data) if stop is None else min(stop, len(data))  # type: ignore[arg-type]
        rows = range(start, end)
        start, stop = 0, None
        source = DataLoader(Subset(data, rows), batch_size=batch_size, shuffle=False)
    elif isinstance(data, Iterable) and not isinstance(data, (torch.Tensor, str, bytes)):
        source = data
    else:
        raise TypeError(
            "data must be a torch Dataset, a DataLoader or an iterable of batches, "
            f"got {type(data).__name__}"
        )
    seen = 0
    for position, raw in enumerate(source):
        if stop is not None and seen >= stop:
            return
        batch = _as_batch(raw, position)
        if seen + batch.size > start:
            last = batch.size if stop is None else min(batch.size, stop - seen)
            first = max(0, start - seen)
            yield batch if (first, last) == (0, batch.size) else batch.rows(first, last)
        seen += batch.size


def _as_batch(raw: object, position: int) -> Batch:
    labels: object = None
    if isinstance(raw, Mapping):
        label_keys = [key for key in LABEL_KEYS if key in raw]
        if len(label_keys) > 1:
            raise ValueError(f"batch {position} has both 'labels' and 'label' entries")
        if label_keys:
            labels = raw[label_keys[0]]
        inputs: object = {
            key: value
            for key, value in raw.items()
            if key not in LABEL_KEYS and isinstance(value, torch.Tensor)
        }
        if not inputs:
            raise ValueError(f"batch {position} (a dict) holds no input tensors")
    elif isinstance(raw, (tuple, list)):
        if len(raw) not in (1, 2):
            raise ValueError(
                f"batch {position} has {len(raw)} parts; expected (inputs,) or (inputs, labels)"
            )
        inputs = raw[0]
        labels = raw[1] if len(raw) == 2 else None
    else:
        inputs = raw
    if isinstance(inputs, Mapping):
        inputs = dict(inputs)
        sizes = {int(value.shape[0]) for value in inputs.values()}
    elif isinstance(inputs, torch.Tensor):
        sizes = {int(inputs.shape[0])} if inputs.dim() else set()
    else:
        raise TypeError(f"batch {position}: inputs must be a tensor or a dict of tensors")
    if labels is not None:
        labels = torch.as_tensor(labels)
        sizes.add(int(labels.shape[0]) if labels.dim() else -1)
    if len(sizes) != 1 or min(sizes) < 1:
        raise ValueError(f"batch {position}: inputs and labels disagree on the batch size")
    return Batch(inputs, labels, sizes.pop())  # type: ignore[arg-type]
