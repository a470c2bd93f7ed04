"""Per-sample augmentations of docs/method.md §1.5 (and the resize of §1.3 step 4).

Every transform takes numpy (C, T, V, M) or torch (N, C, T, V, M) on any device: time is
axis -3 in both, so one definition serves the feeder (numpy, one clip) and on-device
augmentation (torch, a batch). Random draws are arguments; the `draw_*` helpers make them, with one
formula each, from a `np.random.Generator` (one clip) or a `torch.Generator` (a batch, on the CPU), so
the two paths give the same result for the same draws.
"""
import numpy as np
import torch

# Positions of (a1, a2, a3, b1, b2, b3) in R = [[1, a1, b1], [a2, 1, b2], [a3, b3, 1]].
_SHEAR_ROWS = [0, 1, 2, 0, 1, 2]
_SHEAR_COLS = [1, 0, 0, 2, 2, 1]


def _like(ref, array):
    """numpy `array` as the type, dtype and device of `ref` (numpy array or torch tensor)."""
    if torch.is_tensor(ref):
        return torch.as_tensor(array, dtype=ref.dtype, device=ref.device)
    return np.asarray(array, dtype=ref.dtype)


def _take_frames(x, index):
    """Frames `index` of the time axis: x[..., index, :, :] for index (T',); per sample for index (N, T')."""
    if torch.is_tensor(x):
        index = torch.as_tensor(index, device=x.device)
    if index.ndim == 1:
        return x[..., index, :, :]
    index = index.reshape(index.shape[:-1] + (1, index.shape[-1], 1, 1))
    if torch.is_tensor(x):
        return torch.take_along_dim(x, index, dim=-3)
    return np.take_along_axis(x, index, axis=-3)


def temporal_resize(x, frames):
    """Linear time resize with half-pixel centres, as OpenCV INTER_LINEAR (docs/method.md §1.3 step 4, §1.5 step 1)."""
    length = x.shape[-3]
    if length == frames:
        return x
    if frames < 1 or length < 1:
        raise ValueError(f"temporal_resize: cannot resize {length} frames to {frames}")
    s = np.clip((np.arange(frames) + 0.5) * length / frames - 0.5, 0, length - 1)
    lo = np.floor(s).astype(np.int64)
    hi = np.minimum(lo + 1, length - 1)
    w = _like(x, (s - lo)[:, None, None])
    return _take_frames(x, lo) * (1 - w) + _take_frames(x, hi) * w


def mirror_index(length, offset, padding_ratio=6):
    """Source frame of every output frame of `mirror_pad_crop` for int(s) `offset` (docs/method.md §1.5 step 2)."""
    p = length // padding_ratio
    # u indexes the padded sequence [x[p-1] .. x[0], x[0] .. x[T-1], x[T-1] .. x[T-p]].
    u = np.asarray(offset, dtype=np.int64)[..., None] + np.arange(length)
    return np.where(u < p, p - 1 - u, np.where(u < p + length, u - p, 2 * length + p - 1 - u))


def mirror_pad_crop(x, offset, padding_ratio=6):
    """Pad T // padding_ratio mirrored frames at both ends and keep T frames from `offset` (docs/method.md §1.5 step 2).

    `offset` is an int for one clip, or one int per sample (array or tensor) for a batch.
    """
    if torch.is_tensor(offset):
        offset = offset.cpu().numpy()
    return _take_frames(x, mirror_index(x.shape[-3], offset, padding_ratio))


def uniform(rng, shape):
    """U[0, 1) float64 draws (numpy) of `shape` from a numpy Generator, a CPU torch.Generator or None (torch's)."""
    if isinstance(rng, np.random.Generator):
        return rng.random(shape)
    return torch.rand(shape, generator=rng, dtype=torch.float64).numpy()


def draw_offset(rng, length, padding_ratio=6, size=None):
    """Uniform crop offset(s) in [0, 2 * (length // padding_ratio)] (docs/method.md §1.5 step 2); `rng` as `uniform`."""
    count = 2 * (length // padding_ratio) + 1
    return np.floor(uniform(rng, () if size is None else (size,)) * count).astype(np.int64)


def shear_matrix(draws):
    """R = [[1, a1, b1], [a2, 1, b2], [a3, b3, 1]] from draws (a1, a2, a3, b1, b2, b3) (docs/method.md §1.5)."""
    matrix = _like(draws, np.broadcast_to(np.eye(3), draws.shape[:-1] + (3, 3)).copy())
    matrix[..., _SHEAR_ROWS, _SHEAR_COLS] = draws
    return matrix


def draw_shear(rng, amplitude=0.5, size=None):
    """Shear matrix (3, 3), or (size, 3, 3), from six U[-amplitude, amplitude] draws (docs/method.md §1.5 step 3);
    `rng` as `uniform`."""
    shape = (6,) if size is None else (size, 6)
    return shear_matrix((2 * uniform(rng, shape) - 1) * amplitude)


def shear(x, matrix, dims=3):
    """Every point p becomes matrix · p; `matrix` is (3, 3), or (N, 3, 3) for a batch (docs/method.md §1.5 step 3).

    dims=2 (x, y, score clips): only the x-y block shears; the score neither moves nor is moved by x and y,
    so no depth appears. The draws are the same, so 2D and 3D runs take the same random stream."""
    matrix = _like(x, matrix)
    if dims == 2:
        matrix = matrix.clone() if torch.is_tensor(matrix) else matrix.copy()
        matrix[..., 2, :2] = 0
        matrix[..., :2, 2] = 0
    return (torch if torch.is_tensor(x) else np).einsum("...ij,...jtvm->...itvm", matrix, x)


def center_crop(x, window):
    """The middle `window` frames; the clip unchanged when it is not longer (docs/method.md §1.5, evaluation)."""
    length = x.shape[-3]
    if length <= window:
        return x
    start = (length - window) // 2
    return x[..., start:start + window, :, :]


def augment_sample(x, rng, frames, shear_amplitude=0.5, padding_ratio=6, dims=3):
    """One augmented view of a clip (C, T, V, M): resize, mirrored crop, shear (docs/method.md §1.5);
    `dims` as `shear`."""
    x = temporal_resize(x, frames)
    x = mirror_pad_crop(x, draw_offset(rng, x.shape[-3], padding_ratio), padding_ratio)
    return shear(x, draw_shear(rng, shear_amplitude), dims)


def augment_batch(x, generator=None, shear_amplitude=0.5, padding_ratio=6, dims=3, frames=None,
                  offsets=None, matrices=None):
    """`augment_sample` for a batch (N, C, T, V, M) on its device, each sample with its own draws (docs/method.md §1.5).

    Draws come from the CPU `generator`; tests pass `offsets` (N,) and `matrices` (N, 3, 3) instead.
    """
    if frames is not None:
        x = temporal_resize(x, frames)
    n, length = x.shape[0], x.shape[-3]
    if offsets is None:
        offsets = draw_offset(generator, length, padding_ratio, size=n)
    if matrices is None:
        matrices = draw_shear(generator, shear_amplitude, size=n)
    # The draws are made on the CPU: frame indices and matrices reach the device in two copies the host
    # does not wait for, instead of copies in the middle of the step.
    index = torch.as_tensor(mirror_index(length, np.asarray(offsets), padding_ratio))
    matrices = torch.as_tensor(matrices).to(x.dtype)
    return shear(_take_frames(x, _to_device(index, x.device)), _to_device(matrices, x.device), dims)


def _to_device(t, device):
    """CPU tensor `t` on `device` without a wait: pinned, then an asynchronous copy (after the step's work)."""
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
