"""One code path on one process or on P ranks of ``torch.distributed`` (launched by torchrun).

skmm starts no processes: ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``) does, and :func:`world` joins the process group on first
use, with gloo for CPU tensors and, where CUDA is present, NCCL for CUDA tensors. A process
group the caller set up already is used as it is. Without a launcher, every helper here is a
no-op, so algorithm code is written once, over "this rank's rows, then reduce".

skmm's own messages are small (an m×m matrix, m-vectors, scalars, the n picked rows) and
travel as CPU tensors through gloo, which also makes them bit-identical across runs.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

_cpu_group: Any = None


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) on a single process, else this rank's place among P.

    Joins the process group from the launcher's environment variables when ``WORLD_SIZE``
    is above 1 and no group exists yet.
    """
    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return 0, 1
        _init_from_env()
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """True on rank 0 (and on a single process): the rank that prints and writes results."""
    return world()[0] == 0


def shutdown(synchronize: bool) -> None:
    """Leave the process group, if one was joined: after a barrier when ``synchronize`` (a
    command that ended normally on every rank), so that no rank tears its connections down
    while another still uses them (gloo then aborts the slower rank's process)."""
    if not dist.is_available() or not dist.is_initialized():
        return
    global _cpu_group
    if synchronize:
        dist.barrier(group=_group())
    dist.destroy_process_group()
    _cpu_group = None


def _init_from_env() -> None:
    """``init_process_group`` from the env:// variables: gloo, plus NCCL for CUDA tensors.

    The group is left again at interpreter exit if the caller has not left it: a gloo group
    still alive during interpreter finalization can abort the process (SIGABRT, "terminate
    called without an active exception") after all its work has ended.
    """
    backend = "gloo"
    if torch.cuda.is_available():
        backend = "cpu:gloo,cuda:nccl"
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    atexit.register(shutdown, synchronize=False)


def _group() -> Any:
    """A process group that carries CPU tensors: the default one when it has gloo."""
    global _cpu_group
    if "gloo" in str(dist.get_backend()):
        return None
    if _cpu_group is None:
        _cpu_group = dist.new_group(backend="gloo")
    return _cpu_group


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """(P, *shape): every rank's ``tensor`` (same shape and dtype everywhere), in rank order."""
    size = world()[1]
    if size == 1:
        return tensor.unsqueeze(0)
    local = tensor.detach().cpu().contiguous()
    parts = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(parts, local, group=_group())
    return torch.stack(parts).to(tensor.device)


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows (r_p, *shape) concatenated in rank order; r_p may differ by rank."""
    size = world()[1]
    if size == 1:
        return tensor
    counts = all_gather(torch.tensor([tensor.shape[0]], dtype=torch.int64)).flatten().tolist()
    padded = torch.zeros((max(counts), *tensor.shape[1:]), dtype=tensor.dtype)
    padded[: tensor.shape[0]] = tensor.detach().cpu()
    gathered = all_gather(padded)
    return torch.cat([gathered[p, :count] for p, count in enumerate(counts)]).to(tensor.device)


def all_gather_object(value: T) -> list[T]:
    """Every rank's picklable ``value``, in rank order."""
    size = world()[1]
    if size == 1:
        return [value]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, value, group=_group())
    return out


def broadcast_object(value: T, source: int = 0) -> T:
    """Rank ``source``'s picklable ``value`` on every rank."""
    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, source, group=_group())
    return box[0]


def run_on_main(function: Callable[[], T]) -> T:
    """``function()`` run on rank 0 only; its result, or the exception it raised, on every rank.

    The other ranks wait, so an error on rank 0 stops every rank with the same message
    instead of leaving them blocked in a later collective.
    """
    if world()[1] == 1:
        return function()
    outcome: tuple[bool, Any] = (True, None)
    if is_main():
        try:
            outcome = (True, function())
        except Exception as exc:
            outcome = (False, exc)
    ok, value = broadcast_object(outcome)
    if not ok:
        raise value
    return value


def fold_in_rank_order(partials: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Σ of every rank's ``partials``, added one by one in rank order, then list order.

    The sum is the left fold ((0 + a₁) + a₂) + … over the concatenated lists, so it does not
    depend on how the list is split over ranks. Rank p receives the running sum from rank
    p − 1, adds its own terms and hands it on; the last rank's total is broadcast. Only one
    partial travels at a time: fit for m×m matrices.
    """
    rank, size = world()
    total = torch.zeros_like(like) if size == 1 else torch.zeros_like(like, device="cpu")
    group = _group() if size > 1 else None
    if rank > 0:
        dist.recv(total, rank - 1, group=group)
    for part in partials:
        total = total + part.to(total.device)
    if size == 1:
        return total
    if rank < size - 1:
        dist.send(total, rank + 1, group=group)
    dist.broadcast(total, size - 1, group=group)
    return total.to(like.device)
