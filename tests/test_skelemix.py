"""SkeleMix (docs/method.md §3.2) against expectations built independently from the returned partner and mask."""
import pytest
import torch

from net.skelemix import SkeleMix

# docs/method.md §3.2 body parts, 1-based joints.
PARTS = [{1, 2, 3, 4, 21}, {5, 6, 7, 8, 22, 23}, {9, 10, 11, 12, 24, 25}, {13, 14, 15, 16}, {17, 18, 19, 20}]


def numbered_batch(n=5, t=16, m=2):
    """Every element distinct, so any element copied from elsewhere is visible."""
    return torch.arange(n * 3 * t * 25 * m, dtype=torch.float32).reshape(n, 3, t, 25, m)


def frame_mask(mask, t, stride=4):
    """(T // stride, V) mask expanded to (T, V) frames."""
    frames = mask.repeat_interleave(stride, dim=0)
    return torch.cat([frames, frames.new_zeros(t - len(frames), mask.shape[1])])


def test_swap_pastes_exactly_the_mask_region_from_the_partner():
    x = numbered_batch()
    mixed, mask, partner = SkeleMix()(x, 2, 3, 2, 3, generator=torch.Generator().manual_seed(0))
    region = frame_mask(mask, 16)[None, None, :, :, None]
    expected = x.clone()
    for i in range(len(x)):
        expected[i] = torch.where(region[0], x[int(partner[i])], x[i])
    assert torch.equal(mixed, expected)
    changed = (mixed != x).any(dim=4).any(dim=1).any(dim=0)  # (T, V)
    assert torch.equal(changed, frame_mask(mask, 16))
    assert mask.dtype == torch.bool and mask.shape == (4, 25)
    assert partner.dtype == torch.long and partner.shape == (5,)
    assert torch.equal(x, numbered_batch())  # input untouched


def region_stats(mask):
    joints = {j + 1 for j in torch.nonzero(mask.any(0)).flatten().tolist()}
    rows = torch.nonzero(mask.any(1)).flatten().tolist()
    return joints, rows


def test_draws_stay_within_bounds_and_cover_them():
    mix, g = SkeleMix(), torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 64, 25, 1)
    counts, lengths, shifts, starts = set(), set(), set(), set()
    for _ in range(300):
        _, mask, partner = mix(x, 2, 3, 7, 11, generator=g)
        shift = int((partner[0] - 0) % 6)
        assert torch.equal(partner, (torch.arange(6) + shift) % 6) and 1 <= shift <= 4
        joints, rows = region_stats(mask)
        chosen = [part for part in PARTS if part <= joints]
        assert set().union(*chosen) == joints  # a union of whole parts
        assert rows == list(range(rows[0], rows[-1] + 1)) and rows[-1] < 16  # one contiguous run
        assert all(torch.equal(mask[r], mask[rows[0]]) for r in rows)
        counts.add(len(chosen))
        lengths.add(len(rows))
        shifts.add(shift)
        starts.add(rows[0])
    assert counts == {2, 3} and lengths == set(range(7, 12)) and shifts == {1, 2, 3, 4}
    assert starts == set(range(0, 16 - 7 + 1))


def test_clamped_length_is_cut_at_the_feature_map():
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        _, mask, _ = SkeleMix(time_range="clamped")(torch.randn(3, 3, 16, 25, 1), 1, 5, 7, 11, generator=g)
        assert mask.any(1).all()  # l = T // 4 = 4 rows


@pytest.mark.parametrize("frames", [16, 32, 48, 128])
def test_scaled_length_keeps_the_papers_share_of_the_clip(frames):
    """7-11 of the paper's 16 steps is 43.75-68.75 % of the clip: every drawn length stays inside that share,
    and the draws cover every whole number of steps inside it (computed here from the share, not the code)."""
    steps, g = frames // 4, torch.Generator().manual_seed(7)
    lengths = {int(SkeleMix()(torch.randn(3, 3, frames, 25, 1), 2, 3, 7, 11, generator=g)[1].any(1).sum())
               for _ in range(200)}
    inside = {n for n in range(1, steps + 1) if 7 / 16 <= n / steps <= 11 / 16}
    assert lengths == inside and inside


def test_scaled_equals_clamped_on_the_papers_grid():
    """At 64 frames (the paper's 16 steps) both readings draw the same mixes from the same seed: NTU unchanged."""
    x = torch.randn(6, 3, 64, 25, 2)
    for seed in range(5):
        a = SkeleMix(time_range="scaled")(x, 2, 3, 7, 11, generator=torch.Generator().manual_seed(seed))
        b = SkeleMix(time_range="clamped")(x, 2, 3, 7, 11, generator=torch.Generator().manual_seed(seed))
        assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_scaled_length_is_at_least_one_step():
    g = torch.Generator().manual_seed(8)
    _, mask, _ = SkeleMix()(torch.randn(3, 3, 8, 25, 1), 1, 1, 1, 2, generator=g)  # 2 steps: 1-2 of 16 -> 1
    assert int(mask.any(1).sum()) == 1


def test_random_region_joint_count():
    mix, g = SkeleMix(region="random"), torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 16, 25, 1)
    sizes = {int(mix(x, 2, 3, 1, 2, generator=g)[1].any(0).sum()) for _ in range(200)}
    assert sizes == set(range(10, 16))


@pytest.mark.parametrize("mode", ["zeros", "gaussian"])
def test_fill_modes_fill_only_the_region(mode):
    x = numbered_batch(n=4, t=64) + 1000  # far from N(0, 1) and from 0
    mixed, mask, _ = SkeleMix(mode=mode)(x, 3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    region = frame_mask(mask, 64)[None, None, :, :, None].expand_as(x)
    assert torch.equal(mixed[~region], x[~region])
    inside = mixed[region]
    if mode == "zeros":
        assert torch.equal(inside, torch.zeros_like(inside))
    else:
        assert inside.numel() > 5000
        assert abs(inside.mean()) < 0.05 and abs(inside.std() - 1) < 0.05


def test_same_seed_same_mix():
    x = torch.randn(5, 3, 32, 25, 2)
    for mode in ("swap", "gaussian"):
        a = SkeleMix(mode=mode)(x, 1, 4, 2, 6, generator=torch.Generator().manual_seed(5))
        b = SkeleMix(mode=mode)(x, 1, 4, 2, 6, generator=torch.Generator().manual_seed(5))
        assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_gaussian_noise_is_drawn_on_the_device_of_x_from_the_seed(monkeypatch):
    """The noise is drawn where x lives (no CPU draw and copy per step), by a generator of that device seeded
    from the CPU generator: the same seed gives the same noise, another seed other noise."""
    calls, randn = [], torch.randn

    def recording_randn(*args, **kwargs):
        calls.append((kwargs.get("device"), kwargs.get("generator"), kwargs.get("dtype")))
        return randn(*args, **kwargs)

    x = torch.randn(5, 3, 32, 25, 2, dtype=torch.float64)  # float64: the noise must follow x's dtype too
    monkeypatch.setattr(torch, "randn", recording_randn)
    a, b, c = (SkeleMix(mode="gaussian")(x, 1, 4, 2, 6, generator=torch.Generator().manual_seed(seed))[0]
               for seed in (5, 5, 6))
    assert len(calls) == 3 and all(device == x.device and dtype == x.dtype and gen.device == x.device
                                   for device, gen, dtype in calls)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_other_stride_and_layout():
    x = torch.randn(3, 3, 12, 17, 1)
    mixed, mask, _ = SkeleMix(layout="coco", temporal_stride=2, time_range="clamped")(x, 1, 1, 2, 2,
                                                               generator=torch.Generator().manual_seed(6))
    assert mask.shape == (6, 17) and mask.any(1).sum() == 2
    changed = (mixed != x).any(dim=4).any(dim=1).any(dim=0)
    assert torch.equal(changed, frame_mask(mask, 12, stride=2))


def test_bad_inputs_are_named():
    mix = SkeleMix()
    with pytest.raises(ValueError, match="N=2"):
        mix(torch.randn(2, 3, 16, 25, 1), 2, 3, 1, 2)
    with pytest.raises(ValueError, match="V=20"):
        mix(torch.randn(4, 3, 16, 20, 1), 2, 3, 1, 2)
    with pytest.raises(ValueError, match="spa_u=6"):
        mix(torch.randn(4, 3, 16, 25, 1), 2, 6, 1, 2)
    with pytest.raises(ValueError, match="tem_l=3"):
        mix(torch.randn(4, 3, 16, 25, 1), 2, 3, 3, 2)
    with pytest.raises(ValueError, match="'blend'"):
        SkeleMix(mode="blend")
    with pytest.raises(ValueError, match="'joints'"):
        SkeleMix(region="joints")
    with pytest.raises(ValueError, match="'paper'"):
        SkeleMix(time_range="paper")
