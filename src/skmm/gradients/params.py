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
    - ``"last:K"``: the parameters of the last K modules that own parameters directly;
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
            return _last_modules(model, int(match.group(1)))
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


def _last_modules(model: nn.Module, count: int) -> list[tuple[str, nn.Parameter]]:
    """Parameters of the last ``count`` modules (in registration order) that own parameters."""
    owners = [
        (prefix, module)
        for prefix, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    ]
    if count < 1 or count > len(owners):
        raise ValueError(
            f"params 'last:{count}' needs 1 <= K <= {len(owners)} (modules with parameters)"
        )
    names = {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in owners[-count:]
        for name, _ in module.named_parameters(recurse=False)
    }
    return [(name, p) for name, p in model.named_parameters() if name in names]
