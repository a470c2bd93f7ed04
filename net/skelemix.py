"""SkeleMix: paste a spatio-temporal region of a partner sample into each sample (docs/method.md §3.2), and
the mix of SkeleMixCLR(+) built on it: its draws, its masked pooling, its losses L_p and L_c and their chance
values (docs/design.md: the mix interface).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from net.losses import info_nce
from net.utils.layouts import DEFAULT_LAYOUT, get_layout

MODES = ("swap", "zeros", "gaussian")
REGIONS = ("parts", "random")
# How tem_l..tem_u read on a clip's time grid: "scaled", as steps of the paper's grid (64 frames at stride 4 =
# 16 steps) scaled to the clip's, so any clip length gets the paper's share of it in time; "clamped", as steps of
# the clip's own grid cut at its length (at 32 frames 7-11 becomes 7-8 of 8: a spatial-only mix in effect).
TIME_RANGES = ("scaled", "clamped")
MIX_LOSSES = ("both", "p", "c")  # SkeleMixViews' losses: L_p and L_c halved (the paper's), or one alone (ablation)
PAPER_TIME_STEPS = 16


def masked_pool(fmap, mask):
    """Mean feature inside `mask` (p) and outside it (c), each averaged over bodies (docs/method.md §2, §3.2).

    fmap is (N, M, C, T', V); mask is boolean (T', V) shared by the batch, or (N, T', V). Returns p, c of
    shape (N, C); a region without any position pools to zeros.
    """
    n, m, _, t, v = fmap.shape
    # Sums over positions and bodies as one batched product with the joints-major map (V, N, M, T', C), the
    # layout ST-GCN's fast kernels store it in (then the permute is free and the gradient keeps that layout).
    # Each weight is 1 / (M·positions in the region): the product sums x / count, the mean, in the map's
    # dtype; summing first would overflow fp16 (800 positions of mean activation 82 exceed 65504).
    inside = mask.to(torch.promote_types(fmap.dtype, torch.float32)).expand(n, t, v)  # exact counts in bf16
    weights = torch.stack([inside, 1 - inside], 2).permute(3, 0, 2, 1)[:, :, None]  # (V, N, 1, 2, T')
    counts = (m * weights.sum((0, 4), keepdim=True)).clamp_min(1)  # (1, N, 1, 2, 1)
    means = ((weights / counts).to(fmap.dtype) @ fmap.permute(4, 0, 1, 3, 2)).sum((0, 2))  # (N, 2, C)
    p, c = means.unbind(1)
    return p, c


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


@dataclass(frozen=True)
class MixSetting:
    """One query view's mixes (docs/method.md §3.3): SkeleMix ranges of parts and of feature frames, how many mixed
    views (`repeat`) and the weight of that view's losses."""
    spatial: tuple[int, int]
    temporal: tuple[int, int]
    repeat: int
    weight: float

    def valid(self):
        """Ranges of integers >= 1 with lower <= upper, repeat >= 1, a finite weight."""
        def count(v):
            return isinstance(v, int) and v >= 1
        ranges_ok = all(len(r) == 2 and count(r[0]) and count(r[1]) and r[0] <= r[1]
                        for r in (self.spatial, self.temporal))
        return ranges_ok and count(self.repeat) and isinstance(self.weight, (int, float)) and math.isfinite(self.weight)


def mix_setting(row):
    """A MixSetting from a release row [spa_l, spa_u, tem_l, tem_u, repeat, weight], a dict of its fields or
    itself; None where `row` is none of these."""
    if isinstance(row, (list, tuple)) and len(row) == 6:
        row = dict(spatial=row[:2], temporal=row[2:4], repeat=row[4], weight=row[5])
    if isinstance(row, MixSetting):
        return row
    if isinstance(row, dict) and set(row) == {"spatial", "temporal", "repeat", "weight"} \
            and all(isinstance(row[k], (list, tuple)) for k in ("spatial", "temporal")):
        return MixSetting(tuple(row["spatial"]), tuple(row["temporal"]), row["repeat"], row["weight"])
    return None


def mix_settings(swap_params):
    """`model_args.swap_params` as a list of valid MixSettings, one per query view (docs/method.md §3.3), or an error;
    None or [] is no mix (SkeletonCLR). The one place the release's 6-element rows are read."""
    rows = swap_params or []
    mixes = [mix_setting(row) for row in (rows if isinstance(rows, list) else [rows])]
    if not all(m is not None and m.valid() for m in mixes):
        raise ValueError(f"model_args.swap_params {swap_params!r}: each row must be [spa_l, spa_u, tem_l, tem_u, "
                         "repeat, weight] or {spatial: [l, u], temporal: [l, u], repeat, weight}, integers >= 1 "
                         "with l <= u, a finite weight")
    return mixes


class SkeleMixViews:
    """SkeleMixCLR's mix of one query view (docs/method.md §3.3), a mix of MoCo's (docs/design.md): `setting.repeat`
    SkeleMix draws, each pooled inside its region (p) and outside it (c), with the losses
    L_p = InfoNCE(p, partner's key; extra negative c) and L_c = InfoNCE(c, own key; extra negative p), halved.
    `losses`: "both" (the paper's), or "p" / "c" for L_p or L_c alone (an ablation)."""

    def __init__(self, setting, skelemix, losses="both"):
        check_mix_losses(losses)
        self.setting, self.skelemix, self.loss_terms = setting, skelemix, losses
        self.weight = setting.weight

    def draw(self, x, generator=None):
        """The mixed clips of query view x, each with its (mask, partner); every draw before the encoder runs."""
        s = self.setting
        return [(mixed, (mask, partner)) for mixed, mask, partner in
                (self.skelemix(x, *s.spatial, *s.temporal, generator=generator) for _ in range(s.repeat))]

    def pool(self, fmap, context):
        """(p, c): the mixed clip's feature map (N, M, C', T', V) pooled inside and outside its region."""
        mask, _ = context
        check_mask(mask, fmap.shape[0], fmap.shape[3:])
        return masked_pool(fmap, mask.to(fmap.device))

    def losses(self, features, context, k, queue, temperature):
        """(L_p + L_c) / 2 of one draw, or L_p or L_c alone as `loss_terms` says, from the head's outputs for p
        and c (docs/method.md §3.3)."""
        p, c = (F.normalize(f, dim=1) for f in features)
        _, partner = context
        terms = []
        if self.loss_terms in ("both", "p"):
            terms.append(info_nce(p, k[partner], queue, temperature, extra_negative=c.detach()))
        if self.loss_terms in ("both", "c"):
            terms.append(info_nce(c, k, queue, temperature, extra_negative=p.detach()))
        return sum(terms) / len(terms)

    def chance(self, queue_size):
        """The draws' losses when every logit is equal: ln(K + 2) each (the queue, the key and one extra negative)."""
        return self.setting.repeat * math.log(queue_size + 2)


def check_mix_losses(losses):
    """An error naming the value for a `model_args.mix_losses` that is not one of MIX_LOSSES."""
    if losses not in MIX_LOSSES:
        raise ValueError(f"model_args.mix_losses must be one of {', '.join(MIX_LOSSES)}, got {losses!r}")


def check_mask(mask, n, grid):
    """An error naming the value for a mask that is not boolean (T', V) or (N, T', V) on the map's grid."""
    t, v = grid
    if mask.dtype != torch.bool or tuple(mask.shape[-2:]) != (t, v) or mask.dim() not in (2, 3) \
            or (mask.dim() == 3 and mask.shape[0] != n):
        raise ValueError(f"mask must be boolean (T', V) = ({t}, {v}) or (N, T', V) = ({n}, {t}, {v}), "
                         f"got {mask.dtype} {tuple(mask.shape)}")
