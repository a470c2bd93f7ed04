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


def seeded_state(shapes, seed=0):
    """A state dict of the given {key: shape} with every tensor drawn from `seed`, keys in sorted order.

    Far from any initialisation on purpose (BN gains near 1, graph-conv gains, alpha and running
    statistics non-trivial), so that every parameter shows in the output. The scratch script that made
    tests/data/official_encoders.npz filled the official models with this same function.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        elif len(shape) >= 2:  # weights, adjacency, embeddings: unit-variance outputs
            state[key] = torch.randn(shape, generator=generator) / np.sqrt(np.prod(shape[1:]))
        elif key.endswith("weight"):
            state[key] = 1 + 0.2 * torch.randn(shape, generator=generator)
        else:  # biases, running means, alpha
            state[key] = 0.2 * torch.randn(shape, generator=generator)
    return state
