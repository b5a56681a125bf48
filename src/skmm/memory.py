"""Memory limits: requests that would not fit are refused before anything is allocated.

The limit is ``SKMM_MAX_MEMORY`` when set, else the memory of the CUDA device or of the
machine; :func:`check_memory` raises :class:`MemoryLimitError` (a ValueError) naming the size
needed, the limit, where it comes from and the streaming alternative.
"""

from __future__ import annotations

import os
import re

import torch

MEMORY_ENV = "SKMM_MAX_MEMORY"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


class MemoryLimitError(ValueError):
    """A request that would need more memory than allowed, refused before allocating anything."""


def format_bytes(count: float) -> str:
    """A byte count for people: '512 B', '3.0 MiB', '1.5 TiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def memory_limit(device: torch.device | None = None) -> int | None:
    """Bytes one request may allocate: ``SKMM_MAX_MEMORY`` if set (e.g. ``8G``, ``512M`` or a
    byte count), else the memory of a CUDA ``device`` or the machine's physical memory; None
    where neither is known."""
    text = os.environ.get(MEMORY_ENV)
    if text:
        match = _SIZE.match(text)
        if not match:
            raise ValueError(
                f"{MEMORY_ENV}={text!r} is not a size; use a byte count or e.g. 512M, 8G, 1T"
            )
        power = " KMGT".index(match.group(2).upper() or " ")
        return int(float(match.group(1)) * 1024**power)
    if device is not None and device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def check_memory(
    nbytes: int, what: str, alternative: str, device: torch.device | None = None
) -> None:
    """Refuse up front (:class:`MemoryLimitError`) when ``what`` needs more than the limit.

    The message gives the size needed, the limit and where it comes from, and
    ``alternative``: the streaming or smaller way to get the result.
    """
    limit = memory_limit(device)
    if limit is None or nbytes <= limit:
        return
    if os.environ.get(MEMORY_ENV):
        source = f"{MEMORY_ENV}={os.environ[MEMORY_ENV]}"
    else:
        where = "the GPU's" if device is not None and device.type == "cuda" else "this machine's"
        source = f"{where} memory; set {MEMORY_ENV} to change the limit"
    raise MemoryLimitError(
        f"{what} needs {format_bytes(nbytes)} of memory, more than the limit of "
        f"{format_bytes(limit)} ({source}); {alternative}"
    )
