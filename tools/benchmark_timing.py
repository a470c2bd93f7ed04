"""The measuring primitives of tools/benchmark.py, also used by tools/gpu_check.py: timing with device
synchronisation, peak memory, and the machine's matrix-multiply throughput that the encoder is compared to.
"""
import gc
import os
import statistics
import threading
import time

import torch

from torchlight.util import release_freed_host_memory


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forget_compiled_graphs(option):
    """Before a model of a compiling `option`: torch._dynamo.reset(). Every compiled encoder of this process
    shares Model.forward's code, and after `recompile_limit` (8) versions of it torch runs it eager, so later
    figures would time eager code under the name compile."""
    if option.get("compile"):
        torch._dynamo.reset()


def timed(fn, warmup, iters, device):
    """Seconds of each of `iters` calls of fn after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def release_memory():
    """Return freed memory to the OS, so the next peak-memory figure starts from what is in use."""
    gc.collect()
    release_freed_host_memory()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PeakMemory:
    """Peak memory inside the block: CUDA's allocator peak, or this process's resident set on CPU."""

    def __init__(self, device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
        self.mb = self.peak / 2 ** 20


def matmul_gflops(device, dtype, n, warmup, iters):
    """Sustained GFLOP/s of an n x n matrix product: median over `iters` products."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    times = timed(lambda: a @ b, warmup, iters, device)
    return 2 * n ** 3 / statistics.median(times) / 1e9
