"""Timing side by side (:func:`interleave`), per-round ratios (:func:`ratio_stats`) and peak memory.

Example:
    >>> ratio_stats([2.0, 3.0, 4.0], [1.0, 1.0, 2.0])["median"]
    2.0
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from typing import Callable, Iterator, Mapping, Optional, Sequence

import torch

__all__ = ["interleave", "median", "peak_memory", "quantile", "ratio_stats"]

logger = logging.getLogger(__name__)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(
    fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Time several functions side by side: ``repeats`` rounds, each calling every function once.

    The order rotates by one position every round and is reversed on odd rounds, so that a
    function does not always run right after the same other one, and slow drift of the
    machine cancels in the per-round ratios (:func:`ratio_stats`). ``warmup`` untimed rounds
    come first. On CUDA every call is bracketed by ``torch.cuda.synchronize``.

    Returns:
        ``{name: [seconds of round 0, round 1, ...]}``.

    Example:
        >>> times = interleave({"a": lambda: None, "b": lambda: sum(range(100))}, repeats=3)
        >>> sorted(times), len(times["a"])
        (['a', 'b'], 3)
    """
    device = torch.device(device)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        order = names[k:] + names[:k]
        if r % 2:
            order.reverse()
        for name in order:
            _sync(device)
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of sorted values.

    Example:
        >>> quantile([1.0, 2.0, 4.0], 0.75)
        3.0
    """
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def ratio_stats(candidate: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and range of the per-round ratios ``candidate[r] / reference[r]``.

    Example:
        >>> s = ratio_stats([2.0, 3.0, 4.0, 9.0], [1.0, 1.0, 1.0, 1.0])
        >>> s["median"], s["q1"], s["q3"], s["min"], s["max"], s["n"]
        (3.5, 2.75, 5.25, 2.0, 9.0, 4)
    """
    if len(candidate) != len(reference) or not candidate:
        raise ValueError(f"candidate, reference: expected equally many (>= 1) timings, "
                         f"got {len(candidate)} and {len(reference)}")
    ratios = sorted(c / r for c, r in zip(candidate, reference))
    return {"median": quantile(ratios, 0.5), "q1": quantile(ratios, 0.25), "q3": quantile(ratios, 0.75),
            "min": ratios[0], "max": ratios[-1], "n": len(ratios)}


def median(values: Sequence[float]) -> float:
    """The median (:func:`quantile` 0.5) of unsorted values."""
    return quantile(sorted(values), 0.5)


# ---------------------------------------------------------------------------- memory
_MARKER_BYTES = 999_983  # a prime number of bytes: no other allocation has this size


@contextlib.contextmanager
def _kineto_quiet() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null while the profiler starts and stops.

    Kineto (the profiler's C++ backend) writes ``USDT: profiler_start/stop`` lines and, on
    machines without a GPU, a ``gpuGetDeviceCount failed`` error straight to fd 2 for every
    session: noise for the benchmark's 21 sessions. Python exceptions are unaffected.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # pragma: no cover - no fd 2
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_allocator_peak(fn: Callable[[], object]) -> int:
    """Peak of torch's CPU allocator during ``fn()``, from ``torch.profiler``'s memory records.

    Workaround, kept in this one place: PyTorch has no public CPU counterpart of
    ``torch.cuda.max_memory_allocated``. With ``profile_memory=True`` the profiler records
    every allocation (+bytes) and free (-bytes) of the CPU allocator as ``[memory]`` events of
    ``prof.profiler.kineto_results`` (semi-private; what ``torch.autograd.profiler_util``
    itself reads). It omits the frees of blocks allocated before profiling started, so
    ``fn`` runs twice in one session, separated by a marker allocation of a unique size: the
    running sum of the records after the marker is the allocated memory relative to the start
    of the second call, with every free counted; its maximum is the peak increase.
    """
    # torch.profiler: only with --profile
    from torch.profiler import ProfilerActivity, profile

    with _kineto_quiet(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
        marker = torch.empty(_MARKER_BYTES, dtype=torch.uint8)
        del marker
        fn()
    results = prof.profiler.kineto_results if prof.profiler is not None else None
    if results is None:
        raise RuntimeError("torch.profiler returned no results")
    events = [e for e in results.events() if e.name() == "[memory]"]
    records = [n for _, n in sorted(((e.start_ns(), e.nbytes()) for e in events), key=lambda t: t[0])]
    try:
        start = records.index(-_MARKER_BYTES, records.index(_MARKER_BYTES)) + 1
    except ValueError:
        raise RuntimeError("torch.profiler recorded no CPU allocations") from None
    current = peak = 0
    for nbytes in records[start:]:
        current += nbytes
        peak = max(peak, current)
    return peak


def peak_memory(fn: Callable[[], object], device: torch.device | str) -> Optional[int]:
    """Largest increase of allocated tensor memory (bytes) while ``fn()`` runs.

    Convention:
        CUDA: ``torch.cuda.max_memory_allocated - memory_allocated`` after
        ``reset_peak_memory_stats``. CPU (``tracemalloc`` does not see torch's allocations,
        and the RSS high-water mark also counts pages glibc keeps from earlier calls): the
        allocation and free records of torch's CPU allocator, collected by ``torch.profiler``
        with ``profile_memory=True`` and replayed in time order (:func:`_cpu_allocator_peak`,
        which calls ``fn`` twice and measures the second call). Allocations made by oneDNN
        outside torch's allocator are not counted. None when the measurement is unavailable
        (logged).

    Example:
        >>> peak_memory(lambda: torch.empty(1 << 20, dtype=torch.uint8), "cpu") >= 1 << 20
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    try:
        return _cpu_allocator_peak(fn)
    except (AttributeError, RuntimeError) as err:  # pragma: no cover - depends on the torch build
        logger.warning("peak memory unavailable on %s: %s", device, err)
        return None
