"""feeder/augment.py against explicit per-frame and per-point computations (docs/method.md §1.3 step 4, §1.5)."""
import numpy as np
import pytest
import torch
from reference import resize_loop

from feeder.augment import (
    augment_batch,
    augment_sample,
    center_crop,
    draw_offset,
    draw_shear,
    mirror_pad_crop,
    shear,
    shear_matrix,
    temporal_resize,
)


def clip(t=12, seed=0):
    return np.random.default_rng(seed).standard_normal((3, t, 25, 2)).astype(np.float32)


def test_resize_hand_case():
    x = clip(2)
    x0, x1 = x[:, 0], x[:, 1]
    expected = np.stack([x0, 0.75 * x0 + 0.25 * x1, 0.25 * x0 + 0.75 * x1, x1], 1)
    np.testing.assert_allclose(temporal_resize(x, 4), expected, atol=1e-6)


@pytest.mark.parametrize("length,frames", [(12, 64), (300, 64), (64, 50), (7, 3), (1, 5), (5, 1)])
def test_resize_matches_formula_loop(length, frames):
    x = clip(length)
    out = temporal_resize(x, frames)
    assert out.shape == (3, frames, 25, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out, resize_loop(x, frames), atol=1e-5)
    batched = temporal_resize(torch.from_numpy(np.stack([x, 2 * x])), frames)
    np.testing.assert_allclose(batched[1].numpy(), 2 * resize_loop(x, frames), atol=1e-5)


def test_resize_identity_when_length_matches():
    x = clip(64)
    assert temporal_resize(x, 64) is x


def test_mirror_pad_crop_exact_frames():
    x = clip(12)  # p = 2: padded = x1 x0 | x0 .. x11 | x11 x10
    out = mirror_pad_crop(x, 0)
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, x[:, [1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
    np.testing.assert_array_equal(mirror_pad_crop(x, 4), x[:, [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 10]])
    np.testing.assert_array_equal(mirror_pad_crop(x, 2), x)


@pytest.mark.parametrize("length", [5, 12, 64])
def test_mirror_pad_crop_every_offset(length):
    x = clip(length)
    p = length // 6
    padded = np.concatenate([x[:, :p][:, ::-1], x, x[:, length - p:][:, ::-1]], axis=1)
    for offset in range(2 * p + 1):
        np.testing.assert_array_equal(mirror_pad_crop(x, offset), padded[:, offset:offset + length])


def test_offset_draws_cover_range():
    draws = draw_offset(np.random.default_rng(0), 64, size=5000)
    assert set(draws.tolist()) == set(range(0, 21))  # p = 10


def test_shear_matrix_layout():
    a1, a2, a3, b1, b2, b3 = 0.1, 0.2, 0.3, 0.4, 0.5, 0.6
    expected = [[1, a1, b1], [a2, 1, b2], [a3, b3, 1]]
    np.testing.assert_array_equal(shear_matrix(np.array([a1, a2, a3, b1, b2, b3])), expected)


def test_shear_is_matrix_times_point_and_keeps_origin():
    x = clip(4)
    x[:, 1, 3, 0] = 0
    matrix = draw_shear(np.random.default_rng(1))
    out = shear(x, matrix)
    np.testing.assert_array_equal(out[:, 1, 3, 0], 0)
    for t, v, m in [(0, 0, 0), (2, 7, 1), (3, 24, 0)]:
        np.testing.assert_allclose(out[:, t, v, m], matrix @ x[:, t, v, m].astype(np.float64), atol=1e-5)


def test_shear_draws_within_amplitude():
    matrices = draw_shear(np.random.default_rng(0), 0.5, size=5000)
    off = matrices[:, [0, 1, 2, 0, 1, 2], [1, 0, 0, 2, 2, 1]]
    np.testing.assert_array_equal(matrices[:, [0, 1, 2], [0, 1, 2]], 1)
    assert off.min() >= -0.5 and off.max() <= 0.5
    assert off.min() < -0.49 and off.max() > 0.49 and abs(off.mean()) < 0.02


def test_batched_equals_per_sample_with_same_draws():
    x = np.stack([clip(64, seed) for seed in range(5)])
    rng = np.random.default_rng(3)
    offsets = draw_offset(rng, 64, size=5)
    matrices = draw_shear(rng, size=5)
    out = augment_batch(torch.from_numpy(x), offsets=torch.from_numpy(offsets),
                        matrices=torch.from_numpy(matrices))
    for i in range(5):
        expected = shear(mirror_pad_crop(x[i], int(offsets[i])), matrices[i])
        np.testing.assert_allclose(out[i].numpy(), expected, atol=1e-6)


def test_batched_draws_per_sample_and_reproducible():
    x = torch.from_numpy(np.stack([clip(64)] * 4))
    a = augment_batch(x, torch.Generator().manual_seed(0))
    b = augment_batch(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[0], a[1])  # the same clip gets different draws per sample
    assert augment_batch(x, torch.Generator().manual_seed(0), frames=32).shape == (4, 3, 32, 25, 2)


def test_batched_draws_are_the_draw_functions_on_a_torch_generator():
    x = np.stack([clip(64, seed) for seed in range(6)])
    out = augment_batch(torch.from_numpy(x), torch.Generator().manual_seed(7), shear_amplitude=0.3)
    g = torch.Generator().manual_seed(7)  # the same stream, drawn by the functions the feeder uses
    offsets, matrices = draw_offset(g, 64, size=6), draw_shear(g, 0.3, size=6)
    assert offsets.shape == (6,) and 0 <= offsets.min() and offsets.max() <= 2 * (64 // 6)
    assert matrices.shape == (6, 3, 3) and np.abs(matrices - np.eye(3)).max() <= 0.3
    for i in range(6):
        expected = shear(mirror_pad_crop(x[i], int(offsets[i])), matrices[i])
        np.testing.assert_allclose(out[i].numpy(), expected, atol=1e-6)


def test_augment_sample_is_resize_crop_shear():
    x = clip(100)
    out = augment_sample(x, np.random.default_rng(5), 64)
    rng = np.random.default_rng(5)
    offset = draw_offset(rng, 64)
    expected = shear(mirror_pad_crop(resize_loop(x, 64), offset), draw_shear(rng))
    assert out.shape == (3, 64, 25, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_center_crop():
    x = clip(70)
    np.testing.assert_array_equal(center_crop(x, 64), x[:, 3:67])
    assert center_crop(x, 70) is x and center_crop(x, 100) is x
