"""feeder/streams.py against explicit loops over frames and the docs/method.md §1.4 bone pairs."""
import numpy as np
import pytest
import torch

from feeder.streams import bone, motion, to_stream

# docs/method.md §1.4, 1-based (child, parent).
PAPER_BONES = [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
              (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19),
              (21, 21), (22, 23), (23, 8), (24, 25), (25, 12)]


def batch(device="cpu"):
    return torch.randn(2, 3, 6, 25, 2, generator=torch.Generator().manual_seed(0)).to(device)


def bone_loop(x):
    out = torch.zeros_like(x)
    for child, parent in PAPER_BONES:
        out[..., child - 1, :] = x[..., child - 1, :] - x[..., parent - 1, :]
    return out


def motion_loop(x):
    out = torch.zeros_like(x)
    for t in range(x.shape[2] - 1):
        out[:, :, t] = x[:, :, t + 1] - x[:, :, t]
    return out


def test_bone_matches_spec_pairs():
    x = batch()
    out = bone(x)
    torch.testing.assert_close(out, bone_loop(x))
    assert out[:, :, :, 20].abs().max() == 0  # joint 21 has a zero bone


def test_motion_matches_loop():
    x = batch()
    out = motion(x)
    torch.testing.assert_close(out, motion_loop(x))
    assert out[:, :, -1].abs().max() == 0


def test_to_stream_dispatch_and_numpy():
    x = batch()
    assert to_stream(x, "joint") is x
    torch.testing.assert_close(to_stream(x, "motion"), motion_loop(x))
    torch.testing.assert_close(to_stream(x, "bone", "ntu-rgb+d"), bone_loop(x))
    np.testing.assert_allclose(bone(x[0].numpy()), bone_loop(x)[0].numpy())
    np.testing.assert_allclose(motion(x[0].numpy()), motion_loop(x)[0].numpy())


def test_unknown_stream_is_named():
    with pytest.raises(ValueError, match="'velocity'"):
        to_stream(batch(), "velocity")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_streams_on_cuda():
    x = batch("cuda")
    torch.testing.assert_close(bone(x).cpu(), bone_loop(x.cpu()))
    torch.testing.assert_close(motion(x).cpu(), motion_loop(x.cpu()))
