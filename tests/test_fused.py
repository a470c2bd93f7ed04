"""One encoder call for a query and its mixes (grouped BatchNorm statistics) against separate passes, in float64."""
import copy

import pytest
import torch
import torch.nn as nn
from flat import classifier, moco

from net.encoders import feature_maps, pool
from net.skelemix import masked_pool
from net.st_gcn_fast import _is_narrow, grouped_batch_norm

TINY = dict(hidden_channels=4, hidden_dim=8, dropout=0.0)
METHODS = {"skeletonclr": dict(head="mlp"), "skelemixclr": dict(head="mlp_bn", swap_params=[[2, 3, 1, 2, 1, 1.0]]),
           "skelemixclr_plus": dict(head="mlp_bn", swap_params=[[2, 3, 1, 2, 3, 0.7]])}


def clips(n, seed, t=16):
    return torch.randn(n, 3, t, 25, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_same_state(a, b):
    """Every gradient and every buffer (BN running statistics and counters, queue) of two modules equal."""
    grads_a = {k: p.grad for k, p in a.named_parameters() if p.grad is not None}
    grads_b = {k: p.grad for k, p in b.named_parameters() if p.grad is not None}
    assert sorted(grads_a) == sorted(grads_b) and grads_a
    for k in grads_b:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-9, atol=1e-9)  # entries reach ~1e3
    buffers_b = dict(b.named_buffers())
    for k, v in a.named_buffers():
        torch.testing.assert_close(v, buffers_b[k], rtol=1e-9, atol=1e-12, msg=k)


@pytest.mark.parametrize("bn, training", [(nn.BatchNorm2d(3), True), (nn.BatchNorm2d(3, momentum=None), True),
                                          (nn.BatchNorm2d(3, track_running_stats=False), True),
                                          (nn.BatchNorm2d(3), False)])
def test_grouped_batch_norm_is_sequential_calls(bn, training):
    bn = bn.double().train(training)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    ref = copy.deepcopy(bn)
    groups = [torch.randn(4, 3, 5, 2, dtype=torch.float64) * (g + 1) + g for g in range(3)]
    expected = [ref(x) for x in groups]  # three separate calls, in order
    x = torch.cat(groups, 1)  # (N, G·C, ...): group g holds channels g·C .. g·C + C - 1
    y = grouped_batch_norm(bn, x, 3)
    torch.testing.assert_close(y, torch.cat(expected, 1), rtol=1e-10, atol=1e-12)
    for k, v in ref.named_buffers():
        torch.testing.assert_close(dict(bn.named_buffers())[k], v, rtol=1e-12, atol=1e-14, msg=k)


@pytest.mark.parametrize("groups", [1, 2])
def test_narrow_batch_norm_equals_native(groups):
    """Few channels stored channels-last take _NarrowBatchNorm: output, gradients of x, weight and bias,
    and running statistics as the native BatchNorm's separate calls, in float64."""
    bn = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    ref = copy.deepcopy(bn)
    parts = [(torch.randn(4, 3, 6, 5, dtype=torch.float64) * (g + 2) + 3 - g).requires_grad_() for g in range(groups)]
    x = torch.cat(parts, 1).detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert _is_narrow(x)
    y = grouped_batch_norm(bn, x, groups)
    expected = torch.cat([ref(part) for part in parts], 1)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)
    grad = torch.randn_like(y)
    y.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, torch.cat([p.grad for p in parts], 1), rtol=1e-9, atol=1e-11)
    for name in ("weight", "bias"):
        torch.testing.assert_close(getattr(bn, name).grad, getattr(ref, name).grad, rtol=1e-9, atol=1e-11)
    for k, v in ref.named_buffers():
        torch.testing.assert_close(dict(bn.named_buffers())[k], v, rtol=1e-12, atol=1e-14, msg=k)


def test_narrow_batch_norm_bf16_within_rounding():
    """In bf16 the narrow path's output and gradient stay within bf16 rounding of the native kernel's."""
    bn = nn.BatchNorm2d(8)
    x = (torch.randn(25, 8, 16, 12) * 3 + 5).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(25, 8, 16, 12).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    outputs = []
    for narrow in (True, False):
        xi = x.clone().requires_grad_()
        y = grouped_batch_norm(copy.deepcopy(bn), xi, 1) if narrow else copy.deepcopy(bn)(xi)
        y.backward(grad)
        outputs.append((y.float(), xi.grad.float()))
    (y, gx), (y_ref, gx_ref) = outputs
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gx, gx_ref, rtol=2e-2, atol=2e-2)


def test_stacked_passes_equal_separate_calls():
    """The encoder's forward_stacked against the same encoder called once per pass, each map pooled (globally or
    inside and outside a mask) and through a head with BatchNorm."""
    torch.manual_seed(0)
    model = classifier(**TINY, num_class=6).double().train()
    model.fc = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 6)).double()
    with torch.no_grad():  # BN scales and shifts away from 1 and 0, so a misplaced group shows
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    ref = copy.deepcopy(model)
    xs = [clips(4, seed) * (1 + seed) for seed in range(3)]
    g = torch.Generator().manual_seed(5)
    masks = [None] + [torch.rand(4, 25, generator=g) > 0.5 for _ in range(2)]

    def pooled(network, fmaps):
        return [network.fc(pool(f)) if mask is None else tuple(map(network.fc, masked_pool(f, mask)))
                for f, mask in zip(fmaps, masks)]

    outs = pooled(model, model.encoder.forward_stacked(torch.cat(xs), 3))
    refs = pooled(ref, [ref.encoder(x) for x in xs])
    flat = [outs[0], *outs[1], *outs[2]]
    flat_ref = [refs[0], *refs[1], *refs[2]]
    for a, b in zip(flat, flat_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    weights = [torch.randn(b.shape, generator=g, dtype=torch.float64) for b in flat_ref]
    sum((a * w).sum() for a, w in zip(flat, weights)).backward()
    sum((b * w).sum() for b, w in zip(flat_ref, weights)).backward()
    assert_same_state(model, ref)
    with torch.no_grad():  # eval mode: the running statistics apply to every pass
        outs = model.eval().encoder.forward_stacked(torch.cat(xs), 3)
        for a, b in zip(outs, [ref.eval().encoder(x) for x in xs]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_an_encoder_without_stacked_passes_runs_them_one_by_one():
    """feature_maps falls back to one forward per pass where an encoder has no forward_stacked."""
    calls = []

    class Plain(nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return x.permute(0, 4, 1, 2, 3)

    x = clips(6, 0)
    maps = feature_maps(Plain(), x, 3)
    assert calls == [2, 2, 2] and len(maps) == 3
    torch.testing.assert_close(maps[1], x[2:4].permute(0, 4, 1, 2, 3))


@pytest.mark.parametrize("separate_kernels", ["fast", "reference"])
@pytest.mark.parametrize("method", METHODS)
def test_fused_queries_equal_separate_passes(method, separate_kernels):
    """A whole MoCo step: loss, every gradient and every running statistic, fused against separate passes
    (with the fast kernels, or with the readable forward of net/st_gcn.py)."""
    torch.manual_seed(0)
    fused = moco(**TINY, feature_dim=8, queue_size=16, temperature=0.2, fused_queries=True, **METHODS[method]).double()
    separate = copy.deepcopy(fused)
    separate.fused_queries = False
    separate.encoder_q.encoder.kernels = separate.encoder_k.encoder.kernels = separate_kernels
    views = [clips(4, seed) for seed in range(1 + fused.num_queries)]
    losses = [model(views, generator=torch.Generator().manual_seed(3)) for model in (fused, separate)]
    for key in losses[1]:
        torch.testing.assert_close(losses[0][key], losses[1][key], rtol=1e-10, atol=1e-12, msg=key)
    assert losses[1]["loss"] > 1  # about ln(17) per InfoNCE at initialisation: not a vacuous comparison
    for loss in losses:
        loss["loss"].backward()
    assert_same_state(fused, separate)


def test_sync_bn_runs_separate_passes_and_says_so():
    """SyncBatchNorm has no grouped statistics: the fused pass is switched off with a one-line warning of its
    cost, and the loss is the separate passes' (outside a process group SyncBatchNorm is BatchNorm)."""
    torch.manual_seed(0)
    separate = moco(**TINY, feature_dim=8, queue_size=16, fused_queries=False, **METHODS["skelemixclr_plus"]).double()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(separate))
    synced.fused_queries = True
    views = [clips(4, seed) for seed in range(1 + separate.num_queries)]
    with pytest.warns(UserWarning, match="sync_bn: the query and its 3 mixes run as 4 encoder calls, not one fused"):
        loss = synced(views, generator=torch.Generator().manual_seed(3))["loss"]
    torch.testing.assert_close(loss, separate(views, generator=torch.Generator().manual_seed(3))["loss"],
                               rtol=1e-10, atol=1e-12)
