"""Turn a dataset, a DataLoader or an iterable of batches into (inputs, labels) batches.

Accepted batch shapes: a tensor (inputs only); a tuple or list ``(inputs, labels)`` or
``(inputs,)``; a dict (Hugging Face style) whose ``"labels"`` or ``"label"`` entry holds the
labels and whose other tensor entries are passed to the model as keyword arguments. Inputs
are a tensor (passed positionally) or a dict of tensors (passed as keywords). Several model
inputs go in a dict, ``{"input_ids": ..., "attention_mask": ...}`` or ``({...}, labels)``:
a 2-tuple is always ``(inputs, labels)``, and a second item that looks like a mask is refused.
A Hugging Face ``datasets.Dataset`` (or ``IterableDataset``) is read in batches of rows
(:class:`HuggingFaceRows`): its ``label``/``labels`` column gives the labels and its numeric
columns that the model's ``forward`` takes are the keyword inputs. The row order must be
fixed: a shuffling DataLoader is refused, since stored rows must line up with the dataset's
indices.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, Subset

LABEL_KEYS = ("labels", "label")
PAD_HINT = (
    "pad them to one length (dataset.map(lambda rows: tokenizer(rows['text'], "
    "padding='max_length', truncation=True), batched=True)), or pass DataLoader(dataset, "
    "batch_size=64, collate_fn=transformers.DataCollatorWithPadding(tokenizer))"
)


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


def _hugging_face_kind(data: object) -> str | None:
    """The class name of a Hugging Face ``datasets`` object, else None."""
    kind = type(data)
    return kind.__name__ if kind.__module__.split(".")[0] == "datasets" else None


def model_arguments(model: nn.Module) -> set[str] | None:
    """Names the model's ``forward`` takes, or None when it takes any (``**kwargs``).

    A PEFT model is asked through the model it wraps (its own forward takes ``**kwargs``).
    """
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    try:
        parameters = inspect.signature(base.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}


class HuggingFaceRows:
    """A Hugging Face ``datasets.Dataset`` read ``[start, stop)`` at a time, in row order.

    The ``label`` or ``labels`` column holds the labels; the other numeric columns (plain
    lists or torch format) that ``accepted`` names (all when None) are the model's keyword
    inputs; text and other non-numeric columns are left out, as ``transformers.Trainer``
    leaves out the columns its model does not take.
    """

    def __init__(self, dataset: Any, accepted: set[str] | None = None) -> None:
        self.dataset = dataset
        self.accepted = accepted

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, start: int, stop: int) -> Batch:
        """Rows ``[start, stop)`` as a :class:`Batch`."""
        return columns_batch(self.dataset[start:stop], start, self.accepted)


class HuggingFaceStream:
    """A Hugging Face ``datasets.IterableDataset``: its examples grouped ``batch_size`` at a
    time into batches, with the columns chosen as :class:`HuggingFaceRows` chooses them."""

    def __init__(self, dataset: Any, batch_size: int, accepted: set[str] | None = None) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.accepted = accepted

    def __iter__(self) -> Iterator[Batch]:
        rows: list[Mapping[str, Any]] = []
        seen = 0
        for example in self.dataset:
            rows.append(example)
            if len(rows) == self.batch_size:
                yield self._batch(rows, seen)
                seen += len(rows)
                rows = []
        if rows:
            yield self._batch(rows, seen)

    def _batch(self, rows: list[Mapping[str, Any]], start: int) -> Batch:
        columns = {key: [row[key] for row in rows] for key in rows[0]}
        return columns_batch(columns, start, self.accepted)


def as_batch_source(data: object, model: nn.Module, batch_size: int) -> object:
    """``data`` ready for :func:`iterate_batches`: a Hugging Face dataset wrapped to be read in
    batches of rows (keeping the columns ``model`` takes), anything else unchanged."""
    if isinstance(data, (torch.Tensor, np.ndarray)) or hasattr(data, "iloc"):
        raise TypeError(
            f"data is a {type(data).__name__} of inputs; wrap it in a dataset, "
            "rows: torch.utils.data.TensorDataset(torch.as_tensor(inputs), "
            "torch.as_tensor(labels)), or without labels TensorDataset(torch.as_tensor(inputs))"
        )
    kind = _hugging_face_kind(data)
    if kind is None:
        return data
    if kind in ("DatasetDict", "IterableDatasetDict"):
        splits = ", ".join(repr(name) for name in data)  # type: ignore[attr-defined]
        raise TypeError(
            f"data is a Hugging Face {kind} (splits {splits}); pass one split, e.g. "
            "dataset['train']"
        )
    if kind == "IterableDataset":
        return HuggingFaceStream(data, batch_size, model_arguments(model))
    if callable(getattr(data, "__getitem__", None)) and callable(getattr(data, "__len__", None)):
        return HuggingFaceRows(data, model_arguments(model))
    raise TypeError(f"data is a Hugging Face {kind}; pass a datasets.Dataset (one split)")


def columns_batch(columns: Mapping[str, Any], start: int, accepted: set[str] | None) -> Batch:
    """A batch from a dict of columns (rows ``start``...): tensors, lists of numbers or of
    equal-length sequences become tensors; ragged sequences are an error naming the fix."""
    label_keys = [key for key in LABEL_KEYS if key in columns]
    if len(label_keys) > 1:
        raise ValueError("the dataset has both 'labels' and 'label' columns; drop one")
    inputs: dict[str, torch.Tensor] = {}
    for key, value in columns.items():
        if key in LABEL_KEYS or (accepted is not None and key not in accepted):
            continue
        tensor = _column_tensor(key, value, start)
        if tensor is not None:
            inputs[key] = tensor
    if not inputs:
        raise ValueError(
            f"the dataset has no numeric column the model takes as input (columns: "
            f"{', '.join(map(repr, columns))}); tokenize or transform it first, e.g. "
            "dataset.map(lambda rows: tokenizer(rows['text'], padding='max_length', "
            "truncation=True), batched=True)"
        )
    labels = _column_tensor(label_keys[0], columns[label_keys[0]], start) if label_keys else None
    return _checked_batch(inputs, labels, f"rows {start}...")


def _column_tensor(key: str, value: Any, start: int) -> torch.Tensor | None:
    """A column as a tensor, None for a non-numeric column (text, images, nested records)."""
    if isinstance(value, torch.Tensor):
        return value
    if not isinstance(value, (list, tuple)) or not value:
        return None
    if all(isinstance(item, torch.Tensor) for item in value):
        shapes = {tuple(item.shape) for item in value}
        if len(shapes) > 1:
            raise ValueError(
                f"column {key!r} of rows {start}... holds sequences of different lengths "
                f"{sorted(shapes)[:3]}...; {PAD_HINT}"
            )
        return torch.stack(list(value))
    first = value[0]
    while isinstance(first, (list, tuple)) and first:
        first = first[0]
    if isinstance(first, bool) or not isinstance(first, (int, float)):
        return None
    try:
        return torch.as_tensor(value)
    except (ValueError, TypeError):
        raise ValueError(
            f"column {key!r} of rows {start}... holds sequences of different lengths; {PAD_HINT}"
        ) from None


def is_map_style(data: object) -> bool:
    """True for a source whose rows can be read from any position on."""
    return isinstance(data, HuggingFaceRows) or (
        isinstance(data, Dataset) and not isinstance(data, IterableDataset)
    )


def dataset_length(data: object) -> int | None:
    """Rows in ``data`` when it can tell (a sized dataset or a DataLoader over one)."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(dataset, HuggingFaceRows):
        return len(dataset)
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
    elif isinstance(data, HuggingFaceRows):
        end = len(data) if stop is None else min(stop, len(data))
        source = (data.batch(lo, min(lo + batch_size, end)) for lo in range(start, end, batch_size))
        start, stop = 0, None
    elif isinstance(data, Dataset) and hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        end = len(data) if stop is None else min(stop, len(data))  # type: ignore[arg-type]
        rows = range(start, end)
        start, stop = 0, None
        source = DataLoader(Subset(data, rows), batch_size=batch_size, shuffle=False)
    elif isinstance(data, Iterable) and not isinstance(data, (torch.Tensor, str, bytes)):
        source = data
    else:
        raise TypeError(
            "data must be a torch Dataset, a DataLoader, a Hugging Face datasets.Dataset or "
            f"an iterable of batches, got {type(data).__name__}"
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
    if isinstance(raw, Batch):
        return raw
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
            raise ValueError(
                f"batch {position} (a dict) holds no input tensors: its values must be "
                "batched tensors (rows of a Hugging Face dataset can be passed as the "
                "datasets.Dataset itself)"
            )
    elif isinstance(raw, (tuple, list)):
        if len(raw) not in (1, 2):
            raise ValueError(
                f"batch {position} has {len(raw)} parts; expected (inputs,) or (inputs, "
                "labels). Pass several model inputs as a dict, {'input_ids': ..., "
                "'attention_mask': ...}, or as ({...}, labels)"
            )
        inputs = raw[0]
        labels = raw[1] if len(raw) == 2 else None
        if isinstance(inputs, torch.Tensor) and isinstance(labels, torch.Tensor):
            _check_not_a_mask(inputs, labels, position)
    else:
        inputs = raw
    if isinstance(inputs, Mapping):
        inputs = dict(inputs)
    elif not isinstance(inputs, torch.Tensor):
        raise TypeError(
            f"batch {position}: inputs must be a tensor or a dict of tensors, got "
            f"{type(inputs).__name__}"
        )
    return _checked_batch(
        inputs,  # type: ignore[arg-type]
        None if labels is None else torch.as_tensor(labels),
        f"batch {position}",
    )


def _check_not_a_mask(inputs: torch.Tensor, second: torch.Tensor, position: int) -> None:
    """Refuse a 2-tuple whose second item, read as labels, is clearly a mask or a second
    input: 2-D or more integer "labels", or 0/1 floats shaped like the inputs' leading dims."""
    if second.dim() < 2:
        return
    mask_like = inputs.dim() > second.dim() and tuple(inputs.shape[: second.dim()]) == tuple(
        second.shape
    )
    binary = bool(((second == 0) | (second == 1)).all())
    if second.is_floating_point() and not (mask_like and binary):
        return  # multi-output regression targets
    raise ValueError(
        f"batch {position} is a 2-tuple, read as (inputs, labels), but its second item has "
        f"shape {tuple(second.shape)} ({'a 0/1 mask?' if binary else 'not 1-D labels'}) "
        f"beside inputs of shape {tuple(inputs.shape)}. Pass several model inputs as a dict, "
        "{'input_ids': ..., 'attention_mask': ...} (e.g. {'inputs_embeds': hidden, "
        "'attention_mask': mask}), or with labels as ({...}, labels)"
    )


def _checked_batch(
    inputs: torch.Tensor | dict[str, torch.Tensor], labels: torch.Tensor | None, where: str
) -> Batch:
    """A :class:`Batch` once every input and the labels agree on the number of rows."""
    if isinstance(inputs, dict):
        sizes = {int(value.shape[0]) if value.dim() else -1 for value in inputs.values()}
    else:
        sizes = {int(inputs.shape[0])} if inputs.dim() else {-1}
    if labels is not None and labels.dim() == 0 and sizes != {-1}:
        raise ValueError(
            f"{where} looks like a single example (its label is a scalar): batches hold "
            "several rows; pass a torch Dataset (skmm batches it), a DataLoader, or a "
            "Hugging Face datasets.Dataset"
        )
    if labels is not None:
        sizes.add(int(labels.shape[0]) if labels.dim() else -1)
    if len(sizes) != 1 or min(sizes) < 1:
        raise ValueError(f"{where}: inputs and labels disagree on the batch size")
    return Batch(inputs, labels, sizes.pop())
