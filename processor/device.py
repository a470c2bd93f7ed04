"""Where the model runs: channels-last, SyncBatchNorm, DDP and compile as configured, the autocast of a step,
and what a CUDA card runs fast (docs/speed.md, docs/gpu.md)."""
import contextlib
import importlib.util

import torch
from torch.nn.parallel import DistributedDataParallel

from torchlight.config import ConfigError


def place_model(raw_model, cfg, device, distributed):
    """(raw_model, model): `raw_model` channels-last and with SyncBatchNorm as configured, and the model the
    loop calls, wrapped in DDP under torchrun (the wrapper shares `raw_model`'s parameters)."""
    if cfg["channels_last"]:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    if distributed and cfg["sync_bn"]:
        if device.type != "cuda":
            raise ConfigError("sync_bn needs CUDA devices (torch's SyncBatchNorm is GPU-only); "
                              "on CPU use model_args.shuffle_bn for MoCo or set sync_bn false")
        raw_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(raw_model)
    if not distributed:
        return raw_model, raw_model
    ids = [device.index] if device.type == "cuda" else None
    return raw_model, DistributedDataParallel(raw_model, device_ids=ids)


def autocast(amp, device):
    """Autocast to `amp` (bf16 or fp16) on `device`; `off`: none."""
    if amp == "off":
        return contextlib.nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ConfigError(f"amp must be off, bf16 or fp16, not {amp!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def compile_modules(modules):
    """torch.compile each of `modules` in place (state-dict names unchanged), after forgetting the graphs of
    every earlier run in this process: all compiled encoders share Model.forward's code, whose cache holds
    recompile_limit (8) versions, and past it torch runs eager without a word (a table runs many models)."""
    torch.compiler.reset()
    for module in modules:
        module.compile()


def has_triton():
    """Whether Triton, which inductor's GPU kernels are written in, is installed."""
    return importlib.util.find_spec("triton") is not None


def cuda_fast_path(device=None):
    """(amp, compile) that `speed: fast` takes on CUDA device `device` (None: the current one): bf16 where the
    card computes it natively (compute capability 8.0+, Ampere and newer), else fp16 on the tensor cores of
    7.0+ (V100, T4), else off; compile where inductor can generate the card's kernels (Triton, 7.0+)."""
    index = device if isinstance(device, int) else None if device in (None, "auto") else torch.device(device).index
    capability = torch.cuda.get_device_capability(index)
    bf16 = capability >= (8, 0) and torch.cuda.is_bf16_supported(including_emulation=False)
    amp = "bf16" if bf16 else "fp16" if capability >= (7, 0) else "off"
    return amp, capability >= (7, 0) and has_triton()


def device_note(device, amp, compiled):
    """One log line on a CUDA `device` (None elsewhere): its name and compute capability, the `amp` and
    compile in use, and what the card lacks that `speed: fast` would take; a warning when `amp` or compile
    is set where the card has no fast path for it."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    fast_amp, fast_compile = cuda_fast_path(device)
    lacks = []
    if fast_amp != "bf16":
        lacks.append("bf16 is emulated below compute capability 8.0" +
                     ("; fp16 has tensor cores" if fast_amp == "fp16" else "; fp16 has no tensor cores below 7.0"))
    if not fast_compile:
        lacks.append("compile needs Triton" + ("" if has_triton() else " (not installed)") + " and 7.0+")
    slow = (amp == "bf16" and fast_amp != "bf16") or (amp == "fp16" and fast_amp == "off") or (
        compiled and not fast_compile)
    line = (f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}: amp {amp}, "
            f"compile {'on' if compiled else 'off'}" + "".join(f"; {why}" for why in lacks))
    return ("warning: " if slow else "") + line
