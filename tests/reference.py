"""Independent reference computations shared by several test files, written from docs/method.md."""
import numpy as np


def resize_loop(x, frames):
    """The formula of docs/method.md, one output frame at a time."""
    length = x.shape[1]
    out = np.zeros((x.shape[0], frames) + x.shape[2:])
    for i in range(frames):
        s = min(max((i + 0.5) * length / frames - 0.5, 0.0), length - 1.0)
        lo = int(np.floor(s))
        hi = min(lo + 1, length - 1)
        out[:, i] = (1 - (s - lo)) * x[:, lo] + (s - lo) * x[:, hi]
    return out
