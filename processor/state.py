"""What a checkpoint holds beside the weights (every random state) and the checks before a resume continues
a run (docs/errors.md). torchlight/checkpoint.py writes and reads the file itself."""
import os
import random
import re

import numpy as np
import torch

from processor.flat_config import nest
from torchlight.checkpoint import check_state_dict, read_checkpoint, saved_config
from torchlight.config import ConfigError

# What makes a run: a resume with another value of these is another run (docs/errors.md).
RESUME_KEYS = ("method", "model", "model_args", "encoder", "layout", "batch_size", "stream")
# What a run was started with: a resume with another value is refused unless `resume_override`.
STARTED_WITH = ("seed", "base_lr", "amp", "train_feeder_args.data_path", "train_feeder_args.label_path",
                "test_feeder_args.data_path", "test_feeder_args.label_path")
# The schedule: a resume continues the checkpoint's (unless `resume_override`), whatever the config says.
SCHEDULE = ("num_epoch", "num_steps", "mix_warmup", "momentum_schedule", "step", "warm_up_epoch")


def rng_state(generator, device):
    """Every random state of this rank: Python, numpy, torch, the run's own `generator` and `device`'s CUDA one."""
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate(),
                 generator=generator.get_state())
    if device.type == "cuda":  # this rank's GPU only: a resume may see fewer GPUs
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(rng, generator, device):
    """Every random state from `rng` (as `rng_state` returns it)."""
    torch.set_rng_state(rng["torch"].cpu())
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    generator.set_state(rng["generator"].cpu())
    restore_cuda_rng(rng.get("cuda"), device)


def restore_cuda_rng(state, device):
    """Set `device`'s CUDA generator from a checkpoint's state; nothing on CPU or without a state.

    Older checkpoints hold a list over every GPU visible then: this device takes its own entry, if any.
    """
    if state is None or device.type != "cuda":
        return
    if isinstance(state, (list, tuple)):
        index = device.index or 0
        if index >= len(state):
            return
        state = state[index]
    torch.cuda.set_rng_state(state.cpu(), device)


def read_resume_checkpoint(path, processor, model_state, cfg, checkpoint_name, device):
    """The checkpoint at `path` if run `processor` (its class name) with `cfg` can continue it; otherwise a
    one-line error saying why."""
    state = read_checkpoint(path, "resume checkpoint", map_location=device)
    keys = {"model", "optimizer", "epoch", "rng"}
    if not isinstance(state, dict) or not keys <= set(state):
        raise ConfigError(f"resume checkpoint {path} is not a training checkpoint of this project "
                          f"(needs keys {sorted(keys)})")
    if state.get("processor", processor) != processor:
        raise ConfigError(f"resume checkpoint {path} was written by {state['processor']}; this run is {processor}")
    saved = nest(saved_config(state), f"the config of {path}")  # a flat one is read nested
    check_same_run(path, cfg, saved)
    if not cfg.get("resume_override"):
        check_started_with(path, cfg, saved)
        state["schedule"] = take_schedule(cfg, saved)
    check_state_dict(path, model_state, state["model"])
    if state["epoch"] >= cfg["num_epoch"]:
        raise ConfigError(f"resume checkpoint {path} is at epoch {state['epoch']}, num_epoch is "
                          f"{cfg['num_epoch']}: nothing left to train (raise --num_epoch, or --num_steps with "
                          "--resume_override true)")
    later = later_checkpoints(cfg["work_dir"], checkpoint_name, state["epoch"])
    if later and not cfg["overwrite"]:
        raise ConfigError(f"resume checkpoint {path} is at epoch {state['epoch']} but {cfg['work_dir']} "
                          f"holds later ones ({', '.join(later)}), which resuming would replace: resume "
                          "the latest, or give --overwrite true to retrain over them")
    return state


def check_same_run(path, cfg, saved):
    """The settings that make a run (RESUME_KEYS) match the checkpoint's config (older ones have none; a flat
    one is read nested)."""
    saved = nest(saved, f"the config of {path}")  # idempotent on a nested config
    for key in RESUME_KEYS:
        if key not in saved:
            continue
        ours, theirs = cfg.get(key), saved[key]
        pairs = ({f"{key}.{k}": (ours.get(k), theirs.get(k)) for k in sorted({*ours, *theirs})}
                 if isinstance(ours, dict) and isinstance(theirs, dict) else {key: (ours, theirs)})
        for name, (mine, before) in pairs.items():
            if mine != before:
                raise ConfigError(f"resume checkpoint {path} was trained with {name} {before!r}, this run has "
                                  f"{mine!r}: resume with the checkpoint's value, or start a new --work_dir")


def dotted(cfg, key):
    """cfg['a']['b'] for key 'a.b' (None where absent)."""
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def check_started_with(path, cfg, saved):
    """Seed, lr, amp and data files (STARTED_WITH) match the checkpoint's config: another value would train a mix
    of two runs under the name of one (config.yaml records only the last)."""
    for key in (k for k in STARTED_WITH if k.split(".")[0] in saved):  # older checkpoints carry less
        mine, before = dotted(cfg, key), dotted(saved, key)
        if mine != before:
            raise ConfigError(f"resume checkpoint {path} was started with {key} {before!r}, this run has "
                                  f"{mine!r}: resume with the checkpoint's value, or give --resume_override true")


def take_schedule(cfg, saved):
    """Set the SCHEDULE keys of `cfg` to the checkpoint's config, the run it continues; returns '; key value from
    the checkpoint (config: other)' for each that changed, for the log. One exception: a larger num_epoch, with
    num_steps unset in both, extends a run trained by epochs."""
    extend = saved.get("num_steps") is None and cfg.get("num_steps") is None and \
        cfg["num_epoch"] > saved.get("num_epoch", cfg["num_epoch"])
    changed = [f"; num_epoch {cfg['num_epoch']}: the checkpoint's {saved['num_epoch']} extended"] if extend else []
    for key in (k for k in SCHEDULE if k in saved and k in cfg and not (extend and k == "num_epoch")):
        if cfg[key] != saved[key]:
            changed.append(f"; {key} {saved[key]!r} from the checkpoint (config: {cfg[key]!r})")
            cfg[key] = saved[key]
    return changed


def later_checkpoints(work_dir, checkpoint_name, epoch):
    """Names of the checkpoints `checkpoint_name` (with `{}` for the epoch) in `work_dir` written after `epoch`."""
    pattern = re.compile(re.escape(checkpoint_name).replace(r"\{\}", r"(\d+)"))
    names = os.listdir(work_dir) if os.path.isdir(work_dir) else []  # rank > 0: none
    found = [(int(m.group(1)), n) for n in names if (m := pattern.fullmatch(n))]
    return [n for e, n in sorted(found) if e > epoch]
