"""The Kronecker-structured sketch of per-sample gradients, ``sketch="kronecker"``.

A matrix parameter W (a Linear weight, or a conv weight read as p × q with q = in·kh·kw)
gets the map S_W(G) = vec(A_Wᵀ G B_W), i.e. (A_W ⊗ B_W)ᵀ vec(G), with A_W ∈ R^{p×a} and
B_W ∈ R^{q×b} of independent N(0, 1/a) and N(0, 1/b) entries and a·b = m (a the largest
divisor of m not above √m). Every other parameter gets a dense Gaussian map with N(0, 1/m)
entries. "Gaussian" entries are the discrete normal of :func:`skmm.sketch.discrete_normal`
(integer draws and a table, so the maps are the same on every processor). A gradient's sketch
is the sum of its parameters' sketches. Each map has E[S Sᵀ] = I and the maps are
independent, so E⟨S(g), S(h)⟩ = ⟨g, h⟩, as for the Gaussian and sparse sign maps; Kronecker
maps concentrate less well (a larger variance at equal m), the price of never forming the
gradient. For a layer whose per-sample gradient is Σ_t g_t x_tᵀ,

    S_W = Σ_t (A_Wᵀ g_t)(B_Wᵀ x_t)ᵀ,

which costs O(T·(p·a + q·b)) per example instead of the O(T·p·q) of the gradient itself.
This is a different map from the block-seeded Gaussian / sparse sign maps of
:mod:`skmm.sketch`: the same gradients give different (equally distributed in inner
products) features, so it is its own option.
"""

from __future__ import annotations

import math

import torch

from ..seeding import derive_seed
from ..sketch import discrete_normal, normal_table_scale
from .hooks import Factors


def kronecker_factors(sketch_dim: int) -> tuple[int, int]:
    """(a, b) with a·b = m and a the largest divisor of m with a ≤ √m."""
    left = max(d for d in range(1, math.isqrt(sketch_dim) + 1) if sketch_dim % d == 0)
    return left, sketch_dim // left


class KroneckerSketch:
    """Maps for each chosen parameter (by name, in order), drawn from (seed, m, index)."""

    def __init__(
        self,
        shapes: dict[str, torch.Size],
        sketch_dim: int,
        seed: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.sketch_dim = sketch_dim
        self.left, self.right = kronecker_factors(sketch_dim)
        self.maps: dict[str, tuple[torch.Tensor, ...]] = {}
        for index, (name, shape) in enumerate(shapes.items()):

            def draw(rows: int, cols: int, part: str, index: int = index) -> torch.Tensor:
                gen = torch.Generator().manual_seed(
                    derive_seed(seed, "kronecker", sketch_dim, index, part)
                )
                values = discrete_normal(gen, (rows, cols)).to(torch.float32)
                scale = normal_table_scale() / math.sqrt(cols)
                return values.mul_(scale).to(device=device, dtype=dtype)

            if len(shape) >= 2:
                rows, cols = shape[0], math.prod(shape[1:])
                self.maps[name] = (draw(rows, self.left, "left"), draw(cols, self.right, "right"))
            else:
                self.maps[name] = (draw(math.prod(shape), sketch_dim, "dense"),)

    def of_gradient(self, name: str, gradient: torch.Tensor) -> torch.Tensor:
        """S(g) for per-sample gradients (B, *shape) of one parameter: (B, m)."""
        batch = gradient.shape[0]
        maps = self.maps[name]
        if len(maps) == 1:
            return gradient.reshape(batch, -1) @ maps[0]
        left, right = maps
        matrix = gradient.reshape(batch, left.shape[0], right.shape[0])
        return (left.T @ matrix @ right).reshape(batch, -1)

    def of_factors(self, name: str, backprop: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """S of Σ_t g_t x_tᵀ from g (B, T, p) and x (B, T, q), never forming the p × q matrix."""
        left, right = self.maps[name]
        projected_out = (backprop @ left).transpose(1, 2)
        return torch.bmm(projected_out, inputs @ right).reshape(backprop.shape[0], -1)

    def of_gradients(self, gradients: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ over parameters of S(g), float64 (B, m), from {name: (B, *shape)}."""
        return self.of_parts(list(gradients.items()))

    def of_parts(self, parts: list[tuple[str, torch.Tensor | Factors]]) -> torch.Tensor:
        """Σ of the sketches of (name, gradient or Factors) contributions, float64 (B, m)."""
        total = None
        for name, value in parts:
            if isinstance(value, Factors):
                term = self.of_factors(name, value.backprop, value.inputs)
            else:
                term = self.of_gradient(name, value)
            term = term.to(torch.float64)
            total = term if total is None else total + term
        return total
