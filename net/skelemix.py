"""SkeleMix: paste a spatio-temporal region of a partner sample into each sample (docs/method.md §3.2)."""
import torch

from net.utils.layouts import DEFAULT_LAYOUT, get_layout

MODES = ("swap", "zeros", "gaussian")
REGIONS = ("parts", "random")
# How tem_l..tem_u read on a clip's time grid: "scaled", as steps of the paper's grid (64 frames at stride 4 =
# 16 steps) scaled to the clip's, so any clip length gets the paper's share of it in time; "clamped", as steps of
# the clip's own grid cut at its length (at 32 frames 7-11 becomes 7-8 of 8: a spatial-only mix in effect).
TIME_RANGES = ("scaled", "clamped")
PAPER_TIME_STEPS = 16


def _uniform_int(low, high, generator):
    """One integer drawn uniformly from {low, ..., high}."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


class SkeleMix:
    """One mix of a batch (N, C, T, V, M): region from the partner, or zeros / N(0, 1) noise (docs/method.md §3.2).

    Random draws come from a CPU `torch.Generator` (the global one when None), so a seed reproduces
    the mix on any device (the gaussian mode's noise from a device generator seeded by one such draw);
    the region is drawn once per call and shared by the batch, as in the release.
    """

    def __init__(self, layout=DEFAULT_LAYOUT, temporal_stride=4, mode="swap", region="parts", time_range="scaled"):
        if time_range not in TIME_RANGES:
            raise ValueError(f"unknown SkeleMix time range {time_range!r}; use one of {TIME_RANGES}")
        if mode.lower() not in MODES:
            raise ValueError(f"unknown SkeleMix mode {mode!r}; use one of {MODES}")
        if region not in REGIONS:
            raise ValueError(f"unknown SkeleMix region {region!r}; use one of {REGIONS}")
        if int(temporal_stride) < 1:
            raise ValueError(f"temporal_stride must be >= 1, got {temporal_stride}")
        self.layout = get_layout(layout)
        self.temporal_stride = int(temporal_stride)
        self.mode, self.region, self.time_range = mode.lower(), region, time_range
        self.parts = [torch.tensor(part) for part in self.layout.part_joints]
        self._on_device = {}  # device -> self.parts there
        # Ablation "random" (§3.2): 10 to 15 of NTU's 25 joints, scaled to other layouts.
        v = self.layout.num_joints
        self.random_joints = (max(1, round(10 * v / 25)), max(1, round(15 * v / 25)))

    def parts_on(self, device):
        """The part index tensors on `device`, built once: no host-to-device copy in the step."""
        if device not in self._on_device:
            self._on_device[device] = [part.to(device) for part in self.parts]
        return self._on_device[device]

    def region_joints(self, spa_l, spa_u, generator=None, device="cpu"):
        """§3.2 step 2: the union of c ~ U{spa_l..spa_u} parts chosen without replacement (sorted indices).

        Drawn on the CPU generator, built on `device` from cached parts (the ablation's random joints are
        one small copy).
        """
        if self.region == "random":
            count = _uniform_int(*self.random_joints, generator)
            chosen = torch.randperm(self.layout.num_joints, generator=generator)[:count].sort().values
            return chosen.to(device, non_blocking=True)
        if not 1 <= spa_l <= spa_u <= len(self.parts):
            raise ValueError(f"need 1 <= spa_l <= spa_u <= {len(self.parts)} parts, got spa_l={spa_l}, "
                             f"spa_u={spa_u}")
        count = _uniform_int(spa_l, spa_u, generator)
        chosen = torch.randperm(len(self.parts), generator=generator)[:count]
        parts = self.parts_on(torch.device(device))
        return torch.cat([parts[i] for i in chosen.tolist()]).sort().values

    def length_range(self, tem_l, tem_u, steps):
        """§3.2 step 3's bounds of the region's length l on a grid of `steps` (TIME_RANGES). Scaled bounds are
        rounded inwards (ceil tem_l, floor tem_u, at least one step): on the paper's 16 steps they are tem_l..tem_u."""
        if self.time_range == "clamped":
            return min(tem_l, steps), min(tem_u, steps)
        low = min(steps, max(1, -(-tem_l * steps // PAPER_TIME_STEPS)))
        return low, min(steps, max(low, tem_u * steps // PAPER_TIME_STEPS))

    @staticmethod
    def noise(shape, x, generator=None):
        """N(0, 1) noise of `shape` drawn on x's device in x's dtype, from a seed drawn on the CPU `generator`:
        reproducible from the seed, with no host-to-device copy in the step."""
        seed = int(torch.randint(2 ** 62, (1,), generator=generator))
        return torch.randn(shape, generator=torch.Generator(x.device).manual_seed(seed), device=x.device,
                           dtype=x.dtype)

    def __call__(self, x, spa_l, spa_u, tem_l, tem_u, generator=None):
        """Mix x (N, C, T, V, M): (mixed, mask (T // stride, V) bool, partner (N,) long) (docs/method.md §3.2)."""
        n, _, t, v, _ = x.shape
        steps = t // self.temporal_stride
        if n < 3:
            raise ValueError(f"SkeleMix needs a batch of at least 3 samples, got N={n}")
        if v != self.layout.num_joints:
            raise ValueError(f"x has V={v} joints; layout {self.layout.name!r} has {self.layout.num_joints}")
        if steps < 1:
            raise ValueError(f"x has T={t} frames, fewer than the temporal stride {self.temporal_stride}")
        if not 1 <= tem_l <= tem_u:
            raise ValueError(f"need 1 <= tem_l <= tem_u, got tem_l={tem_l}, tem_u={tem_u}")

        # §3.2 step 1: partner (i + n) mod N with one n ~ U{1..N-2}, never the sample itself.
        shift = _uniform_int(1, n - 2, generator)
        partner = (torch.arange(n, device=x.device) + shift) % n
        # §3.2 step 2: region joints.
        joints = self.region_joints(spa_l, spa_u, generator, x.device)
        # §3.2 step 3: l ~ U{tem_l..tem_u} (on this clip's grid: length_range), s ~ U{0..T // stride - l}.
        length = _uniform_int(*self.length_range(tem_l, tem_u, steps), generator)
        start = _uniform_int(0, steps - length, generator)
        frames = slice(self.temporal_stride * start, self.temporal_stride * (start + length))

        # §3.2 step 4: the region (all channels, those frames and joints, all bodies) from the partner.
        mixed = x.clone()
        if self.mode == "swap":
            mixed[:, :, frames, joints] = x[partner, :, frames][:, :, :, joints]
        elif self.mode == "zeros":
            mixed[:, :, frames, joints] = 0
        else:
            mixed[:, :, frames, joints] = self.noise((n, x.shape[1], frames.stop - frames.start, len(joints),
                                                      x.shape[4]), x, generator)
        # §3.2 step 5: mask on the encoder's (T // stride, V) grid.
        mask = torch.zeros(steps, v, dtype=torch.bool, device=x.device)
        mask[start:start + length, joints] = True
        return mixed, mask, partner
