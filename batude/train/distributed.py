"""Multi-process data-parallel training: a ``torchrun`` launch, DDP wrapping and rank-0 broadcasts.

``torchrun --nproc_per_node=N -m batude compress ...`` starts N processes with ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` in the environment. :func:`distributed_session` turns that into a
process group (``nccl`` on CUDA, ``gloo`` on CPU; one GPU per process, ``cuda:LOCAL_RANK``) and
destroys it at the end. Everything else here is a no-op in a single process:

* :func:`wrap_ddp` wraps a model in :class:`~torch.nn.parallel.DistributedDataParallel` (which
  broadcasts rank 0's parameters and buffers when it is built and averages gradients each step);
* :func:`sync_buffers` copies rank 0's buffers (BatchNorm running statistics) to every rank, so
  evaluation and checkpoints see one model; :func:`sync_weights` copies parameters too;
* :func:`broadcast_tree` makes every rank hold rank 0's copy of a nested dict/list of tensors and
  plain values (a rank plan); :func:`sync_state` loads rank 0's ``state_dict()`` of any object
  into the other ranks' copies (BC-ADL's Z/U state);
* :func:`all_reduce_sums` adds per-rank counters (evaluation over sharded test sets).

Only rank 0 writes files (:func:`is_main`); every rank reads a run's ``state.pt`` to resume, so the
output folder must be visible to all processes (one machine, or a shared file system).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from batude.errors import BatudeError

__all__ = ["World", "launched_world_size", "distributed_session", "release_ddp", "is_distributed", "is_main", "local_device",
           "wrap_ddp", "unwrap", "sync_buffers", "sync_weights", "sync_state", "broadcast_tree", "all_reduce_sums", "barrier"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes (``size == 1``: not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    """``WORLD_SIZE`` from the environment (set by ``torchrun``); 1 when absent."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise BatudeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with torchrun") from None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """True in a single process and on rank 0 of a process group (the only rank that writes files)."""
    return not is_distributed() or dist.get_rank() == 0


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None or not value.lstrip("-").isdigit():
        raise BatudeError(f"WORLD_SIZE is set but {name} is {value!r}; launch multi-process runs with torchrun")
    return int(value)


def _pick_backend(device: str | None) -> str:
    try:
        want = torch.device(device) if device is not None else None
    except RuntimeError:
        raise BatudeError(f"unknown device '{device}'; use cpu or cuda") from None
    if want is not None and want.type == "cuda" and want.index is not None:
        raise BatudeError(f"--device {device}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda")
    if want is not None and want.type not in ("cuda", "cpu"):
        raise BatudeError(f"--device {device} is not supported for multi-process training; use cpu or cuda")
    use_cuda = want.type == "cuda" if want is not None else torch.cuda.is_available()
    if use_cuda and not torch.cuda.is_available():
        raise BatudeError("--device cuda requested but CUDA is not available; use --device cpu (gloo)")
    return "nccl" if use_cuda else "gloo"


@contextlib.contextmanager
def distributed_session(device: str | None = None) -> Iterator[World]:
    """Join the ``torchrun`` process group for the duration of the block; yields this process's :class:`World`.

    Without a launcher (``WORLD_SIZE`` unset or 1) it yields ``World()`` and does nothing. A process
    group the caller already initialised is used as is and left open. ``device`` is the user's
    choice (``None``, ``"cpu"``, ``"cuda"``): CPU uses ``gloo``, CUDA ``nccl`` with ``cuda:LOCAL_RANK``.
    """
    if is_distributed():
        yield World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
        return
    size = launched_world_size()
    if size <= 1:
        yield World()
        return
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    backend = _pick_backend(device)
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise BatudeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                              "lower --nproc_per_node")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://")
    log.info("process %d of %d (%s, local rank %d)", rank, size, backend, local_rank)
    try:
        yield World(rank, size, local_rank)
    finally:
        release_ddp()
        dist.destroy_process_group()


def release_ddp() -> None:
    """Collect garbage left by DDP training before the next wrapper or the end of the process group.

    Objects of a DDP training step (communication work, futures) can sit in reference cycles; if
    they outlive ``destroy_process_group`` the process may abort at exit ("terminate called without
    an active exception", seen with gloo on CPU about one run in ten).
    """
    if is_distributed():
        gc.collect()


def local_device(device: torch.device) -> torch.device:
    """``device`` for this process: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a process group."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _comm_device() -> torch.device:
    """Where collective tensors must live: the process's GPU for nccl, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DDP in a process group (else unchanged). Building it broadcasts rank 0's
    parameters and buffers; forward passes in training also re-broadcast the buffers."""
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def _broadcast_into(tensors: Iterator[torch.Tensor]) -> None:
    comm = _comm_device()
    for tensor in tensors:
        t = tensor.detach().to(comm).contiguous()  # the tensor itself when it is on comm and contiguous
        dist.broadcast(t, src=0)
        if t.data_ptr() != tensor.data_ptr():
            tensor.copy_(t)


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) into every rank's ``model``."""
    if is_distributed():
        _broadcast_into(unwrap(model).buffers())


def sync_weights(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``model`` (same structure everywhere)."""
    if is_distributed():
        _broadcast_into(p.data for p in unwrap(model).parameters())
        _broadcast_into(unwrap(model).buffers())


class _Slot:
    """A tensor's place in a broadcast skeleton."""

    def __init__(self, index: int, shape: Sequence[int], dtype: torch.dtype) -> None:
        self.index, self.shape, self.dtype = index, tuple(shape), dtype


def _strip(tree: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(tree, torch.Tensor):
        tensors.append(tree)
        return _Slot(len(tensors) - 1, tree.shape, tree.dtype)
    if isinstance(tree, dict):
        return {k: _strip(v, tensors) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_strip(v, tensors) for v in tree)
    return tree


def _fill(tree: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(tree, _Slot):
        return tensors[tree.index]
    if isinstance(tree, dict):
        return {k: _fill(v, tensors) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_fill(v, tensors) for v in tree)
    return tree


def broadcast_tree(tree: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``tree`` (nested dicts/lists/tuples of tensors and picklable values) on every rank.

    The structure and plain values travel as one pickled object, each tensor by ``dist.broadcast``
    (on the GPU for nccl); other ranks get the tensors on the CPU. Rank ``src`` (and a single
    process) gets ``tree`` itself back.
    """
    if not is_distributed():
        return tree
    tensors: list[torch.Tensor] = []
    skeleton = [_strip(tree, tensors)]
    dist.broadcast_object_list(skeleton, src=src, device=_comm_device())
    if dist.get_rank() == src:
        for t in tensors:
            dist.broadcast(t.detach().to(_comm_device()).contiguous(), src=src)
        return tree
    received = []
    for slot in _flat_slots(skeleton[0]):
        t = torch.empty(slot.shape, dtype=slot.dtype, device=_comm_device())
        dist.broadcast(t, src=src)
        received.append(t.cpu())
    return _fill(skeleton[0], received)


def _flat_slots(tree: Any) -> list[_Slot]:
    slots: list[_Slot] = []

    def walk(node: Any) -> None:
        if isinstance(node, _Slot):
            slots.append(node)
        elif isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)

    walk(tree)
    return sorted(slots, key=lambda s: s.index)


def sync_state(obj: Any) -> None:
    """Load rank 0's ``obj.state_dict()`` into ``obj`` on every other rank (e.g. BC-ADL's Z/U state).

    Every rank must call it at the same point; a no-op in a single process.
    """
    if is_distributed():
        state = broadcast_tree(obj.state_dict())
        if not is_main():
            obj.load_state_dict(state)


def all_reduce_sums(values: Sequence[float]) -> list[float]:
    """Element-wise sums of ``values`` over all ranks (float64); ``values`` itself in a single process."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if is_distributed():
        dist.barrier()
