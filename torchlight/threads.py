"""CPU threading chosen for the work at hand: OpenMP that sleeps instead of spinning, and a thread count that pays.

Torch's OpenMP threads spin at every barrier by default. A narrow encoder's step is thousands of tiny operations,
so beside another busy process the spinning threads fight it for the cores at every one of them: on 2 cores the
small recipe's step took 0.36 s idle and 23 s beside three other jobs with two threads, 1.1 s with one thread
(docs/speed.md: threads under load). The user's OMP_NUM_THREADS, OMP_WAIT_POLICY and `cpu_threads` always win.
"""
import os

# The environment as the user started the process, before configure_openmp.
USER_THREADS = os.environ.get("OMP_NUM_THREADS")
# Below this many parameters the model is narrow (the small recipe's ST-GCN: 0.1 M; full width: 5.2 M): its
# operations are too small for a second thread to pay for its barriers.
NARROW_PARAMETERS = 1_000_000


def configure_openmp():
    """OMP_WAIT_POLICY=PASSIVE unless the user set one: idle OpenMP threads sleep instead of spinning against
    other processes. Read once, when torch loads OpenMP: call before importing torch (main.py does)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def choose_threads(requested, model):
    """Intra-op threads of a CPU run: `requested` (the config's cpu_threads) if a number, else the user's
    OMP_NUM_THREADS, else one for a narrow `model` and every core for a wide one."""
    import torch
    if requested != "auto":
        return int(requested)
    if USER_THREADS:
        return torch.get_num_threads()
    from torch.nn.parameter import is_lazy  # a lazy layer (the raw-joint probe's) has no size yet: it counts 0
    narrow = sum(p.numel() for p in model.parameters() if not is_lazy(p)) < NARROW_PARAMETERS
    return 1 if narrow else os.cpu_count() or 1


def set_threads(device, requested, model):
    """Take choose_threads' count for a CPU run of `model`; the log line saying so (None off the CPU)."""
    import torch
    if device.type != "cpu":
        return None
    torch.set_num_threads(choose_threads(requested, model))
    return f"{torch.get_num_threads()} CPU thread(s) (cpu_threads {requested})"
