"""Run-time helpers: import by dotted name, seeding, device selection."""
import importlib
import inspect
import random

import numpy as np
import torch

from .config import ConfigError, check_type


def import_class(name):
    """The object at dotted path `name`, e.g. 'net.st_gcn.Model'."""
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"cannot import {name!r}") from None


def instantiate(name, kwargs, what):
    """Build `name(**kwargs)`; a wrong keyword, or a value unlike its keyword's default (hidden_channels 'four'),
    becomes a one-line error naming `what`."""
    cls = import_class(name)
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items() if p.default is not p.empty}
    kwargs = {k: check_type(v, defaults.get(k), f"{what}.{k}", what) for k, v in (kwargs or {}).items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        if "argument" in str(e):
            raise ConfigError(f"{what} ({name}): {e}") from None
        raise


def seed_everything(seed):
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(spec="auto"):
    """'auto' picks CUDA when available (this rank's GPU under torchrun), else CPU; 'cpu', 'cuda:1' or 1."""
    if spec in (None, "auto"):
        if torch.cuda.is_available():
            from .dist import local_rank
            return torch.device("cuda", local_rank())
        return torch.device("cpu")
    if isinstance(spec, list):  # the original release's `device: [0, 1, 2, 3]` (DataParallel)
        raise ConfigError(f"device {spec}: one process uses one device; run several GPUs with torchrun "
                          "(README: Several GPUs and nodes)")
    try:
        return torch.device(spec)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device {spec!r} (auto, cpu, cuda, cuda:1 or 1): {e}") from None
