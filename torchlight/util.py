"""Run-time helpers: import by dotted name, seeding, numerics, device selection, host memory."""
import contextlib
import ctypes
import ctypes.util
import importlib
import inspect
import os
import random

import numpy as np
import torch

from .config import ConfigError, check_type

# A config names classes of this project, or torch's own (torch.nn.Linear); nothing else is imported,
# so a config cannot call an arbitrary function (`model: subprocess.run` would run a command).
IMPORTABLE_PACKAGES = ("feeder", "net", "processor", "torchlight", "tools")


def import_class(name, base=None):
    """The class at dotted path `name`, e.g. 'net.st_gcn.STGCN': of this project, or a torch class; with `base`,
    a subclass of it (a model must be an nn.Module, a feeder a Dataset). A function is never returned (a config
    naming `torchlight.io.write_yaml` as its model would call it) unless `base` is given and it is a factory whose
    `builds` attribute names a subclass of `base` (net.methods.pretraining_model builds a MoCo)."""
    module, _, attr = str(name).rpartition(".")
    package = module.split(".")[0]
    if package not in (*IMPORTABLE_PACKAGES, "torch"):
        raise ConfigError(f"{name!r} is not importable from a config: only {', '.join(IMPORTABLE_PACKAGES)} "
                          "and torch classes are")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"cannot import {name!r}") from None
    made = getattr(obj, "builds", None)  # a model factory declares the class it returns (net.methods)
    if not inspect.isclass(obj) and not (base is not None and inspect.isclass(made) and issubclass(made, base)):
        # torch.load, torchlight.io.write_yaml: functions that read or write files
        raise ConfigError(f"{name!r} is not importable from a config: it is not a class")
    if base is not None and inspect.isclass(obj) and not issubclass(obj, base):
        raise ConfigError(f"{name!r} is not a {base.__module__}.{base.__qualname__} subclass, which a config "
                          "naming it here must give")
    return obj


def instantiate(name, kwargs, what, base=None):
    """Build `name(**kwargs)` (`name` a subclass of `base`, see `import_class`); a wrong keyword, or a value unlike
    its keyword's default (hidden_channels 'four'), becomes a one-line error naming `what`."""
    cls = import_class(name, base)
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items() if p.default is not p.empty}
    kwargs = {k: check_type(v, defaults.get(k), f"{what}.{k}", what) for k, v in (kwargs or {}).items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        if "argument" in str(e):
            raise ConfigError(f"{what} ({name}): {e}") from None
        raise


def compute_dtype(tensor):
    """The dtype autocast computes matrix products in on `tensor`'s device, or `tensor`'s own without autocast."""
    device = tensor.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return tensor.dtype


def git_commit():
    """The commit of the code that runs (`-dirty` when tracked files differ from it), or None outside a checkout:
    recorded beside every table result so that a number traces back to its code."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.returncode else "") if head.returncode == 0 else None


def seed_everything(seed):
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_numerics(tf32=False, cudnn_benchmark=True, deterministic=False):
    """Process-wide GPU numerics (no effect on CPU results).

    torch's own defaults mix precisions: cuDNN convolutions in TF32, matmuls in fp32. Here both follow
    `tf32`. `deterministic` turns off cudnn_benchmark and selects deterministic algorithms; an op that has
    none warns instead of failing the run.
    """
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(tf32)
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark) and not deterministic
    torch.backends.cudnn.deterministic = bool(deterministic)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)


def _libc(function):
    """The C library's `function` through ctypes, or None where there is none (macOS, Windows, musl)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), function)
    except (OSError, AttributeError, TypeError):
        return None


def keep_freed_host_memory():
    """Let glibc keep freed blocks up to 1 GiB for reuse instead of unmapping them: True where it took effect.

    By default glibc maps every block above its mmap threshold (128 KiB, rising to at most 32 MiB) afresh
    and unmaps it on free, so each of an encoder step's large activations page-faults in again on every
    step. On our 2-core CPU this alone made an fp32 forward+backward of the full-size encoder ~30% faster
    (batch 64: 2.1 s -> 1.5 s) and bf16 ~15%. The process keeps its peak memory mapped instead of giving
    it back between steps.
    """
    mallopt = _libc("mallopt")
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 2 ** 31 - 1))


def cpu_amp_is_fast(amp):
    """Whether autocast to `amp` ('bf16' or 'fp16') beats fp32 on this CPU.

    bf16 needs oneDNN's native bf16 kernels. fp16 never does: even where oneDNN reports native fp16,
    its fp16 convolution backward is the reference kernel, ~100x slower than fp32 (measured on an
    AVX512-FP16/AMX Xeon with torch 2.13).
    """
    return amp == "bf16" and torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def prepare_host(device, amp):
    """A CPU run keeps freed host memory (no page faults on every step's activations, docs/speed.md); returns
    a warning when autocast to `amp` is slower than fp32 on this CPU, else None."""
    if device.type != "cpu":
        return None
    keep_freed_host_memory()
    if amp not in ("bf16", "fp16") or cpu_amp_is_fast(amp):
        return None
    why = "its fp16 convolution backward is a reference kernel" if amp == "fp16" else "it has no native bf16 kernels"
    return f"warning: amp {amp} is slower than fp32 (amp off) on this CPU: {why}"


def release_freed_host_memory(_worker_id=None):
    """Give the freed memory this process keeps back to the OS (glibc's malloc_trim; no-op elsewhere).

    Every DataLoader worker starts with it (`worker_init_fn`): a forked worker would otherwise copy the
    memory its parent kept (keep_freed_host_memory) page by page as its own allocations reuse it; a
    benchmark run ran out of memory that way (two workers of 7.5 GB each beside a 17.5 GB parent).
    """
    malloc_trim = _libc("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


def select_device(spec="auto", distributed=False):
    """'auto' picks CUDA when available, else CPU; 'cpu', 'cuda', 'cuda:1' or 1.

    Under torchrun every rank uses its own GPU (LOCAL_RANK, or the one it sees: dist.local_cuda_index): 'cuda'
    means that one, and an explicit index, which would put every rank on the same GPU, is an error.
    """
    from .dist import local_cuda_index
    if spec in (None, "auto"):
        return torch.device("cuda", local_cuda_index()) if torch.cuda.is_available() else torch.device("cpu")
    if isinstance(spec, list):  # the original release's `device: [0, 1, 2, 3]` (DataParallel)
        raise ConfigError(f"device {spec}: one process uses one device; run several GPUs with torchrun "
                          "(README: Train and evaluate)")
    if distributed and (isinstance(spec, int) or str(spec).startswith("cuda:")):
        raise ConfigError(f"device {spec!r} under torchrun: every rank would use that GPU; "
                          "use cuda or auto (each rank takes its LOCAL_RANK's GPU)")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device {spec!r} (auto, cpu, cuda, cuda:1 or 1): {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r}: this machine has no CUDA device torch can use; use auto or cpu")
    return torch.device("cuda", local_cuda_index()) if distributed and device.type == "cuda" else device


@contextlib.contextmanager
def logged_errors(log):
    """Inside, a refusal (ValueError, ConfigError, OSError) is also written with `log` as `error: ...`, then raised."""
    try:
        yield
    except (ValueError, OSError) as err:
        log(f"error: {err}")
        raise
