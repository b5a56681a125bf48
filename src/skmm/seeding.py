"""Seeds: one user-facing ``random_state`` fans out into independent, named streams.

Every random choice in skmm (the sketch map, the solver's start, the rounding draw, each
class of a stratified selection) gets its own seed derived from ``(random_state, name, ...)``
with :class:`numpy.random.SeedSequence`, so adding a stage never shifts another's numbers.
Random numbers are drawn on the CPU, so a seed gives the same draws on every device.
"""

from __future__ import annotations

import contextlib
import contextvars
import zlib
from collections.abc import Iterator

import numpy as np

SEED_MAX = 2**63 - 1
_USES: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("skmm_seed_uses")


def resolve_seed(random_state: int | np.integer | np.random.Generator | None) -> int:
    """Turn ``random_state`` into a non-negative int; ``None`` draws fresh OS entropy."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(2, np.uint32).view(np.uint64)[0] >> 1)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, SEED_MAX, dtype=np.int64))
    if isinstance(random_state, (bool, np.bool_)):
        raise TypeError("random_state must be an int, a numpy Generator or None, not a bool")
    if isinstance(random_state, (int, np.integer)):
        if not 0 <= int(random_state) <= SEED_MAX:
            raise ValueError(f"random_state must be in [0, 2**63 - 1], got {random_state}")
        return int(random_state)
    raise TypeError(
        f"random_state must be an int, a numpy Generator or None, got {type(random_state).__name__}"
    )


def _key(part: int | str) -> int:
    if isinstance(part, str):
        return zlib.crc32(part.encode("utf-8"))
    if part < 0:
        raise ValueError(f"seed keys must be non-negative, got {part}")
    return int(part)


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed for the stream named ``keys`` under ``seed`` (stable across versions)."""
    uses = _USES.get(None)
    if uses is not None:
        uses[0] += 1
    words = [_key(k) for k in (seed, *keys)]
    state = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return int(state.view(np.uint64)[0] >> 1)


def numpy_rng(seed: int, *keys: int | str) -> np.random.Generator:
    """A numpy Generator for the stream named ``keys`` under ``seed``."""
    return np.random.Generator(np.random.PCG64(derive_seed(seed, *keys)))


@contextlib.contextmanager
def track_seed_use() -> Iterator[list[int]]:
    """Count the seeds derived inside the block (``[count]``): zero means no random choice
    was made there, since every one draws from a :func:`derive_seed` stream."""
    uses = [0]
    token = _USES.set(uses)
    try:
        yield uses
    finally:
        _USES.reset(token)
