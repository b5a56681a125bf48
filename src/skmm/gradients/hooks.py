"""Per-sample gradients of standard layers from one batched forward and backward.

With the model in eval mode the examples of a batch do not interact, so the gradient of
F = Σ_i f_i with respect to a layer's output y, taken once for the batch, holds every
example's backprop g_i = ∂f_i/∂y_i. A parameter's per-sample gradient is then a contraction
of g_i with the layer's input x_i, summed over the positions t of a sequence or image:

- ``nn.Linear``:      ∂f_i/∂W = Σ_t g_{i,t} x_{i,t}ᵀ,          ∂f_i/∂b = Σ_t g_{i,t}
- ``nn.Conv2d``:      ∂f_i/∂W = g_i · unfold(x_i)ᵀ (reshaped),  ∂f_i/∂b = Σ_t g_{i,t}
- ``nn.LayerNorm``:   ∂f_i/∂γ = Σ_t g_{i,t} ⊙ x̂_{i,t},          ∂f_i/∂β = Σ_t g_{i,t}
- ``nn.BatchNorm*d`` with running statistics (eval): the same, x̂ = (x − μ)/√(σ² + ε) per channel

The backward stops at the earliest hooked layer and computes no weight gradient: the
contractions above cost what the batched weight gradients would. A hooked layer hands the
rest of the forward a copy of its output, so later in-place operations do not touch the
tensor whose gradient is taken. Layers that are called through their weights rather than
their ``forward`` (``nn.MultiheadAttention``'s out_proj), whose input is modified in place
later in the forward, or whose input does not lead with the batch dimension make
:meth:`HookedGradients.__call__` return None, and the caller falls back to vmap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _standard_forward(module: nn.Module, base: type[nn.Module]) -> bool:
    """The module runs ``base``'s own forward, with no hooks of its own."""
    return (
        isinstance(module, base)
        and type(module).forward is base.forward
        and not module._forward_hooks
        and not module._forward_pre_hooks
    )


def _supported(module: nn.Module, attribute: str) -> bool:
    """Whether :func:`_per_sample` has a rule for this parameter of this module."""
    if attribute not in ("weight", "bias"):
        return False
    if _standard_forward(module, nn.Linear):
        return True
    if _standard_forward(module, nn.Conv2d):
        return (
            module.groups == 1
            and module.padding_mode == "zeros"
            and (not isinstance(module.padding, str) or module.padding == "valid")
        )
    if _standard_forward(module, nn.LayerNorm):
        return True
    return (
        any(isinstance(module, kind) for kind in _BATCH_NORMS)
        and type(module).forward is nn.modules.batchnorm._BatchNorm.forward
        and not module._forward_hooks
        and not module._forward_pre_hooks
        and module.running_mean is not None
        and module.running_var is not None
    )


@dataclass
class _Call:
    """One call of a hooked module: its input and output and their versions at that time."""

    module: nn.Module
    inputs: torch.Tensor
    output: torch.Tensor
    versions: tuple[int, int]


@dataclass
class _Owner:
    """A module owning chosen parameters: attribute -> parameter name."""

    module: nn.Module
    names: dict[str, str] = field(default_factory=dict)


def find_owners(model: nn.Module, names: list[str]) -> list[_Owner] | None:
    """The modules owning the chosen parameters, or None if one is not supported here.

    Parameters shared by two modules (tied weights) and parameters of unsupported modules
    send the computation to vmap.
    """
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return None
    modules = dict(model.named_modules())
    owners: dict[int, _Owner] = {}
    for name in names:
        prefix, _, attribute = name.rpartition(".")
        module = modules.get(prefix)
        if module is None or not _supported(module, attribute):
            return None
        owners.setdefault(id(module), _Owner(module)).names[attribute] = name
    chosen = {id(getattr(owner.module, a)) for owner in owners.values() for a in owner.names}
    for module in model.modules():
        for attribute, parameter in module._parameters.items():
            if parameter is not None and id(parameter) in chosen:
                owner = owners.get(id(module))
                if owner is None or attribute not in owner.names:
                    return None
    return list(owners.values())


class HookedGradients:
    """Per-sample gradients of parameters of supported layers (see the module docstring)."""

    def __init__(self, owners: list[_Owner], names: list[str]) -> None:
        self.owners = owners
        self.names = names

    def __call__(
        self, run: Callable[[], torch.Tensor], batch_size: int
    ) -> dict[str, torch.Tensor] | None:
        """{name: (B, *shape)} from ``run()``, which does the forward pass and returns Σ_i f_i.

        None when a check fails (see the module docstring); the caller then uses vmap.
        """
        parts = self.contributions(run, batch_size, factored=False)
        if parts is None:
            return None
        grads: dict[str, torch.Tensor] = {}
        for name, value in parts:
            grads[name] = grads[name] + value if name in grads else value
        return grads

    def contributions(
        self, run: Callable[[], torch.Tensor], batch_size: int, factored: bool
    ) -> list[tuple[str, torch.Tensor | Factors]] | None:
        """(name, per-sample gradient) for every call of every hooked layer, to be summed.

        With ``factored``, a Linear or Conv2d weight comes as :class:`Factors` (g, x) of
        Σ_t g_t x_tᵀ instead of the (B, p, q) gradient itself.
        """
        calls: list[_Call] = []
        handles = [
            owner.module.register_forward_hook(self._recorder(calls)) for owner in self.owners
        ]
        try:
            total = run()
        finally:
            for handle in handles:
                handle.remove()
        called = {id(call.module) for call in calls}
        if any(id(owner.module) not in called for owner in self.owners):
            return None
        for call in calls:
            if (call.inputs._version, call.output._version) != call.versions:
                return None
            if call.inputs.shape[0] != batch_size or call.output.shape[0] != batch_size:
                return None
        backprops = torch.autograd.grad(total, [call.output for call in calls], allow_unused=True)
        parts: list[tuple[str, torch.Tensor | Factors]] = []
        for call, backprop in zip(calls, backprops, strict=True):
            owner = next(o for o in self.owners if o.module is call.module)
            if backprop is None:
                backprop = torch.zeros_like(call.output)
            values = _per_sample(call.module, call.inputs, backprop, set(owner.names), factored)
            parts.extend((owner.names[attribute], value) for attribute, value in values.items())
        return parts

    @staticmethod
    def _recorder(calls: list[_Call]) -> Callable[..., torch.Tensor | None]:
        def record(module: nn.Module, args: tuple, output: object) -> torch.Tensor | None:
            inputs = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if inputs is None or not isinstance(output, torch.Tensor):
                empty = torch.empty(0)  # fails the batch-size check
                calls.append(_Call(module, empty, empty, (0, 0)))
                return None
            calls.append(_Call(module, inputs, output, (inputs._version, output._version)))
            # The rest of the forward gets a copy, so in-place ops there (ReLU(inplace=True),
            # `out += identity`) leave the recorded output, whose gradient is taken, intact.
            return output.clone()

        return record


@dataclass
class Factors:
    """A per-sample gradient Σ_t g_{i,t} x_{i,t}ᵀ kept as g (B, T, p) and x (B, T, q)."""

    backprop: torch.Tensor
    inputs: torch.Tensor


def _per_sample(
    module: nn.Module,
    inputs: torch.Tensor,
    backprop: torch.Tensor,
    wanted: set[str],
    factored: bool,
) -> dict[str, torch.Tensor | Factors]:
    """Per-sample gradients {"weight": (B, *W.shape), "bias": (B, *b.shape)} of one call,
    for the ``wanted`` attributes; with ``factored``, Linear and Conv2d weights as Factors."""
    batch = inputs.shape[0]
    inputs = inputs.detach()
    out: dict[str, torch.Tensor | Factors] = {}
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        if isinstance(module, nn.Linear):
            flat_in, flat_out = _active_positions(
                inputs.reshape(batch, -1, module.in_features),
                backprop.reshape(batch, -1, module.out_features),
            )
        else:
            columns = F.unfold(
                inputs,
                module.kernel_size,
                dilation=module.dilation,
                padding=0 if module.padding == "valid" else module.padding,
                stride=module.stride,
            )
            flat_in = columns.transpose(1, 2)
            flat_out = backprop.reshape(batch, module.out_channels, -1).transpose(1, 2)
        if "weight" in wanted:
            if factored:
                out["weight"] = Factors(flat_out, flat_in)
            else:
                weight = torch.bmm(flat_out.transpose(1, 2), flat_in)
                out["weight"] = weight.reshape(batch, *module.weight.shape)
        if "bias" in wanted:
            out["bias"] = flat_out.sum(dim=1)
        return out
    if isinstance(module, nn.LayerNorm):
        dims = tuple(range(inputs.dim() - len(module.normalized_shape), inputs.dim()))
        mean = inputs.mean(dim=dims, keepdim=True)
        variance = inputs.var(dim=dims, unbiased=False, keepdim=True)
        normalized = (inputs - mean) * torch.rsqrt(variance + module.eps)
        shape = (batch, -1, *module.normalized_shape)
    else:
        view = (1, -1) + (1,) * (inputs.dim() - 2)
        normalized = (inputs - module.running_mean.reshape(view)) * torch.rsqrt(
            module.running_var.reshape(view) + module.eps
        )
        shape = (batch, inputs.shape[1], -1)
    reduce = 1 if isinstance(module, nn.LayerNorm) else 2
    if "weight" in wanted:
        out["weight"] = (backprop * normalized).reshape(shape).sum(dim=reduce)
    if "bias" in wanted:
        out["bias"] = backprop.reshape(shape).sum(dim=reduce)
    return out


def _active_positions(
    inputs: torch.Tensor, backprop: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, ·) inputs and backprops without the positions t whose backprop is zero for every
    example (padding a mask removes from the loss): they add nothing to Σ_t g_{i,t} x_{i,t}ᵀ."""
    if backprop.shape[1] == 1:
        return inputs, backprop
    active = backprop.abs().amax(dim=(0, 2)) > 0
    if bool(active.all()):
        return inputs, backprop
    keep = active.nonzero().squeeze(1)
    return inputs.index_select(1, keep), backprop.index_select(1, keep)
