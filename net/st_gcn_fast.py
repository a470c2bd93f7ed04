"""The encoder's fast CPU/GPU kernels: the forward of `net.st_gcn`'s modules (same parameters, same
mathematics as their readable forward, docs/method.md §2), chosen by `STGCN(kernels="fast")`, the default.

What makes it fast:
- joints-major dense tensors (V, N·M, T, G, C): the graph convolution contracts the joints first, as one
  matrix product per subset, and no tensor is permuted between blocks;
- G passes (a query and its SkeleMix mixes) stacked beside the channels, each with BatchNorm statistics of
  its own (`grouped_batch_norm`), so one call runs every layer once on G times the data;
- on CPU: a BatchNorm for few channels (`_NarrowBatchNorm`) and a byte-mask dropout (`_keep_mask`);
- the strided residual 1x1 convolution as `addmm` (oneDNN's backward of it corrupts memory, torch 2.13).
`tests/test_st_gcn.py::test_fast_kernels_equal_readable_forward` checks outputs, gradients and running
statistics against the readable forward in float64.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchlight.util import compute_dtype

NARROW_CHANNELS = 16  # below this many channels training BatchNorm runs as _NarrowBatchNorm on CPU


def _keep_mask(y, p):
    """Dropout's keep / (1 - p) for every entry of y, in y's dtype and memory layout (as nn.Dropout).

    The draws differ from nn.Dropout's: for p = 0.5 (every config) each random byte gives eight keep bits,
    much faster than one Bernoulli draw per entry on CPU; other rates compare uniforms with p.
    """
    n = y.numel()
    if p == 0.5:
        byte_bits = (torch.arange(256, device=y.device)[:, None] >> torch.arange(8, device=y.device)) & 1
        random_bytes = torch.empty((n + 7) // 8, dtype=torch.uint8, device=y.device).random_()
        keep = F.embedding(random_bytes.int(), byte_bits.to(y.dtype) * 2).view(-1)[:n]  # byte -> 8 entries
    else:
        keep = (torch.rand(n, device=y.device) >= p).to(y.dtype).mul_(1 / (1 - p))
    return keep.as_strided(y.shape, y.stride())  # y is dense (a BatchNorm output): walk it in memory order


def _wide_rows(x, fold):
    """Channels-last x (N, C, ...) as its memory's rows of `fold` positions: (numel / (fold·C), fold·C), a view."""
    return x.movedim(1, -1).reshape(-1, fold * x.shape[1])


class _NarrowBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm with batch statistics of a channels-last x (N, C, ...) with few channels C:
    (y, mean, biased variance), what F.batch_norm computes; y is a new tensor laid out as x.

    torch's CPU kernel vectorises over the channels, so at C = 8 (the hidden-8 encoder's first blocks) it
    runs ~25x slower than an elementwise pass. Here every pass reads x as wide rows of `fold` positions
    (fold·C values) and folds the per-column sums back to C. Statistics and the backward accumulate in
    fp32 (fp64 for fp64 input). The hidden-8 encoder's forward+backward (batch 64) measured 16% faster in
    bf16 and ~4% in fp32 with it on our 2-core CPU.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        c = x.shape[1]
        count = x.numel() // c
        fold = math.gcd(count, max(1, 128 // c))
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        wide = _wide_rows(x, fold)
        mean = wide.sum(0, dtype=acc).view(fold, c).sum(0) / count
        centered = wide - mean.repeat(fold)
        var = centered.square().sum(0).view(fold, c).sum(0) / count
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else weight.to(acc) * invstd
        shift = torch.zeros_like(mean) if bias is None else bias.to(acc)
        y = torch.empty_like(x)  # x's layout, so _wide_rows(y) is a view to write into
        torch.addcmul(shift.repeat(fold), centered, scale.repeat(fold), out=_wide_rows(y, fold))
        ctx.save_for_backward(centered, invstd, scale)
        ctx.fold, ctx.affine = fold, (weight is not None, bias is not None)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        centered, invstd, scale = ctx.saved_tensors
        fold = ctx.fold
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)  # x's layout (_is_narrow)
        c, count = grad_y.shape[1], grad_y.numel() // grad_y.shape[1]
        wide = _wide_rows(grad_y, fold)
        sum_dy = wide.sum(0, dtype=centered.dtype).view(fold, c).sum(0)
        sum_dy_centered = (wide * centered).sum(0).view(fold, c).sum(0)
        # dx = scale·(dy - mean(dy) - x̂·mean(dy·x̂)) with x̂ = centered·invstd, in two fused passes
        centered_coef = -scale * invstd.square() * sum_dy_centered / count
        partial = torch.addcmul((-scale * sum_dy / count).repeat(fold), centered, centered_coef.repeat(fold))
        grad_x = torch.empty_like(grad_y)
        torch.addcmul(partial, wide, scale.repeat(fold), out=_wide_rows(grad_x, fold))
        grad_weight = sum_dy_centered * invstd if ctx.affine[0] else None
        grad_bias = sum_dy if ctx.affine[1] else None
        return grad_x, grad_weight, grad_bias, None


def _is_narrow(x):
    """Whether x (N, C, ...) is a CPU tensor of few channels stored channels-last (_NarrowBatchNorm's case)."""
    return x.device.type == "cpu" and x.dim() == 4 and x.shape[1] < NARROW_CHANNELS \
        and x.numel() > x.shape[1] and x.is_contiguous(memory_format=torch.channels_last)


def _batch_norm_with_stats(x, weight, bias, eps, stats_like):
    """Training BatchNorm of x (N, C, ...): (y, batch mean, unbiased batch variance), the statistics in
    `stats_like`'s dtype."""
    c = x.shape[1]
    if _is_narrow(x):
        y, mean, var = _NarrowBatchNorm.apply(x, weight, bias, eps)
        count = x.numel() // c
        return y, mean, var * (count / (count - 1))
    # Momentum 1 turns these scratch buffers into the batch mean and unbiased variance.
    mean, var = stats_like.new_zeros(c), stats_like.new_ones(c)
    return F.batch_norm(x, mean, var, weight, bias, True, 1.0, eps), mean, var


def grouped_batch_norm(bn, x, groups):
    """`bn` on x (N, G·C, ...) whose channel axis holds G groups of bn's C channels, each group normalised
    with its own batch statistics: what G separate calls of bn on the groups compute, in one call.

    In training the running statistics are updated once per group, in group order, exactly as G
    sequential train-mode calls would (running = (1 - m)·running + m·batch, unbiased variance). With one
    group this is bn(x) (a SyncBatchNorm or other subclass included), except that a plain BatchNorm2d
    training on a narrow CPU input takes _NarrowBatchNorm; several groups need a plain BatchNorm.
    """
    if isinstance(bn, nn.SyncBatchNorm):
        if groups == 1:
            return bn(x)
        raise ValueError("grouped BatchNorm statistics need a plain BatchNorm, not SyncBatchNorm")
    # One group: bn's own forward (a subclass's included), except a plain BatchNorm on a narrow CPU input.
    if groups == 1 and not (type(bn) is nn.BatchNorm2d and bn.training and bn.track_running_stats and _is_narrow(x)):
        return bn(x)
    weight, bias = (None if p is None else p.repeat(groups) for p in (bn.weight, bn.bias))
    if not bn.training and bn.track_running_stats:  # eval: the running statistics apply to every group
        return F.batch_norm(x, bn.running_mean.repeat(groups), bn.running_var.repeat(groups), weight, bias,
                            False, 0.0, bn.eps)
    if not bn.track_running_stats:
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, bn.eps)
    y, mean, var = _batch_norm_with_stats(x, weight, bias, bn.eps, bn.running_mean)
    with torch.no_grad():
        for group_mean, group_var in zip(mean.view(groups, -1), var.view(groups, -1)):
            bn.num_batches_tracked.add_(1)
            m = bn.momentum if bn.momentum is not None else 1 / float(bn.num_batches_tracked)
            bn.running_mean.copy_(m * group_mean + (1 - m) * bn.running_mean)
            bn.running_var.copy_(m * group_var + (1 - m) * bn.running_var)
    return y


def _image(x):
    """Dense (V, B, T, G, C) as the channels-last (V, G·C, B, T) image that conv and BatchNorm take (a view)."""
    v, b, t, g, c = x.shape
    return x.view(v, b, t, g * c).permute(0, 3, 1, 2)


def _dense(y, groups):
    """Inverse of `_image`: a channels-last (V, G·C, B, T) image back to dense (V, B, T, G, C) (a view)."""
    v, gc, b, t = y.shape
    return y.permute(0, 2, 3, 1).view(v, b, t, groups, gc // groups)


def graph_conv(gcn, x, A):
    """`GraphConv` sum_k (W_k x + b_k) A_k on joints-major x (V, ..., C): (W, ..., out).

    Computed in the equivalent order sum_k W_k (x A_k) + b_k colsum(A_k): x A_k is one (W, V) x (V, rest·C)
    matrix product and W_k a product batched over the W joints, so the graph contraction runs on the input
    channels and no tensor is permuted. The loop is over the K = 3 subsets, each one large product:
    stacking them into one product needs a permuted copy of K·x and measured ~10% slower for the whole
    encoder on CPU. `gcn.conv` keeps the release's weight layout (out channel k·out + c belongs to subset k).
    """
    v, c = x.shape[0], x.shape[-1]
    k, w = gcn.num_subsets, A.shape[-1]
    # Under autocast, cast the weight and graph once here rather than a view of them per subset (and
    # in-place products are not autocast at all).
    dtype = compute_dtype(x)
    weight = gcn.conv.weight.to(dtype).reshape(k, -1, c).transpose(1, 2)  # (K, C, out)
    A = A.to(dtype)
    rows = x.reshape(v, -1)
    bias = (A.sum(1).t() @ gcn.conv.bias.to(dtype).reshape(k, -1))[:, None]  # sum_k b_k colsum(A_k): (W, 1, out)
    y = None
    for i in range(k):
        xa = (A[i].t() @ rows).view(w, -1, c)
        if y is None:
            y = torch.baddbmm(bias, xa, weight[i].expand(w, c, -1))
        else:  # accumulate in place
            y.baddbmm_(xa, weight[i].expand(w, c, -1))
    return y.view(w, *x.shape[1:-1], -1)


def temporal_conv(block, y):
    """`block`'s 9x1 convolution of dense (V, B, T, G, C), shared by the G groups, as (V, B, T', G, out).

    Trick: the memory is read as a channels-last (V, G·C, B, T) image, so the kernel runs as 1x9 along
    the last axis with no copy, and the G groups are a grouped convolution with the weight repeated.
    """
    g = y.shape[3]
    conv = block.tcn[2]
    weight, bias = conv.weight.transpose(2, 3), conv.bias
    if g > 1:
        weight, bias = weight.repeat(g, 1, 1, 1), bias.repeat(g)
    out = F.conv2d(_image(y), weight, bias, (1, conv.stride[0]), (0, conv.padding[0]), groups=g)
    return _dense(out, g)  # a view: the convolution keeps the channels-last layout


def block_forward(block, x, A):
    """`Block`'s forward on dense joints-major (V, B, T, G, C) -> (V, B, T / stride, G, out): G groups of
    passes stacked next to the channels, so BatchNorm sees G·C channels and gives each group its own
    statistics in one call."""
    g = x.shape[3]
    norm1, relu, _, norm2, drop = block.tcn
    y = relu(grouped_batch_norm(norm1, _image(graph_conv(block.gcn, x, A)), g))
    # BatchNorm's output image, not a view: in-place ops on a view would copy the whole tensor in backward.
    y = grouped_batch_norm(norm2, _image(temporal_conv(block, _dense(y, g))), g)
    # y is not saved for backward by anyone: the rest works on it in place.
    if block.training and getattr(drop, "p", 0) > 0:
        # The byte-mask trick is for eager CPU; a GPU's fused dropout kernel (or inductor's, compiled)
        # beats its ~10 kernels and the mask in y's dtype. (Not inplace: torch's in-place dropout is unfused.)
        if y.device.type == "cpu" and not torch.compiler.is_compiling():
            y = y.mul_(_keep_mask(y, drop.p))
        else:
            y = F.dropout(y, drop.p)
    if isinstance(block.residual, nn.Sequential):
        # The strided 1x1 conv as a matrix product of the kept frames (oneDNN's backward of a 1x1 conv
        # strided along the last axis corrupts memory in torch 2.13).
        res_conv, res_norm = block.residual
        kept = x[:, :, ::res_conv.stride[0]]
        res = torch.addmm(res_conv.bias, kept.reshape(-1, kept.shape[-1]), res_conv.weight.flatten(1).t())
        y.add_(grouped_batch_norm(res_norm, _image(res.view(*kept.shape[:-1], -1)), g))
    elif block.residual is not None:
        y.add_(_image(x))  # identity residual
    return _dense(y.relu_(), g)


def feature_groups(model, x, groups=1):
    """`model`'s feature maps of (G·N, C, T, V, M), G passes stacked group-major: joints-major (V, N, M, T', G, C_out).

    Each pass gets BatchNorm statistics of its own, as G separate calls in group order would
    (`grouped_batch_norm`). The blocks run on dense (V, N·M, T, G, C) tensors: the data-BN output
    is stored once in that layout; the map returned is a view of the last block's output.
    """
    gn, c, t, v, m = x.shape
    n = gn // groups
    x = x.view(groups, n, c, t, v, m).permute(1, 5, 0, 4, 2, 3).reshape(n * m, groups * v * c, t)
    x = grouped_batch_norm(model.data_bn, x, groups)
    x = x.view(n * m, groups, v, c, t).permute(2, 0, 4, 1, 3).contiguous()
    # Every block's weighted graph A * importance_i in one product (10 small ones per pass otherwise).
    if isinstance(model.edge_importance, nn.ParameterList):
        graphs = model.A * torch.stack(list(model.edge_importance))
    else:
        graphs = model.A.expand(len(model.st_gcn_networks), *model.A.shape)
    for block, A in zip(model.st_gcn_networks, graphs):
        x = block_forward(block, x, A)
    return x.view(v, n, m, *x.shape[2:])
