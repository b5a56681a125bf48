"""Which parameters are finetuned: names, glob patterns, ``"last:K"`` or ``"trainable"``."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

from torch import nn

LAST_PATTERN = re.compile(r"^last:(\d+)$")


def resolve_params(
    model: nn.Module, params: str | Sequence[str] | None = "trainable"
) -> list[tuple[str, nn.Parameter]]:
    """The chosen parameters as (name, parameter) pairs, in the model's parameter order.

    - ``"trainable"`` or None: every parameter with ``requires_grad`` (for a PEFT/LoRA model,
      the adapters, since PEFT freezes the base weights);
    - ``"last:K"``: the parameters of the last K blocks (:func:`blocks`): for a transformer
      classifier ``"last:2"`` is the last layer and the head, for a plain stack of layers its
      last two layers with parameters;
    - a name or glob pattern (``"encoder.layer.5.*"``), or a list of them; every pattern must
      match at least one parameter.
    """
    named = list(model.named_parameters())
    if not named:
        raise ValueError("the model has no parameters to take gradients of")
    if params is None or params == "trainable":
        chosen = [(name, p) for name, p in named if p.requires_grad]
        if not chosen:
            raise ValueError("the model has no trainable parameters (requires_grad=True)")
        return chosen
    if isinstance(params, str):
        match = LAST_PATTERN.match(params.strip())
        if match:
            return _last_blocks(model, int(match.group(1)))
        params = [part.strip() for part in params.split(",") if part.strip()]
    patterns = list(params)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError("params must be 'trainable', 'last:K', or a list of names/patterns")
    selected: set[str] = set()
    for pattern in patterns:
        hits = [name for name, _ in named if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            sample = ", ".join(name for name, _ in named[:8])
            more = f", ... ({len(named)} in all)" if len(named) > 8 else ""
            raise ValueError(
                f"params pattern {pattern!r} matches no parameter; names: {sample}{more}"
            )
        selected.update(hits)
    return [(name, p) for name, p in named if name in selected]


def blocks(model: nn.Module) -> list[list[str]]:
    """The model's blocks, in registration order, each as its parameter names.

    The items of an ``nn.ModuleList`` or ``nn.Sequential`` (transformer layers, a CNN's
    stages or layers) are one block each. Outside such stacks, what lies between two stacks
    is one block: the embeddings before the first layer, the head after the last (for a
    transformer classifier: the pooler or final norm and the classifier). A model without
    stacks has one block per module that owns parameters.
    """
    pieces: list[tuple[list[str], bool]] = []  # (names, an item of a stack)

    def walk(prefix: str, module: nn.Module) -> None:
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            for name, child in module.named_children():
                names = [f"{dot}{name}.{p}" for p, _ in child.named_parameters()]
                if names:
                    pieces.append((names, True))
            return
        own = [f"{dot}{name}" for name, _ in module.named_parameters(recurse=False)]
        if own:
            pieces.append((own, False))
        for name, child in module.named_children():
            walk(f"{dot}{name}", child)

    walk("", model)
    if not any(in_stack for _, in_stack in pieces):
        return [names for names, _ in pieces]
    grouped: list[list[str]] = []
    loose = False
    for names, in_stack in pieces:
        if not in_stack and loose:
            grouped[-1].extend(names)
        else:
            grouped.append(list(names))
        loose = not in_stack
    return grouped


def _last_blocks(model: nn.Module, count: int) -> list[tuple[str, nn.Parameter]]:
    """Parameters of the last ``count`` blocks of :func:`blocks`."""
    found = blocks(model)
    if count < 1 or count > len(found):
        raise ValueError(f"params 'last:{count}' needs 1 <= K <= {len(found)} (the model's blocks)")
    names = {name for block in found[-count:] for name in block}
    return [(name, p) for name, p in model.named_parameters() if name in names]


def describe_params(model: nn.Module, names: Sequence[str]) -> str:
    """The chosen parameter names, shortened: ``prefix.*`` where all of a module's parameters
    are chosen (with their count), at most 12 entries, and the total count."""
    chosen = set(names)
    entries: list[str] = []

    def walk(prefix: str, module: nn.Module) -> None:
        dot = f"{prefix}." if prefix else ""
        inside = [f"{dot}{name}" for name, _ in module.named_parameters()]
        hits = [name for name in inside if name in chosen]
        if not hits:
            return
        if len(hits) == len(inside) and len(inside) > 1:
            entries.append(f"{dot}* ({len(inside)})" if prefix else f"all {len(inside)}")
            return
        for name, _ in module.named_parameters(recurse=False):
            if f"{dot}{name}" in chosen:
                entries.append(f"{dot}{name}")
        for name, child in module.named_children():
            walk(f"{dot}{name}", child)

    walk("", model)
    shown = entries if len(entries) <= 12 else [*entries[:8], "...", *entries[-3:]]
    return f"{len(chosen)} parameter tensors: {', '.join(shown)}"
