"""MoCo v2 around any encoder: SkeletonCLR, SkeleMixCLR and SkeleMixCLR+ configure it (docs/method.md §3)."""
import copy
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.encoders import Network, feature_maps, pool
from net.losses import info_nce
from torchlight.dist import concat_all_gather, get_rank, get_world_size
from torchlight.util import compute_dtype


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
    """Collapse signals of normalised queries q (N, d) against keys k and the queue (d, K):
    mean cosine of positive pairs and of negatives, and the per-dimension standard deviation of q, which is
    0 when every output is the same and about 1/sqrt(d) when outputs spread over the sphere."""
    neg = (q.to(queue.dtype) @ queue).float()  # the queue as the losses use it (cast once per step)
    q = q.float()
    return {"health/pos_cos": (q * k.float()).sum(1).mean(), "health/neg_cos": neg.mean(),
            "health/q_std": q.std(0, correction=0).mean()}


class MoCo(nn.Module):
    """Query network, EMA key network and key queue around a built encoder, with mixes (docs/method.md §3).

    `encoder` meets net/encoders.py's contract; MoCo pools its feature maps and owns the projection head.
    `mixes` holds one mix per query view (docs/design.md: the mix interface), each bringing its draws, its
    pooling, its losses and their chance values: none is SkeletonCLR (one unmixed query view), one
    `net.skelemix.SkeleMixViews` of repeat 1 SkeleMixCLR, of repeat 3 SkeleMixCLR+ (net/methods.py builds
    them from a config). The schedules are arguments of `forward`, as MoCo v3 passes its momentum.

    What a pretraining loop reads (processor/pretrain.py): `num_queries`, `queue_size`, `momentum` (the base
    key momentum), `chance_losses()`, the query and key networks `encoder_q`, `encoder_k` (compiled, monitored;
    `net.encoders.Network`s, whose state-dict keys are the release's) and `forward`'s dict: `loss` (what is
    optimised), its parts `loss_*` (their sum is the loss at mix weight 1) and `health/*` signals.

    Args:
        feature_dim: size of the projection head's output, the contrasted features
        queue_size: negative keys in the queue; a multiple of the global batch
        momentum: EMA momentum of the key encoder (forward's `momentum` replaces it for a step)
        temperature: InfoNCE temperature
        head: projection head: linear | mlp | mlp_bn | mlp_bn_out
        shuffle_bn: DDP: shuffle the key batch across ranks (MoCo's shuffling BN)
        fused_queries: one encoder call for a query and its mixes (per-pass BatchNorm statistics where the
            encoder has `forward_stacked`); none: on CUDA only
    """

    def __init__(self, encoder, mixes=(), feature_dim=128, queue_size=32768, momentum=0.999, temperature=0.07,
                 head="mlp", shuffle_bn=False, fused_queries=None):
        super().__init__()
        self.queue_size, self.momentum, self.temperature = queue_size, momentum, temperature
        self.mixes = list(mixes)
        self.shuffle_bn, self.fused_queries = shuffle_bn, fused_queries
        # The release's order of draws, so that a seed gives its initial weights: the encoder is initialised
        # with a linear head first, then again with the projection head in its place.
        self.encoder_q = Network(encoder, nn.Linear(encoder.out_channels, feature_dim))
        self.encoder_q.fc = projection_head(head, encoder.out_channels, feature_dim)
        self.encoder_q.init_weights()
        # Deviation from the release (docs/method.md §3): the key encoder starts as an exact copy.
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False

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

    def chance_losses(self):
        """Each part of the loss when every logit is equal (collapsed or untrained outputs): ln(K+1) per
        InfoNCE, each mix's own chance value, times the view weights."""
        weights = [m.weight for m in self.mixes] or [1.0]
        out = {"loss_ins": sum(weights) * math.log(self.queue_size + 1)}
        if self.mixes:
            out["loss_mix"] = sum(m.weight * m.chance(self.queue_size) for m in self.mixes)
        return out

    @torch.no_grad()
    def _momentum_update_key_encoder(self, momentum):
        """k = m·k + (1 - m)·q over every parameter, as two multi-tensor kernels (not two per tensor)."""
        keys = list(self.encoder_k.parameters())
        torch._foreach_mul_(keys, momentum)
        torch._foreach_add_(keys, [q.detach() for q in self.encoder_q.parameters()], alpha=1 - momentum)
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

    def _fused(self, im_q, passes):
        """Whether the query and its mixes run as one stacked call: fused_queries, None meaning on CUDA; never
        with SyncBatchNorm (grouped statistics need plain BatchNorm)."""
        fused = passes > 1 and (im_q.is_cuda if self.fused_queries is None else self.fused_queries)
        if fused and any(isinstance(m, nn.SyncBatchNorm) for m in self.encoder_q.modules()):
            warnings.warn(f"sync_bn: the query and its {passes - 1} mixes run as {passes} encoder calls, "
                          "not one fused call (grouped BatchNorm statistics need plain BatchNorm)", stacklevel=3)
            return False
        return fused

    def _query_features(self, im_q, mix, draws):
        """The head's output for im_q and, per draw (clip, context), for each feature the mix pools from it.

        Fused: one stacked encoder call (`net.encoders.feature_maps`); else one call per pass, in order.
        Both compute the same function, gradients and running statistics (tests/test_fused.py); on our
        2-core CPU the fused call paid little (none at full width in bf16, 6 % at 8 channels: docs/speed.md).
        """
        encoder, head = self.encoder_q.encoder, self.encoder_q.fc
        clips = [im_q, *(clip for clip, _ in draws)]
        maps = iter(feature_maps(encoder, torch.cat(clips), len(clips)) if self._fused(im_q, len(clips))
                    else map(encoder, clips))  # lazily: each pass's heads run before the next pass
        q = head(pool(next(maps)))
        return q, [tuple(map(head, mix.pool(fmap, context))) for (_, context), fmap in zip(draws, maps)]

    def _query_losses(self, im_q, mix, k, queue, generator=None):
        """Normalised q, its instance loss and the sum of the mix's losses over its draws (docs/method.md §3.3);
        `mix` None (SkeletonCLR) draws nothing. Every draw is made before the encoder runs."""
        draws = mix.draw(im_q, generator) if mix else []
        q, features = self._query_features(im_q, mix, draws)
        q = F.normalize(q, dim=1)
        loss_mix = 0.0
        for (_, context), f in zip(draws, features):
            loss_mix = loss_mix + mix.losses(f, context, k, queue, self.temperature)
        return q, info_nce(q, k, queue, self.temperature), loss_mix

    def forward(self, views, generator=None, momentum=None, mix_weight=1.0):
        """Losses of one step for `views` = query views followed by the key view (docs/method.md §3.1, §3.3).

        momentum: the key momentum of this step (None: `self.momentum`); mix_weight: the weight of the
        mixes' losses in `loss` (the loop's mix_warmup ramp)."""
        *queries, im_k = views
        if len(queries) != self.num_queries:
            raise ValueError(f"expected {self.num_queries} query views and a key view, got {len(views)} views")
        self._momentum_update_key_encoder(self.momentum if momentum is None else momentum)
        k = self._keys(im_k)
        # A copy (the enqueue below writes the buffer before backward), cast once for every InfoNCE
        # product instead of by autocast in each of them.
        queue = self.queue.to(compute_dtype(self.queue), copy=True)

        loss_ins = loss_mix = 0.0
        for i, im_q in enumerate(queries):
            mix = self.mixes[i] if self.mixes else None
            weight = mix.weight if mix else 1.0
            q, ins, mixed = self._query_losses(im_q, mix, k, queue, generator)
            if i == 0:
                health = training_health(q.detach(), k, queue)
            loss_ins = loss_ins + weight * ins
            loss_mix = loss_mix + weight * mixed

        self._dequeue_and_enqueue(k)
        out = {"loss": loss_ins + mix_weight * loss_mix if self.mixes else loss_ins, "loss_ins": loss_ins}
        if self.mixes:
            out["loss_mix"] = loss_mix
        return {**out, **health}
