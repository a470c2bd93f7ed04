"""The input streams of docs/method.md §1.4, defined once for pretraining, evaluation and preprocessing.

Each works on a torch batch (N, C, T, V, M) on any device, and equally on a numpy clip
(C, T, V, M): time is axis -3 and joints axis -2 in both. In a 2D layout's (x, y, score) clips the
score channel is no coordinate: every stream keeps it as it is (PYSKL's habit).
"""
import functools

import numpy as np
import torch

from net.utils.layouts import DEFAULT_LAYOUT, get_layout

STREAMS = ("joint", "motion", "bone")


def _zeros_like(x):
    return torch.zeros_like(x) if torch.is_tensor(x) else np.zeros_like(x)


def keep_scores(out, x, layout):
    """`out` with x's score channel back in place when `layout` is 2D (x, y, score); else `out`."""
    if get_layout(layout).dims == 2:
        out[..., 2, :, :, :] = x[..., 2, :, :, :]
    return out


def motion(x, layout=DEFAULT_LAYOUT):
    """d[t] = x[t+1] - x[t], zero at the last frame (docs/method.md §1.4, §1.3 step 2)."""
    d = _zeros_like(x)
    d[..., :-1, :, :] = x[..., 1:, :, :] - x[..., :-1, :, :]
    return keep_scores(d, x, layout)


@functools.cache
def _bone_index(layout, device=None):
    """(child, parent) joint indices of `layout`'s bones: lists, or tensors built once per device."""
    child, parent = (list(ids) for ids in zip(*get_layout(layout).bone_pairs))
    if device is None:
        return child, parent
    return tuple(torch.tensor(ids, device=device) for ids in (child, parent))


def bone(x, layout=DEFAULT_LAYOUT):
    """b[child] = x[child] - x[parent] over the layout's bone pairs; the centre's bone is zero (docs/method.md §1.4)."""
    child, parent = _bone_index(layout, x.device if torch.is_tensor(x) else None)
    b = _zeros_like(x)
    b[..., child, :] = x[..., child, :] - x[..., parent, :]
    return keep_scores(b, x, layout)


def to_stream(x, stream, layout=DEFAULT_LAYOUT):
    """The `stream` ('joint', 'motion' or 'bone') of joint positions x (docs/method.md §1.4)."""
    if stream == "joint":
        return x
    if stream == "motion":
        return motion(x, layout)
    if stream == "bone":
        return bone(x, layout)
    raise ValueError(f"unknown stream {stream!r}; expected one of {', '.join(STREAMS)}")
