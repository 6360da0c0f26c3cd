"""Sharding work across processes started by ``torchrun`` (``torch.distributed``).

:func:`context` reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment. With
``WORLD_SIZE`` unset or 1 it returns a single-process :class:`Context` and touches nothing;
otherwise it joins the process group (``gloo`` on the CPU, ``nccl`` with CUDA) that torchrun's
``MASTER_ADDR``/``MASTER_PORT`` describe. Work is split into units (e.g. batches) that are dealt
round-robin, so each unit is done by exactly one process and a unit's result does not depend on
the number of processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from zplug.errors import DistributedError


@attrs.frozen(kw_only=True)
class Context:
    """Where this process stands among the processes of one run.

    Attributes
    ----------
    rank : int
        This process's rank (0 is the main process).
    world_size : int
        The number of processes.
    local_rank : int
        The rank on this machine (selects the GPU).
    backend : str or None
        ``"gloo"`` or ``"nccl"`` when a process group was joined, else ``None``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (which prints the summary)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use."""
        return self.backend is not None

    def owns(self, unit: int) -> bool:
        """Whether this process does unit number ``unit`` (round-robin: ``unit % world_size == rank``)."""
        return unit % self.world_size == self.rank

    def mine(self, n_units: int) -> list[int]:
        """Return the unit numbers of ``range(n_units)`` that this process does."""
        return [unit for unit in range(n_units) if self.owns(unit)]

    def all_gather(self, obj: Any) -> list[Any]:
        """Return every process's ``obj`` (a picklable object), by rank, on every process."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    try:
        return int(text) if text else default
    except ValueError:
        raise DistributedError(f"environment variable {name}={text!r} is not an integer") from None


@contextmanager
def context(device: str = "cpu") -> Iterator[Context]:
    """Join the process group described by the environment (if any) for the run; leave it on exit.

    Parameters
    ----------
    device : str
        ``"cpu"`` (backend ``gloo``) or ``"cuda"`` (backend ``nccl``; each process uses the GPU
        ``LOCAL_RANK``).

    Yields
    ------
    Context
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size <= 1:
        yield Context()
        return
    if not 0 <= rank < world_size:
        raise DistributedError(f"RANK={rank} is not in 0..{world_size - 1} (WORLD_SIZE={world_size})")
    import torch
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        if torch.cuda.device_count() <= local_rank:
            raise DistributedError(
                f"rank {rank} needs GPU {local_rank} (LOCAL_RANK) but {torch.cuda.device_count()} are visible"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    try:
        yield Context(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)
    finally:
        dist.destroy_process_group()


__all__ = ("Context", "DistributedError", "context")
