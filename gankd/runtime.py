"""Where a run executes: the device, the process group under ``torchrun``, stop requests.

Nothing here knows about GANs; training, evaluation and the CLI share it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

from gankd.errors import GankdError
from gankd.files import owned_folder


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GankdError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GankdError("--device cuda was asked for, but CUDA is not available on this machine")
    return device


def check_precision(precision: str, device: torch.device) -> None:
    """bf16 needs hardware that computes it natively; emulated bf16 on a CPU is slower than fp32."""
    if precision != "bf16":
        return
    if device.type == "cpu" and not torch.cpu._is_avx512_bf16_supported():
        raise GankdError("--precision bf16 on the CPU needs native bfloat16 (AVX512-BF16 or AMX); this CPU has neither: use fp32")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise GankdError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; use fp32")


@contextlib.contextmanager
def distributed_runtime(device_name: str) -> Iterator[Runtime]:
    """Single process, or one process of a ``torchrun`` group (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield Runtime(resolve_device(device_name))
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Runtime(device, dist.get_rank(), world_size)
        # A rank that closes its connections while a peer still finishes (rank 0 writes the last
        # checkpoint and samples) can make the peer's gloo threads abort at exit: meet first.
        dist.barrier()
    finally:
        gc.collect()  # DDP wrappers caught in reference cycles still hold the group; free them first
        dist.destroy_process_group()


@contextlib.contextmanager
def owned_run_folders(folders: list[Path], rt: Runtime) -> Iterator[None]:
    """Hold every run folder's lock (:func:`gankd.files.owned_folder`) for the block.

    Under ``torchrun`` only rank 0 writes, so rank 0 alone takes the locks and holds them for the
    whole group; the other ranks learn through one collective whether it got them, and stop with
    it if not. A second group on the same folders fails on its rank 0, and all its ranks stop.
    """
    with contextlib.ExitStack() as held:
        refused: GankdError | None = None
        if rt.is_main:
            try:
                for folder in folders:
                    held.enter_context(owned_folder(folder))
            except GankdError as exc:
                refused = exc
        if rt.world_size > 1:
            flag = torch.tensor([int(refused is not None)], device=rt.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and refused is None:
                raise GankdError(f"rank {rt.rank}: rank 0 could not lock the run folder(s) {', '.join(map(str, folders))}; see its message")
        if refused is not None:
            raise refused
        yield


@contextlib.contextmanager
def stop_requests(forward: Callable[[int], None] | None = None) -> Iterator[dict[str, int]]:
    """Turn SIGINT/SIGTERM into a flag the loop checks, so it can checkpoint before exiting;
    ``forward`` also passes the signal on (a sweep, to the runs it started)."""
    received: dict[str, int] = {}
    previous = {}

    def handler(signum: int, _frame: Any) -> None:
        received["signal"] = signum
        if forward is not None:
            forward(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, handler)
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_flag(stop: dict[str, int], rt: Runtime) -> int:
    """The signal number if any process of the group was asked to stop (all agree), else 0."""
    local = stop.get("signal", 0)
    if rt.world_size == 1:
        return local
    flag = torch.tensor([local], device=rt.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def gather_rng(rng: torch.Generator, rt: Runtime) -> list[torch.Tensor]:
    """Every process's state of ``rng`` (a collective: all ranks call it)."""
    state = rng.get_state()
    if rt.world_size == 1:
        return [state]
    comm_device = rt.device if rt.device.type == "cuda" else torch.device("cpu")
    parts = [torch.empty_like(state, device=comm_device) for _ in range(rt.world_size)]
    dist.all_gather(parts, state.to(comm_device))
    return [p.cpu() for p in parts]
