"""Checkpoint files: written atomically with a content checksum, read back with one-line errors."""
import hashlib
import os
import pickle
import re

import numpy as np
import torch

from .config import ConfigError
from .io import SAFE_PICKLE_GLOBALS, atomic_path

# Besides tensors and plain data, our checkpoints hold numpy's RNG state (np.random.get_state()): a
# uint32 array. torch.load(weights_only=True) builds nothing else, so a crafted checkpoint runs no code.
CHECKPOINT_GLOBALS = sorted({*SAFE_PICKLE_GLOBALS.values(), *(type(np.dtype(c)) for c in "?bBhHiIlLqQefdFD")},
                            key=repr)


def content_checksum(state):
    """sha256 over every leaf of `state` (nested dicts, lists, tuples) with its key path.

    torch.load does not check the bytes it reads, so a damaged tensor would otherwise load silently.
    """
    digest = hashlib.sha256()

    def walk(x, path):
        if isinstance(x, dict):
            for key, value in x.items():
                walk(value, f"{path}.{key}")
        elif isinstance(x, (list, tuple)):
            for i, value in enumerate(x):
                walk(value, f"{path}[{i}]")
        elif isinstance(x, torch.Tensor):
            flat = x.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{path}:{flat.dtype}:{tuple(x.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(x, np.ndarray):
            digest.update(f"{path}:{x.dtype}:{x.shape}".encode() + np.ascontiguousarray(x).tobytes())
        else:
            digest.update(f"{path}={x!r}".encode())

    walk(state, "")
    return digest.hexdigest()


def write_checkpoint(state, path):
    """torch.save `state` plus its `checksum` to `path`, atomically."""
    with atomic_path(path) as tmp:
        torch.save(dict(state, checksum=content_checksum(state)), tmp)


def read_checkpoint(path, what, map_location="cpu"):
    """The object saved in `path`; a missing, unreadable or damaged file is a ConfigError naming it.

    Files without a checksum (the original release's, bare state dicts) are read unchecked. Only tensors,
    plain data and numpy arrays are built (weights_only): loading a file runs none of its code.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # damaged bytes fail anywhere: the zip reader, the unpickler, a class lookup
        found = re.search(r"GLOBAL ([\w.]+)", str(err))  # the weights-only unpickler refused to build it
        if isinstance(err, pickle.UnpicklingError) and found:
            raise ConfigError(f"{what} {path} refers to {found.group(1)}, which no checkpoint holds: "
                              "not loaded, nothing of it run") from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{what} {path} is not a readable checkpoint ({reason[:200]})") from None
    if isinstance(state, dict) and "checksum" in state:
        expected = state.pop("checksum")
        if content_checksum(state) != expected:
            raise ConfigError(f"{what} {path} is damaged: its content does not match the checksum it was saved with")
    return state


def check_state_dict(path, own, state, may_miss=(), what="model", hint=""):
    """A ConfigError naming `path` unless `state` has exactly the keys and shapes of `own` (less `may_miss`)."""
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state) - set(may_miss))
    if unexpected or missing:
        raise ConfigError(f"{path} does not hold this {what}: missing {missing[:5]}, unexpected {unexpected[:5]}{hint}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ConfigError(f"{path}: {key} has shape {tuple(value.shape)}, "
                              f"the model expects {tuple(own[key].shape)}")


def saved_config(state, key=None):
    """The config a checkpoint carries (or its `key`, such as model_args), {} when it has none or a crafted file
    holds something else there."""
    config = state.get("config") if isinstance(state, dict) else None
    config = config if isinstance(config, dict) else {}
    if key is None:
        return config
    return config.get(key) if isinstance(config.get(key), dict) else {}
