"""Where the model runs: channels-last, SyncBatchNorm and DDP as configured, and the autocast of a step
(docs/speed.md, docs/gpu.md)."""
import contextlib

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
