"""MoCo v2 around an ST-GCN: SkeletonCLR, SkeleMixCLR and SkeleMixCLR+ are configurations of it (docs/method.md §3)."""
import copy
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.skelemix import SkeleMix
from net.utils.layouts import model_layout
from torchlight.dist import concat_all_gather, get_rank, get_world_size
from torchlight.util import compute_dtype, instantiate


def projection_head(head, hidden_dim, feature_dim):
    """The projection head: 'linear', 'mlp' (SkeletonCLR, §3.1), 'mlp_bn' (SkeleMixCLR, §3.3) or 'mlp_bn_out'."""
    if head == "linear":
        return nn.Linear(hidden_dim, feature_dim)
    if head == "mlp":
        return nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, feature_dim))
    if head in ("mlp_bn", "mlp_bn_out"):
        layers = [nn.Linear(hidden_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
                  nn.Linear(hidden_dim, feature_dim)]
        # MoCo v3's output BN: outputs centred over the batch cannot all point one way (small-scale configs)
        return nn.Sequential(*layers, *[nn.BatchNorm1d(feature_dim, affine=False)] * (head == "mlp_bn_out"))
    raise ValueError(f"unknown projection head {head!r}; use linear, mlp, mlp_bn or mlp_bn_out")


def info_nce(q, positive, queue, temperature, extra_negative=None):
    """InfoNCE with the positive at index 0: CE([q·pos, q·queue, q·extra]/τ, 0) (docs/method.md §3.1, §3.3)."""
    logits = [(q * positive).sum(1, keepdim=True), q @ queue]
    if extra_negative is not None:
        logits.append((q * extra_negative).sum(1, keepdim=True))
    logits = torch.cat(logits, dim=1) / temperature
    return F.cross_entropy(logits.float(), torch.zeros(len(q), dtype=torch.long, device=q.device))


def cosine_momentum(base, progress):
    """Key momentum at `progress` (0 to 1) of training: `base` rising to 1 on a half cosine (BYOL §3.1, as
    MoCo v3): early keys follow the query encoder closely, late keys hardly move (docs/method.md)."""
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


def auto_queue_size(num_clips, batch_size):
    """`queue_size: auto`: the largest multiple of the batch within half an epoch of keys, at least one batch.

    A queue longer than an epoch holds stale keys of the query's own clip as negatives; half an epoch
    leaves most of a small dataset's other clips in it (docs/method.md: the small-data recipe).
    """
    return batch_size * max(1, num_clips // batch_size // 2)


@torch.no_grad()
def training_health(q, k, queue):
    """Collapse signals of normalised queries q (N, d) against keys k and the queue (d, K) (issue 10 item 2):
    mean cosine of positive pairs and of negatives, and the per-dimension standard deviation of q, which is
    0 when every output is the same and about 1/sqrt(d) when outputs spread over the sphere."""
    neg = (q.to(queue.dtype) @ queue).float()  # the queue as the losses use it (cast once per step)
    q = q.float()
    return {"health/pos_cos": (q * k.float()).sum(1).mean(), "health/neg_cos": neg.mean(),
            "health/q_std": q.std(0, correction=0).mean()}


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


class MoCo(nn.Module):
    """Query encoder, EMA key encoder and key queue; SkeleMix mixes when `swap_params` is given (docs/method.md §3).

    `swap_params` holds one MixSetting per query view (release rows [spa_l, spa_u, tem_l, tem_u, repeat,
    weight] are read by `mix_settings`): None is SkeletonCLR, [[2, 3, 7, 11, 1, 1.0]] SkeleMixCLR,
    [[2, 3, 7, 11, 3, 1.0]] SkeleMixCLR+.
    fused_queries true runs each query view and its mixes as one encoder call with BatchNorm statistics per
    pass, false the reference, one call per pass (same mathematics); None (default) fuses on CUDA only.
    Every other keyword goes to the encoder (`net.st_gcn.Model` arguments, `kernels` among them).

    Args:
        base_encoder: encoder class, by dotted name
        feature_dim: size of the projection head's output, the contrasted features
        queue_size: negative keys in the queue; a multiple of the global batch
        momentum: EMA momentum of the key encoder
        temperature: InfoNCE temperature
        head: projection head: linear | mlp | mlp_bn | mlp_bn_out
        swap_params: mixes per query view: rows [spa_l, spa_u, tem_l, tem_u, repeat, weight]; none: SkeletonCLR
        mix_mode: what fills the SkeleMix region: swap (the partner's joints) | zeros | gaussian
        mix_region: the joints SkeleMix mixes: parts (whole body parts) | random (random joints)
        shuffle_bn: DDP: shuffle the key batch across ranks (MoCo's shuffling BN)
        fused_queries: one encoder call for a query and its mixes; none: on CUDA only
    """

    def __init__(self, base_encoder="net.st_gcn.Model", feature_dim=128, queue_size=32768, momentum=0.999,
                 temperature=0.07, head="mlp", swap_params=None, mix_mode="swap", mix_region="parts",
                 shuffle_bn=False, fused_queries=None, **encoder_args):
        super().__init__()
        self.queue_size, self.momentum, self.temperature = queue_size, momentum, temperature
        self.mixes = mix_settings(swap_params)
        self.shuffle_bn = shuffle_bn
        self.fused_queries = fused_queries

        encoder_args = dict(encoder_args, num_class=feature_dim)
        self.encoder_q = instantiate(base_encoder, encoder_args, "model_args", nn.Module)
        self.encoder_q.fc = projection_head(head, self.encoder_q.fc.in_features, feature_dim)
        self.encoder_q.init_weights()
        # Deviation from the release (docs/method.md §3): the key encoder starts as an exact copy.
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False

        layout = model_layout(encoder_args)
        self.skelemix = SkeleMix(layout=layout, temporal_stride=self.encoder_q.temporal_stride,
                                 mode=mix_mode, region=mix_region)
        self.register_buffer("queue", F.normalize(torch.randn(feature_dim, queue_size), dim=0))
        # The pointer is read every step: a Python int, not the buffer (reading a GPU tensor waits for the
        # GPU). The buffer keeps it in checkpoints and is read back after load_state_dict.
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.ptr = 0
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "ptr", int(module.queue_ptr)))
        # The queue is identical on every rank by construction: DDP need not re-send its 16 MiB every forward.
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ["queue", "queue_ptr"])

    @property
    def num_queries(self):
        """How many query views a sample needs (the feeder supplies these plus one key view)."""
        return max(1, len(self.mixes))

    def view_weights(self):
        """The loss weight of each query view: its mix's weight, 1 for SkeletonCLR's one unmixed view."""
        return [m.weight for m in self.mixes] or [1.0]

    def chance_losses(self):
        """Each loss when every logit is equal (collapsed or untrained outputs): ln(K+1) per InfoNCE, ln(K+2)
        with the mix's extra negative, times the configured weights and repeats (issue 10 item 2)."""
        ins = sum(self.view_weights()) * math.log(self.queue_size + 1)
        if not self.mixes:
            return {"loss": ins, "loss_ins": ins}
        mix = sum(m.weight * m.repeat for m in self.mixes) * math.log(self.queue_size + 2)
        return {"loss": ins + mix, "loss_ins": ins, "loss_mix": mix}

    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        """k = m·k + (1 - m)·q over every parameter, as two multi-tensor kernels (not two per tensor)."""
        keys = list(self.encoder_k.parameters())
        torch._foreach_mul_(keys, self.momentum)
        torch._foreach_add_(keys, [q.detach() for q in self.encoder_q.parameters()], alpha=1 - self.momentum)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        keys = concat_all_gather(keys)  # every rank enqueues the whole global batch (docs/method.md §4b)
        n, ptr = len(keys), self.ptr
        if self.queue_size % n:
            raise ValueError(f"queue_size {self.queue_size} is not divisible by the global batch {n}")
        self.queue[:, ptr:ptr + n] = keys.T.to(self.queue.dtype)
        self.ptr = (ptr + n) % self.queue_size
        self.queue_ptr.fill_(self.ptr)

    @torch.no_grad()
    def _keys(self, im_k):
        """L2-normalised key features; with shuffle_bn under DDP the batch is shuffled across ranks (MoCo)."""
        if not (self.shuffle_bn and get_world_size() > 1):
            return F.normalize(self.encoder_k(im_k), dim=1)
        x = concat_all_gather(im_k)
        perm = torch.randperm(len(x), device=x.device)
        torch.distributed.broadcast(perm, src=0)
        n = len(im_k)
        mine = perm.view(get_world_size(), n)[get_rank()]
        k = F.normalize(self.encoder_k(x[mine]), dim=1)
        k_all = concat_all_gather(k)
        return k_all[torch.argsort(perm).view(get_world_size(), n)[get_rank()]]

    def _query_features(self, im_q, mixes):
        """Query features of im_q and (p, c) of each (mixed, mask) in `mixes`, through the query encoder.

        fused_queries true: one `forward_grouped` call on the query and its mixes stacked, BatchNorm
        statistics per pass; false: one call per pass (`forward`, `forward_masked`); None (default): fused
        on CUDA only. Both compute the same function, gradients and running statistics (tests/test_fused.py);
        on our 2-core CPU the fused call measured ~20% slower (docs/speed.md).
        """
        fused = bool(mixes) and (im_q.is_cuda if self.fused_queries is None else self.fused_queries)
        if fused and any(isinstance(m, nn.SyncBatchNorm) for m in self.encoder_q.modules()):
            fused = False  # grouped statistics need plain BN
            warnings.warn(f"sync_bn: the query and its {len(mixes)} mixes run as {len(mixes) + 1} encoder calls, "
                          "not one fused call (grouped BatchNorm statistics need plain BatchNorm)", stacklevel=2)
        if not fused:
            return self.encoder_q(im_q), [self.encoder_q.forward_masked(mixed, mask) for mixed, mask in mixes]
        q, *pcs = self.encoder_q.forward_grouped(torch.cat([im_q, *(mixed for mixed, _ in mixes)]),
                                                 [None, *(mask for _, mask in mixes)])
        return q, pcs

    def _query_losses(self, im_q, mix, k, queue, generator=None):
        """Normalised q, its instance loss and the sum over the `mix.repeat` mixes of (L_p + L_c) / 2
        (docs/method.md §3.3); `mix` None (SkeletonCLR) makes no mixes. Every mix is drawn before the encoder runs."""
        mixes = [self.skelemix(im_q, *mix.spatial, *mix.temporal, generator=generator)
                 for _ in range(mix.repeat if mix else 0)]
        q, pcs = self._query_features(im_q, [(mixed, mask) for mixed, mask, _ in mixes])
        q = F.normalize(q, dim=1)
        loss_mix = 0.0
        for (_, _, partner), pc in zip(mixes, pcs):
            p, c = (F.normalize(f, dim=1) for f in pc)
            loss_p = info_nce(p, k[partner], queue, self.temperature, extra_negative=c.detach())
            loss_c = info_nce(c, k, queue, self.temperature, extra_negative=p.detach())
            loss_mix = loss_mix + (loss_p + loss_c) / 2
        return q, info_nce(q, k, queue, self.temperature), loss_mix

    def forward(self, views, generator=None):
        """Losses of one step for `views` = query views followed by the key view (docs/method.md §3.1, §3.3)."""
        *queries, im_k = views
        if len(queries) != self.num_queries:
            raise ValueError(f"expected {self.num_queries} query views and a key view, got {len(views)} views")
        self._momentum_update_key_encoder()
        k = self._keys(im_k)
        # A copy (the enqueue below writes the buffer before backward), cast once for every InfoNCE
        # product instead of by autocast in each of them.
        queue = self.queue.to(compute_dtype(self.queue), copy=True)

        loss_ins = loss_mix = 0.0
        for i, (im_q, weight) in enumerate(zip(queries, self.view_weights())):
            q, ins, mix = self._query_losses(im_q, self.mixes[i] if self.mixes else None, k, queue, generator)
            if i == 0:
                health = training_health(q.detach(), k, queue)
            loss_ins = loss_ins + weight * ins
            loss_mix = loss_mix + weight * mix

        self._dequeue_and_enqueue(k)
        loss = loss_ins + loss_mix
        out = {"loss": loss, "loss_ins": loss_ins}
        if self.mixes:
            out["loss_mix"] = loss_mix
        return {**out, **health}
