"""Where and how wide to compute: the torch device (the GPU when there is one, the CPU otherwise, always
overridable) and how many threads torch may use — the cores this process may really run on, not the machine's
total.

Combined with passive waiting (set in the package's ``__init__``), inference stays fast when other work —
a training, camera software, a second app — shares the cores. ``INSPECTION_THREADS`` overrides the count.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any

import torch

from .errors import ParameterError

DEVICE_CHOICES = ("auto", "cpu", "cuda")
THREADS_ENV = "INSPECTION_THREADS"



def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn "auto" (or None) into cuda when available, else cpu; validate an explicit choice."""
    return _resolve(str(device) if device is not None else "auto")


@functools.lru_cache(maxsize=16)
def _resolve(device: str) -> torch.device:
    # Cached: asking the driver whether a GPU is there costs time, and models ask on every batch.
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ParameterError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"device {device!r} was asked for, but no CUDA GPU is available here: use 'cpu' or 'auto'")
    return resolved


def describe_device(device: torch.device) -> str:
    """A short human-readable name, e.g. 'cuda (NVIDIA H100)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"

# --- threads ---------------------------------------------------------------------------------------------



def _cgroup_cpu_limit() -> float | None:
    """The CPU quota of this process's cgroup (v2 cpu.max or v1 cfs files), in cores; None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by its cgroup's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return max(1, cores)


def thread_budget() -> int:
    """Threads for torch: INSPECTION_THREADS when set (a positive integer), else the available cores."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise ParameterError(f"{THREADS_ENV}={raw!r} must be a positive whole number of threads")
        return value
    return available_cores()


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to `threads` (default: `thread_budget()`); returns the number set."""
    count = thread_budget() if threads is None else max(1, int(threads))
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def thread_settings() -> dict[str, Any]:
    """What speed figures should be read against: threads, wait policy, cores available, machine load."""
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {"torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "cores_available": available_cores(), "load_average_1min": load}


def under_load(row: dict[str, Any]) -> bool:
    """Whether a measured run (a bench row with `thread_settings()` taken at its start and its end's load average)
    started or ended with more runnable work than cores: its timings are not quiet ones."""
    cores = row.get("cores_available") or 0
    loads = [row.get("load_average_1min"), row.get("load_average_1min_after")]
    return bool(cores) and any(load is not None and load > cores for load in loads)
