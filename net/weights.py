"""Encoder weights from a file: our checkpoints, the original SkeleMixCLR release's and, through a hook of the
encoder's own file, an official implementation's (docs/design.md: weights).

What is read, in order:
- a state dict of tensors by name, bare or under 'model' (ours, the release's, MAMP's `{'model': ...}`);
- `module.` prefixes (DataParallel, DDP) stripped; keys under an `ignore_weights` prefix dropped;
- a contrastive wrapper's query encoder (`encoder_q.`) kept, everything else of it dropped;
- where the keys are not the encoder's own (its classifier `fc.*` beside them counts as not: an official
  CTR-GCN's is its classifier) and the state is no wrapper's query encoder, the hook of the encoder's file:
  `official_state_dict(state)`, given the state dict read so far, returns it in the encoder's names, or
  (it, the keys it dropped) (an official CTR-GCN or MAMP state dict); keys it leaves out are dropped.
What is loaded must then have exactly the network's keys (its classifier `fc.*` may be missing) and shapes:
otherwise one line names the file, the keys or the key and both shapes.
"""
import inspect

import torch

from torchlight.checkpoint import check_state_dict, read_checkpoint
from torchlight.config import ConfigError

# The classifier is trained anew; everything else of the encoder must come from the checkpoint.
CLASSIFIER_KEYS = {"fc.weight", "fc.bias"}
# What an evaluation drops from a pretraining checkpoint: projection head, key encoder and queue (docs/method.md §4).
IGNORE_WEIGHTS = ["encoder_q.fc", "encoder_k", "queue"]


def read_state_dict(path):
    """The tensors by name a weights file holds (bare, or under 'model'), `module.` prefixes stripped."""
    state = read_checkpoint(path, "weights file")
    state = state.get("model", state) if isinstance(state, dict) else state
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ConfigError(f"weights file {path} holds no state dict (neither a 'model' entry nor tensors by name)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def official_hook(encoder):
    """The `official_state_dict` function of the file that defines `encoder`'s class, or None."""
    return getattr(inspect.getmodule(type(encoder)), "official_state_dict", None)


def encoder_state(state, own, encoder, ignore_weights=()):
    """(state in the network's names, dropped keys): the steps of this module's docstring after reading."""
    dropped = [k for k in state if any(k.startswith(p) for p in ignore_weights)]
    state = {k: v for k, v in state.items() if k not in dropped}
    wrapped = any(k.startswith("encoder_q.") for k in state)
    if wrapped:
        dropped += [k for k in state if not k.startswith("encoder_q.")]
        state = {k.removeprefix("encoder_q."): v for k, v in state.items() if k.startswith("encoder_q.")}
    hook = official_hook(encoder)
    if hook is not None and not wrapped and not set(state) <= set(own) - CLASSIFIER_KEYS:
        renamed = hook(dict(state))
        # The hook returns the renamed state dict, or (it, the keys it dropped); without that list a key
        # whose tensor it did not pass on is the dropped one.
        renamed, theirs = renamed if isinstance(renamed, tuple) else (renamed, None)
        kept = {id(v) for v in renamed.values()}
        dropped += list(theirs) if theirs is not None else [k for k, v in state.items() if id(v) not in kept]
        state = renamed
    return state, dropped


def load_encoder(model, path, ignore_weights=()):
    """Load the encoder a weights file holds into `model`, a `net.encoders.Network` (its classifier may be missing).

    Returns (loaded, dropped, missing) key lists: what was loaded, what the file held and was not used, and
    what the network kept of its own (its classifier).
    """
    state = read_state_dict(path)
    own = model.state_dict()
    state, dropped = encoder_state(state, own, getattr(model, "encoder", model), ignore_weights)
    check_state_dict(path, own, state, may_miss=CLASSIFIER_KEYS, what="encoder", hint=" (see ignore_weights)")
    missing = sorted(set(own) - set(state))
    model.load_state_dict(state, strict=False)
    return sorted(state), sorted(dropped), missing
