"""Measuring for the benchmarks: device sync, wall time per call, images/s alternated in ABBA
order, peak memory, the machine's description, and the set-up every benchmark shares."""

from __future__ import annotations

import contextlib
import csv
import ctypes
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of train()/extract() would swamp the tables

import torch  # noqa: E402

from gankd import checkpoint as ckpt  # noqa: E402
from gankd.models import Architecture, Generator, count_parameters  # noqa: E402

# --------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock reading includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict[str, float | None]):
    """Peak memory growth (MiB) over the block, written to ``out["peak_mib"]``."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield
        sync(device)
        out["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return
    resettable = False
    if _libc is not None:
        with contextlib.suppress(AttributeError):
            _libc.malloc_trim(0)  # hand freed heap back, so the baseline is live memory only
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM, the peak resident set size, to the current size
            resettable = True
        except OSError:
            pass
    base = _status_kib("VmRSS")
    yield
    peak = _status_kib("VmHWM")
    out["peak_mib"] = (peak - base) / 1024 if resettable and peak is not None and base is not None else None


def abba(names: list[str], repeats: int) -> list[str]:
    """``names`` ``repeats`` times in ABBA order (A B, B A, A B, ...), so that a drift of the
    machine's speed during the run (thermal, other load) falls on every side alike."""
    return [name for r in range(repeats) for name in (names if r % 2 == 0 else names[::-1])]


def alternate(runs: dict[str, Callable[[], list[float]]], repeats: int, device: torch.device) -> dict[str, dict[str, Any]]:
    """Run each callable ``repeats`` times, alternating in ABBA order; each returns a list of
    images/s figures. Returns per name the median, all figures and the median peak memory."""
    names = list(runs)
    figures: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, list[float]] = {n: [] for n in names}
    for name in abba(names, repeats):
        mem: dict[str, float | None] = {}
        with peak_memory(device, mem):
            values = runs[name]()
        figures[name].extend(values)
        if mem.get("peak_mib") is not None:
            peaks[name].append(mem["peak_mib"])
    return {
        n: {"images_per_s": statistics.median(figures[n]), "samples": [round(v, 2) for v in figures[n]],
            "peak_mib": statistics.median(peaks[n]) if peaks[n] else None}
        for n in names
    }


def seconds_per_call(fn: Callable[[], Any], device: torch.device, min_seconds: float, warmup: int = 0, min_calls: int = 1) -> float:
    """Mean wall time of ``fn`` (device work included), after ``warmup`` untimed calls, over at
    least ``min_calls`` calls and ``min_seconds``."""
    for _ in range(warmup):
        fn()
    sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and calls >= min_calls:
            return elapsed / calls


def timed_rate(fn: Callable[[], Any], images: int, device: torch.device, min_seconds: float) -> list[float]:
    """images/s of ``fn`` (which makes ``images`` images), called until ``min_seconds`` have passed."""
    return [images / seconds_per_call(fn, device, min_seconds)]


def machine_description(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": cpu, "cores": cores, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["description"] = f"{info['gpu']}, {cores}-core CPU ({cpu})"
    else:
        info["description"] = f"{cores}-core CPU ({cpu}), no GPU, {info['torch_threads']} torch thread(s), float32"
    return info



# --------------------------------------------------------------------------- shared set-up


def metrics_rates(run_dir: Path) -> list[float]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [float(r["images_per_s"]) for r in rows[1:]]  # the first interval includes warm-up


def settled_generator(arch: Architecture, device: torch.device, seed: int) -> Generator:
    """A generator whose BatchNorm running statistics are not the trivial (0, 1) of a fresh one."""
    torch.manual_seed(seed)
    g = Generator(arch).to(device)
    with torch.no_grad():
        for _ in range(3):
            g(torch.randn(64, arch.latent_dim, device=device) * 1.5)
    return g.eval()


def write_teacher(path: Path, arch: Architecture, seed: int) -> dict[str, torch.Tensor]:
    g = settled_generator(arch, torch.device("cpu"), seed)
    meta = {"method": "gan", "arch": arch.to_dict(), "parameters": count_parameters(g), "step": 0, "loss": "wgan-gp",
            "dataset": {"kind": "mnist", "root": None, "image_size": arch.image_size, "channels": arch.channels, "split": "train"}}
    ckpt.save_checkpoint(path, ckpt.prefixed("generator", g.state_dict()), meta)
    return g.state_dict()
