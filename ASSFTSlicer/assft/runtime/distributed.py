"""Running under ``torchrun``: which rank this is, and moving Python objects between ranks.

Outside torchrun (no ``WORLD_SIZE`` above 1) every helper is a cheap no-op, so the same code
runs on one process. CPU ranks use the gloo backend, GPU ranks NCCL, one GPU per local rank.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

# torch.distributed is imported inside the helpers, once they know they run under torchrun: the
# CLI imports this module at start-up, and starts without torch.
if TYPE_CHECKING:
    import torch


SHUTDOWN_WAIT_S = 120  # how long a finished rank waits for the others before it leaves


def world_size() -> int:
    """Number of processes (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """The rank that writes to the workspace."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group (once) and return this rank's device."""
    if not is_distributed():
        return device
    import torch.distributed as dist

    if device.type == "cuda":
        import torch

        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def gather(value: Any) -> list[Any]:
    """Every rank's value, in rank order (``[value]`` on one process)."""
    if not is_distributed():
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast(value: Any, source: int = 0) -> Any:
    """Rank ``source``'s value on every rank."""
    if not is_distributed():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=source)
    return box[0]


def barrier() -> None:
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()


def shutdown(finished: bool) -> None:
    """Leave the process group before the interpreter exits.

    A gloo group left to the interpreter's exit can abort the process ("terminate called
    without an active exception") while another rank still talks to it. When the command
    ``finished`` on every rank they first wait for each other; after an error they do not,
    since the other rank may never arrive.
    """
    if not is_distributed():
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if finished:
        try:
            if dist.get_backend() == "gloo":
                # A rank that failed without saying so must not hold this one forever.
                dist.monitored_barrier(timeout=timedelta(seconds=SHUTDOWN_WAIT_S))
            else:
                dist.barrier()
        except RuntimeError:
            pass  # the other rank is gone; its own error says why
    dist.destroy_process_group()


def shard(items: list[Any]) -> list[Any]:
    """This rank's share of a list (every world_size-th item, from its rank)."""
    return items[rank() :: world_size()]


def unshard(shares: list[list[Any]]) -> list[Any]:
    """Undo :func:`shard` given every rank's share (as :func:`gather` returns them)."""
    total = sum(len(share) for share in shares)
    result: list[Any] = [None] * total
    for index, share in enumerate(shares):
        result[index :: len(shares)] = share
    return result
