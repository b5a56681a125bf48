"""Per-sample gradients g_i = ∇_θ f_i(θ) of the finetuned parameters θ, one row per example.

``target`` names the scalar f_i whose gradient is taken:

- ``"jacobian"``: f_i = vᵢᵀ o(xᵢ), the model outputs o combined with random signs vᵢ ∈ {±1}^K
  drawn per example. E[g gᵀ] = Jᵀ J (the Gauss–Newton / NTK second moment), what SkMM's
  variance bound is stated in; it needs no labels.
- ``"loss"``: f_i = ℓ(o(xᵢ), yᵢ), the training loss with the true labels (cross-entropy for
  integer labels, ½‖o − y‖² for float targets): the gradients finetuning will follow. With
  one integer label per position (labels (B, T), outputs (B, T, V): a token classifier, or a
  causal LM with its token labels, -100 ignored as in Hugging Face), f_i is the mean
  cross-entropy over the example's labelled positions; a causal LM (a ``…ForCausalLM``,
  or a PEFT model wrapping one) scores position t's logits against label t + 1, as its own
  loss does.
- ``"loss_random"``: cross-entropy with a label drawn uniformly per example, as the paper's
  code does: label-free, and closer to the loss geometry than the Jacobian.
- ``"jacobian_blocks"``: all K rows of the Jacobian, f_ik = o_k(xᵢ) for k = 1..K (K backward
  passes): example i gives a K × r block Jᵢ, flattened to one row of K·r, and Σ_i JᵢᵀJᵢ is the
  Jacobian's moment exactly, where ``"jacobian"`` has one random-sign combination vᵢᵀJᵢ of it
  per example. For models with at most :data:`MAX_BLOCKS` outputs (classifiers).

The model runs in eval mode (BatchNorm statistics frozen, dropout off). Gradients come from
one batched forward and backward with hooks on the layers (:mod:`.hooks`) when every chosen
parameter belongs to a supported layer, else from ``torch.func`` (``functional_call`` +
``vmap(grad)``); the two agree to float32 rounding. A Hugging Face model's 2-D attention
mask is turned into the 4-D additive float mask, since vmap cannot trace the value-dependent
branches of the 2-D mask code (for a causal LM, the mask of causal attention over the
unpadded positions). When the model is a bare ``nn.Linear`` (linear probing on
frozen features), the gradients are computed in closed form: g = (δ ⊗ x, δ) with δ = ∂f/∂o.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..seeding import derive_seed
from .batches import Batch
from .hooks import HookedGradients, find_owners
from .structured import KroneckerSketch

TARGETS = ("jacobian", "loss", "loss_random", "jacobian_blocks")
MAX_BLOCKS = 256
"""The most outputs ``"jacobian_blocks"`` keeps one gradient row for (K backward passes and a
K·m sketch per example)."""
IGNORE_INDEX = -100
"""A token label that no loss counts (Hugging Face's convention for padding and prompts)."""
ENGINES = ("auto", "hooks", "vmap")
RANDOM_BLOCK_ROWS = 4096


def model_outputs(result: object) -> torch.Tensor:
    """The output tensor of a forward pass: the tensor itself, ``.logits``, or the first item."""
    if isinstance(result, torch.Tensor):
        return result
    logits = getattr(result, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(result, (tuple, list)) and result and isinstance(result[0], torch.Tensor):
        return result[0]
    raise TypeError(
        f"the model returned {type(result).__name__}; expected a tensor, an object with "
        "'.logits', or a tuple whose first item is the output tensor"
    )


def random_signs(seed: int, start: int, rows: int, width: int) -> torch.Tensor:
    """±1 of shape (rows, width) for global rows [start, start + rows), batch-independent."""
    return _per_row_draw(seed, "signs", start, rows, width, lambda gen, n: _signs(gen, n, width))


def random_labels(seed: int, start: int, rows: int, n_classes: int) -> torch.Tensor:
    """A uniform class per global row in [start, start + rows), batch-independent."""
    draw = _per_row_draw(
        seed,
        f"labels{n_classes}",
        start,
        rows,
        1,
        lambda gen, n: torch.randint(0, n_classes, (n, 1), generator=gen).float(),
    )
    return draw[:, 0].long()


def _signs(gen: torch.Generator, n: int, width: int) -> torch.Tensor:
    return torch.randint(0, 2, (n, width), generator=gen).float().mul_(2).sub_(1)


def _per_row_draw(
    seed: int,
    name: str,
    start: int,
    rows: int,
    width: int,
    draw: Callable[[torch.Generator, int], torch.Tensor],
) -> torch.Tensor:
    """Rows of a table drawn block by block from (seed, name, width, block)."""
    parts = []
    first, last = start // RANDOM_BLOCK_ROWS, (start + rows - 1) // RANDOM_BLOCK_ROWS
    for block in range(first, last + 1):
        gen = torch.Generator().manual_seed(derive_seed(seed, name, width, block))
        table = draw(gen, RANDOM_BLOCK_ROWS)
        lo = max(start, block * RANDOM_BLOCK_ROWS) - block * RANDOM_BLOCK_ROWS
        hi = min(start + rows, (block + 1) * RANDOM_BLOCK_ROWS) - block * RANDOM_BLOCK_ROWS
        parts.append(table[lo:hi])
    return torch.cat(parts)


def check_finite_rows(rows: torch.Tensor, start: int) -> torch.Tensor:
    """``rows`` unchanged, or a ValueError naming the first examples with NaN/Inf gradients.

    One min/max pass decides (NaN propagates through it); rows are searched only on failure.
    """
    if rows.numel() == 0 or bool(torch.isfinite(torch.stack(torch.aminmax(rows))).all()):
        return rows
    bad = (~torch.isfinite(rows)).any(dim=1)
    if bool(bad.any()):
        examples = (torch.nonzero(bad).flatten()[:5] + start).tolist()
        raise ValueError(
            f"non-finite per-sample gradients for example(s) {examples}: check the model's "
            "outputs on them (a NaN loss, or a mask the model misreads)"
        )
    return rows


def is_hugging_face_model(model: nn.Module) -> bool:
    """A transformers ``PreTrainedModel``, or a PEFT model wrapping one (these take 4-D masks).

    A user's own module wrapping an encoder is not one: it receives its mask unchanged and
    must hand the encoder a 4-D additive mask itself (:func:`additive_attention_mask`).
    """
    transformers = sys.modules.get("transformers")
    if transformers is None:
        return False
    pretrained = transformers.PreTrainedModel
    if isinstance(model, pretrained):
        return True
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def is_causal_lm(model: nn.Module) -> bool:
    """A transformers ``…ForCausalLM``, or a PEFT model wrapping one."""
    peft = sys.modules.get("peft")
    if peft is not None and isinstance(model, peft.PeftModel):
        model = model.get_base_model()
    return is_hugging_face_model(model) and type(model).__name__.endswith("ForCausalLM")


def additive_attention_mask(
    mask: torch.Tensor, dtype: torch.dtype, causal: bool = False
) -> torch.Tensor:
    """(B, L) 0/1 padding mask → (B, 1, 1, L) additive float mask (0 keep, dtype min drop);
    ``causal``: (B, 1, L, L), position q also blind to every key after it."""
    keep = mask[:, None, None, :].bool()
    if causal:
        length = mask.shape[-1]
        keep = keep & torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    return (~keep).to(dtype) * torch.finfo(dtype).min


def token_loss(
    logits: torch.Tensor, labels: torch.Tensor, shift: bool, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of (…, T, V) ``logits`` against (…, T) integer ``labels`` over the
    positions whose label is not :data:`IGNORE_INDEX`, averaged per example (0 for an example
    with none); ``shift``: logits at t score label t + 1 (a causal LM). ``reduction="sum"``
    sums the examples' means."""
    if shift:
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    labels = labels.long()
    counted = labels != IGNORE_INDEX
    picked = torch.where(counted, labels, torch.zeros_like(labels))
    losses = -logits.log_softmax(-1).gather(-1, picked.unsqueeze(-1)).squeeze(-1)
    per_example = (losses * counted).sum(-1) / counted.sum(-1).clamp_min(1)
    return per_example.sum() if reduction == "sum" else per_example


class GradientComputer:
    """Flattened per-sample gradients (B, r) of the chosen parameters, in parameter order."""

    def __init__(
        self,
        model: nn.Module,
        params: list[tuple[str, nn.Parameter]],
        target: str,
        seed: int,
        device: torch.device,
        engine: str = "auto",
    ) -> None:
        self.model = model.to(device).eval()
        self.target = target
        self.blocked = target == "jacobian_blocks"
        self._weighted = target in ("jacobian", "jacobian_blocks")  # f_i = Σ_k aux_ik o_k(x_i)
        self.seed = seed
        self.device = device
        self.names = [name for name, _ in params]
        self.n_params = sum(p.numel() for _, p in params)
        chosen = set(self.names)
        self.params = {name: p.detach() for name, p in params}
        self.frozen = {
            name: p.detach() for name, p in model.named_parameters() if name not in chosen
        }
        self.frozen.update({name: b.detach() for name, b in model.named_buffers()})
        self.closed_form = isinstance(model, nn.Linear)
        self.hf_model = is_hugging_face_model(model)
        self.causal = is_causal_lm(model)
        self._width: int | None = None
        self._per_example = vmap(grad(self._example_value), in_dims=(None, 0, 0, 0))
        owners = None if engine == "vmap" else find_owners(model, self.names)
        if engine == "hooks" and owners is None:
            raise ValueError(
                "per_sample='hooks' needs every chosen parameter to be the weight or bias of an "
                "nn.Linear, nn.Conv2d (groups=1), nn.LayerNorm or eval-mode nn.BatchNorm*d "
                "that owns it alone; use per_sample='auto' or 'vmap'"
            )
        self.hooks = None if owners is None else HookedGradients(owners, self.names)
        self._verified = False

    @property
    def engine(self) -> str:
        """How gradients are computed now: "closed form", "hooks" or "vmap"."""
        if self.closed_form:
            return "closed form"
        return "hooks" if self.hooks is not None else "vmap"

    def __call__(self, batch: Batch, start: int) -> torch.Tensor:
        """Gradients of rows [start, start + B) of the pool, float32 (B, r); for
        ``"jacobian_blocks"``, (B·K, r) with row i·K + k the gradient of output k of row i."""
        batch = batch.to(self.device)
        if self.closed_form:
            return self._closed_form(batch, start)
        labels, aux = self._labels_and_aux(batch, start)
        if not self.blocked:
            return check_finite_rows(self._gradients(batch, labels, aux), start)
        parts = [self._gradients(batch, labels, aux) for aux in self._unit_outputs(batch.size)]
        rows = torch.stack(parts, dim=1).reshape(batch.size * len(parts), -1)
        return check_finite_rows(rows, start * len(parts))

    def n_blocks(self, batch: Batch) -> int:
        """Gradient rows per example: K for ``"jacobian_blocks"`` (checked against
        :data:`MAX_BLOCKS`), else 1."""
        if not self.blocked:
            return 1
        self._labels_and_aux(batch.to(self.device), 0)
        width = int(self._width or 0)
        if width > MAX_BLOCKS:
            raise ValueError(
                f"target='jacobian_blocks' keeps one gradient row per model output, and this "
                f"model has K = {width:,} outputs per example (at most {MAX_BLOCKS}); use "
                "target='jacobian' (one random-sign combination of the outputs) instead"
            )
        return width

    def _unit_outputs(self, rows: int) -> list[torch.Tensor]:
        """For each output k, the (rows, K) weights e_k that make f_i = o_k(x_i)."""
        eye = torch.eye(int(self._width or 0), device=self.device)
        return [eye[k].expand(rows, -1) for k in range(eye.shape[0])]

    def _gradients(self, batch: Batch, labels: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        """∇_θ f_i for every row of ``batch``, flattened in parameter order, float32 (B, r)."""
        grads = self._hooked(batch, labels, aux, None) if self.hooks is not None else None
        if grads is None:
            grads = self._per_example(self.params, batch.inputs, labels, aux)
        return torch.cat([grads[name].reshape(batch.size, -1).float() for name in self.names], 1)

    def sketched(self, batch: Batch, start: int, structured: KroneckerSketch) -> torch.Tensor:
        """Kronecker sketches (B, m), float64, of the gradients of rows [start, start + B).

        With hooks, Linear and Conv2d weight gradients are sketched from their factors and
        never formed (:mod:`.structured`); otherwise the gradients are formed and sketched.
        """
        batch = batch.to(self.device)
        if self.closed_form:
            rows = self._closed_form(batch, start)
            sizes = [self.params[name].numel() for name in self.names]
            parts = dict(zip(self.names, rows.split(sizes, dim=1), strict=True))
            return structured.of_gradients(parts).reshape(batch.size, -1)
        labels, aux = self._labels_and_aux(batch, start)
        if not self.blocked:
            return check_finite_rows(self._structured(batch, labels, aux, structured), start)
        parts = [
            self._structured(batch, labels, unit, structured)
            for unit in self._unit_outputs(batch.size)
        ]
        return check_finite_rows(torch.cat(parts, dim=1), start)

    def _structured(
        self, batch: Batch, labels: torch.Tensor, aux: torch.Tensor, structured: KroneckerSketch
    ) -> torch.Tensor:
        """Kronecker sketches (B, m) of ∇_θ f_i for every row of ``batch``."""
        sketch = self._hooked(batch, labels, aux, structured) if self.hooks is not None else None
        if sketch is None:
            sketch = structured.of_gradients(
                self._per_example(self.params, batch.inputs, labels, aux)
            )
        return sketch

    def _closed_form(self, batch: Batch, start: int) -> torch.Tensor:
        if self.target == "loss" and batch.labels is None:
            raise ValueError("target='loss' needs labels; the data yields none")
        with torch.no_grad():
            return self._linear_head(batch, self._forward(batch.inputs), start)

    def _labels_and_aux(self, batch: Batch, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The labels (zeros when there are none) and the per-row randomness of the target."""
        if self.target == "loss" and batch.labels is None:
            raise ValueError("target='loss' needs labels; the data yields none")
        if self._width is None and self.target != "loss":
            with torch.no_grad():  # the number of outputs K, once, from one example
                self._width = self._forward(batch.rows(0, 1).inputs)[0].numel()
        aux = self._aux(batch, start, self._width or 0)
        labels = batch.labels if batch.labels is not None else torch.zeros(batch.size)
        return labels.to(self.device), aux

    def _hooked(
        self,
        batch: Batch,
        labels: torch.Tensor,
        aux: torch.Tensor,
        structured: KroneckerSketch | None,
    ) -> dict[str, torch.Tensor] | torch.Tensor | None:
        """From one batched backward (:mod:`.hooks`): the gradients {name: (B, *shape)}, or
        with ``structured`` their Kronecker sketches (B, m); None to use vmap instead.

        The first batch is checked against vmap on its first two examples, both computed on
        those two rows alone (a forward over B rows rounds differently from one over 2, by
        more than 1e-4 of the largest entry on a float32 LLM); a mismatch (a layer whose input
        is not laid out batch-first, say) or a failed hook check switches to vmap for good.
        """
        leaves = {name: p.detach().requires_grad_(True) for name, p in self.params.items()}
        state = {**self.frozen, **leaves}

        def hooked(
            rows: Batch, labels: torch.Tensor, aux: torch.Tensor
        ) -> dict[str, torch.Tensor] | torch.Tensor | None:
            def run() -> torch.Tensor:
                with torch.enable_grad():
                    outputs = model_outputs(self._call(state, rows.inputs))
                    return self._batch_value(outputs, labels, aux)

            parts = self.hooks.contributions(run, rows.size, factored=structured is not None)
            if parts is None:
                return None
            if structured is not None:
                return structured.of_parts(parts)
            result: dict[str, torch.Tensor] = {}
            for name, value in parts:
                result[name] = result[name] + value if name in result else value
            return result

        result = hooked(batch, labels, aux)
        if result is None:
            self.hooks = None
            return None
        if self._verified:
            return result
        self._verified = True
        count = min(2, batch.size)
        head = batch.rows(0, count)
        ours = result if count == batch.size else hooked(head, labels[:count], aux[:count])
        with warnings.catch_warnings():
            # skmm's own two-example check: vmap's "performance drop" notes (no batching rule
            # for a kernel, e.g. CPU flash attention) concern this check, not the user's run
            warnings.filterwarnings("ignore", "There is a performance drop", UserWarning)
            reference = self._per_example(self.params, head.inputs, labels[:count], aux[:count])
        if ours is None:
            pairs = []
        elif structured is None:
            pairs = [(ours[name], reference[name]) for name in self.names]
        else:
            pairs = [(ours, structured.of_gradients(reference))]
        scale = max((float(theirs.abs().max()) for _, theirs in pairs if theirs.numel()), default=0)
        if pairs and all(_close(mine, theirs, scale) for mine, theirs in pairs):
            return result
        warnings.warn(
            "per-sample gradients from hooks disagree with vmap on this model (a layer whose "
            "input is not batch-first?); using vmap",
            RuntimeWarning,
            stacklevel=4,
        )
        self.hooks = None
        return None

    def _batch_value(
        self, outputs: torch.Tensor, labels: torch.Tensor, aux: torch.Tensor
    ) -> torch.Tensor:
        """Σ_i f_i over the batch, f_i as in :meth:`_example_value`; outputs are (B, …)."""
        if self._token_labels(outputs[0], labels[0]):
            return token_loss(outputs, labels, self.causal, reduction="sum")
        outputs = outputs.reshape(outputs.shape[0], -1)
        if self._weighted:
            return (outputs * aux).sum()
        if self.target == "loss_random":
            return F.cross_entropy(outputs, aux, reduction="sum")
        if labels.is_floating_point():
            return 0.5 * (outputs - labels.reshape(outputs.shape[0], -1)).square().sum()
        return F.cross_entropy(outputs, labels, reduction="sum")

    def _forward(self, inputs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        return model_outputs(self._call({**self.frozen, **self.params}, inputs))

    def _call(
        self, state: dict[str, torch.Tensor], inputs: torch.Tensor | dict[str, torch.Tensor]
    ) -> object:
        """The model's forward with ``state`` as its parameters and buffers."""
        if isinstance(inputs, dict):
            return functional_call(self.model, state, (), self._kwargs(inputs))
        return functional_call(self.model, state, (inputs,))

    def _token_labels(self, output: torch.Tensor, label: torch.Tensor) -> bool:
        """One example's ``label`` is one integer per position of its (T, V) ``output``."""
        return (
            self.target == "loss"
            and label.dim() >= 1
            and not label.is_floating_point()
            and output.dim() == label.dim() + 1
            and output.shape[:-1] == label.shape
        )

    def _kwargs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask = inputs.get("attention_mask")
        if not self.hf_model or mask is None or mask.dim() != 2:
            return inputs
        dtype = next(iter(self.params.values())).dtype
        additive = additive_attention_mask(mask, dtype, causal=self.causal)
        return {**inputs, "attention_mask": additive}

    def _aux(self, batch: Batch, start: int, width: int) -> torch.Tensor:
        """Per-row randomness: signs (jacobian), random labels (loss_random), else zeros."""
        if self.target == "jacobian":
            return random_signs(self.seed, start, batch.size, width).to(self.device)
        if self.target == "loss_random":
            return random_labels(self.seed, start, batch.size, width).to(self.device)
        return torch.zeros(batch.size, device=self.device)

    def _example_value(
        self,
        params: dict[str, torch.Tensor],
        inputs: torch.Tensor | dict[str, torch.Tensor],
        label: torch.Tensor,
        aux: torch.Tensor,
    ) -> torch.Tensor:
        state = {**self.frozen, **params}
        if isinstance(inputs, dict):
            kwargs = self._kwargs({key: value.unsqueeze(0) for key, value in inputs.items()})
            result = functional_call(self.model, state, (), kwargs)
        else:
            result = functional_call(self.model, state, (inputs.unsqueeze(0),))
        output = model_outputs(result)[0]
        if self._token_labels(output, label):
            return token_loss(output, label, self.causal)
        output = output.reshape(-1)
        if self._weighted:
            return (output * aux).sum()
        if self.target == "loss_random":
            return F.cross_entropy(output, aux)
        if label.is_floating_point():
            return 0.5 * (output - label.reshape(-1)).square().sum()
        return F.cross_entropy(output, label)

    def _linear_head(self, batch: Batch, outputs: torch.Tensor, start: int) -> torch.Tensor:
        """g_W = δ xᵀ, g_b = δ with δ = ∂f/∂o, for f as in :data:`TARGETS` (no autograd)."""
        inputs = batch.inputs
        if isinstance(inputs, dict):
            raise TypeError("a bare nn.Linear takes a feature tensor, not keyword inputs")
        features = inputs.reshape(batch.size, -1).float()
        outputs = outputs.reshape(batch.size, -1).float()
        width = outputs.shape[1]
        if self.blocked:  # row i·K + k: δ = e_k
            features = features.repeat_interleave(width, dim=0)
            delta = torch.eye(width, device=self.device).repeat(batch.size, 1)
            start *= width
        elif self.target == "jacobian":
            delta = random_signs(self.seed, start, batch.size, width).to(self.device)
        else:
            labels = (
                random_labels(self.seed, start, batch.size, width).to(self.device)
                if self.target == "loss_random"
                else batch.labels
            )
            if labels.is_floating_point():
                delta = outputs - labels.reshape(batch.size, -1).float()
            else:
                delta = outputs.softmax(dim=1) - F.one_hot(labels.long(), width).float()
        parts = {
            "weight": (delta[:, :, None] * features[:, None, :]).reshape(delta.shape[0], -1),
            "bias": delta,
        }
        return check_finite_rows(torch.cat([parts[name] for name in self.names], dim=1), start)


def _close(ours: torch.Tensor, reference: torch.Tensor, scale: float) -> bool:
    """Equal to float32 rounding: within 1e-3 relative, or 1e-4 of the largest gradient entry
    (a gradient that is zero in exact arithmetic, like a key bias's, is rounding noise)."""
    return bool(torch.allclose(ours.to(reference.dtype), reference, rtol=1e-3, atol=1e-4 * scale))
