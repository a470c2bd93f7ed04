"""ST-GCN encoder: the readable forward against docs/method.md §2 written out, the fast kernels against it; the
pooling around it (net/encoders.py, net/skelemix.py) against explicit means."""
import copy

import pytest
import torch
import torch.nn as nn
from flat import classifier

from net.encoders import build_encoder, pool
from net.skelemix import check_mask, masked_pool
from net.st_gcn import STGCN

STRIDES = [1, 1, 1, 1, 2, 1, 1, 2, 1, 1]  # docs/method.md §2 temporal stride of the 10 blocks

# State-dict names of the original release for the 10-block model (docs/method.md §2).
EXPECTED_KEYS = [
    "A", "data_bn.weight", "data_bn.bias", "data_bn.running_mean", "data_bn.running_var",
    "data_bn.num_batches_tracked", "st_gcn_networks.0.gcn.conv.weight", "st_gcn_networks.0.gcn.conv.bias",
    "st_gcn_networks.0.tcn.0.weight", "st_gcn_networks.0.tcn.0.bias", "st_gcn_networks.0.tcn.0.running_mean",
    "st_gcn_networks.0.tcn.0.running_var", "st_gcn_networks.0.tcn.0.num_batches_tracked",
    "st_gcn_networks.0.tcn.2.weight", "st_gcn_networks.0.tcn.2.bias", "st_gcn_networks.0.tcn.3.weight",
    "st_gcn_networks.0.tcn.3.bias", "st_gcn_networks.0.tcn.3.running_mean",
    "st_gcn_networks.0.tcn.3.running_var", "st_gcn_networks.0.tcn.3.num_batches_tracked",
    "st_gcn_networks.1.gcn.conv.weight", "st_gcn_networks.1.gcn.conv.bias", "st_gcn_networks.1.tcn.0.weight",
    "st_gcn_networks.1.tcn.0.bias", "st_gcn_networks.1.tcn.0.running_mean",
    "st_gcn_networks.1.tcn.0.running_var", "st_gcn_networks.1.tcn.0.num_batches_tracked",
    "st_gcn_networks.1.tcn.2.weight", "st_gcn_networks.1.tcn.2.bias", "st_gcn_networks.1.tcn.3.weight",
    "st_gcn_networks.1.tcn.3.bias", "st_gcn_networks.1.tcn.3.running_mean",
    "st_gcn_networks.1.tcn.3.running_var", "st_gcn_networks.1.tcn.3.num_batches_tracked",
    "st_gcn_networks.2.gcn.conv.weight", "st_gcn_networks.2.gcn.conv.bias", "st_gcn_networks.2.tcn.0.weight",
    "st_gcn_networks.2.tcn.0.bias", "st_gcn_networks.2.tcn.0.running_mean",
    "st_gcn_networks.2.tcn.0.running_var", "st_gcn_networks.2.tcn.0.num_batches_tracked",
    "st_gcn_networks.2.tcn.2.weight", "st_gcn_networks.2.tcn.2.bias", "st_gcn_networks.2.tcn.3.weight",
    "st_gcn_networks.2.tcn.3.bias", "st_gcn_networks.2.tcn.3.running_mean",
    "st_gcn_networks.2.tcn.3.running_var", "st_gcn_networks.2.tcn.3.num_batches_tracked",
    "st_gcn_networks.3.gcn.conv.weight", "st_gcn_networks.3.gcn.conv.bias", "st_gcn_networks.3.tcn.0.weight",
    "st_gcn_networks.3.tcn.0.bias", "st_gcn_networks.3.tcn.0.running_mean",
    "st_gcn_networks.3.tcn.0.running_var", "st_gcn_networks.3.tcn.0.num_batches_tracked",
    "st_gcn_networks.3.tcn.2.weight", "st_gcn_networks.3.tcn.2.bias", "st_gcn_networks.3.tcn.3.weight",
    "st_gcn_networks.3.tcn.3.bias", "st_gcn_networks.3.tcn.3.running_mean",
    "st_gcn_networks.3.tcn.3.running_var", "st_gcn_networks.3.tcn.3.num_batches_tracked",
    "st_gcn_networks.4.gcn.conv.weight", "st_gcn_networks.4.gcn.conv.bias", "st_gcn_networks.4.tcn.0.weight",
    "st_gcn_networks.4.tcn.0.bias", "st_gcn_networks.4.tcn.0.running_mean",
    "st_gcn_networks.4.tcn.0.running_var", "st_gcn_networks.4.tcn.0.num_batches_tracked",
    "st_gcn_networks.4.tcn.2.weight", "st_gcn_networks.4.tcn.2.bias", "st_gcn_networks.4.tcn.3.weight",
    "st_gcn_networks.4.tcn.3.bias", "st_gcn_networks.4.tcn.3.running_mean",
    "st_gcn_networks.4.tcn.3.running_var", "st_gcn_networks.4.tcn.3.num_batches_tracked",
    "st_gcn_networks.4.residual.0.weight", "st_gcn_networks.4.residual.0.bias",
    "st_gcn_networks.4.residual.1.weight", "st_gcn_networks.4.residual.1.bias",
    "st_gcn_networks.4.residual.1.running_mean", "st_gcn_networks.4.residual.1.running_var",
    "st_gcn_networks.4.residual.1.num_batches_tracked", "st_gcn_networks.5.gcn.conv.weight",
    "st_gcn_networks.5.gcn.conv.bias", "st_gcn_networks.5.tcn.0.weight", "st_gcn_networks.5.tcn.0.bias",
    "st_gcn_networks.5.tcn.0.running_mean", "st_gcn_networks.5.tcn.0.running_var",
    "st_gcn_networks.5.tcn.0.num_batches_tracked", "st_gcn_networks.5.tcn.2.weight",
    "st_gcn_networks.5.tcn.2.bias", "st_gcn_networks.5.tcn.3.weight", "st_gcn_networks.5.tcn.3.bias",
    "st_gcn_networks.5.tcn.3.running_mean", "st_gcn_networks.5.tcn.3.running_var",
    "st_gcn_networks.5.tcn.3.num_batches_tracked", "st_gcn_networks.6.gcn.conv.weight",
    "st_gcn_networks.6.gcn.conv.bias", "st_gcn_networks.6.tcn.0.weight", "st_gcn_networks.6.tcn.0.bias",
    "st_gcn_networks.6.tcn.0.running_mean", "st_gcn_networks.6.tcn.0.running_var",
    "st_gcn_networks.6.tcn.0.num_batches_tracked", "st_gcn_networks.6.tcn.2.weight",
    "st_gcn_networks.6.tcn.2.bias", "st_gcn_networks.6.tcn.3.weight", "st_gcn_networks.6.tcn.3.bias",
    "st_gcn_networks.6.tcn.3.running_mean", "st_gcn_networks.6.tcn.3.running_var",
    "st_gcn_networks.6.tcn.3.num_batches_tracked", "st_gcn_networks.7.gcn.conv.weight",
    "st_gcn_networks.7.gcn.conv.bias", "st_gcn_networks.7.tcn.0.weight", "st_gcn_networks.7.tcn.0.bias",
    "st_gcn_networks.7.tcn.0.running_mean", "st_gcn_networks.7.tcn.0.running_var",
    "st_gcn_networks.7.tcn.0.num_batches_tracked", "st_gcn_networks.7.tcn.2.weight",
    "st_gcn_networks.7.tcn.2.bias", "st_gcn_networks.7.tcn.3.weight", "st_gcn_networks.7.tcn.3.bias",
    "st_gcn_networks.7.tcn.3.running_mean", "st_gcn_networks.7.tcn.3.running_var",
    "st_gcn_networks.7.tcn.3.num_batches_tracked", "st_gcn_networks.7.residual.0.weight",
    "st_gcn_networks.7.residual.0.bias", "st_gcn_networks.7.residual.1.weight",
    "st_gcn_networks.7.residual.1.bias", "st_gcn_networks.7.residual.1.running_mean",
    "st_gcn_networks.7.residual.1.running_var", "st_gcn_networks.7.residual.1.num_batches_tracked",
    "st_gcn_networks.8.gcn.conv.weight", "st_gcn_networks.8.gcn.conv.bias", "st_gcn_networks.8.tcn.0.weight",
    "st_gcn_networks.8.tcn.0.bias", "st_gcn_networks.8.tcn.0.running_mean",
    "st_gcn_networks.8.tcn.0.running_var", "st_gcn_networks.8.tcn.0.num_batches_tracked",
    "st_gcn_networks.8.tcn.2.weight", "st_gcn_networks.8.tcn.2.bias", "st_gcn_networks.8.tcn.3.weight",
    "st_gcn_networks.8.tcn.3.bias", "st_gcn_networks.8.tcn.3.running_mean",
    "st_gcn_networks.8.tcn.3.running_var", "st_gcn_networks.8.tcn.3.num_batches_tracked",
    "st_gcn_networks.9.gcn.conv.weight", "st_gcn_networks.9.gcn.conv.bias", "st_gcn_networks.9.tcn.0.weight",
    "st_gcn_networks.9.tcn.0.bias", "st_gcn_networks.9.tcn.0.running_mean",
    "st_gcn_networks.9.tcn.0.running_var", "st_gcn_networks.9.tcn.0.num_batches_tracked",
    "st_gcn_networks.9.tcn.2.weight", "st_gcn_networks.9.tcn.2.bias", "st_gcn_networks.9.tcn.3.weight",
    "st_gcn_networks.9.tcn.3.bias", "st_gcn_networks.9.tcn.3.running_mean",
    "st_gcn_networks.9.tcn.3.running_var", "st_gcn_networks.9.tcn.3.num_batches_tracked",
    "st_gcn_networks.9.residual.0.weight", "st_gcn_networks.9.residual.0.bias",
    "st_gcn_networks.9.residual.1.weight", "st_gcn_networks.9.residual.1.bias",
    "st_gcn_networks.9.residual.1.running_mean", "st_gcn_networks.9.residual.1.running_var",
    "st_gcn_networks.9.residual.1.num_batches_tracked", "fc.weight", "fc.bias", "edge_importance.0",
    "edge_importance.1", "edge_importance.2", "edge_importance.3", "edge_importance.4", "edge_importance.5",
    "edge_importance.6", "edge_importance.7", "edge_importance.8", "edge_importance.9",
]


def tiny_model(**kwargs):
    """Same structure as the full model (residual convs in blocks 4, 7, 9) at a tiny width."""
    torch.manual_seed(0)
    args = dict(in_channels=3, hidden_channels=4, hidden_dim=24, num_class=5, dropout=0.0)
    return classifier(**dict(args, **kwargs))


def randomise(model, seed=1):
    """Random weights and statistics of order one, so that a wrong term cannot hide below the tolerance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype != torch.float32:
                continue
            if name == "A":
                t.copy_(t * torch.rand(t.shape, generator=g) * 2)
            elif name.startswith("edge_importance") or name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.dim() >= 2:  # conv / linear weights
                t.copy_(torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5)
            elif name.endswith("weight"):  # BN scales below 1 keep 10 residual blocks of order one
                t.copy_(0.2 + 0.4 * torch.rand(t.shape, generator=g))
            else:  # biases, running means
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return model


def sample_input(n=3, t=16, seed=2):
    return torch.randn(n, 3, t, 25, 2, generator=torch.Generator().manual_seed(seed))


def readable(model):
    """A copy of the model that runs the forward written in net/st_gcn.py (`kernels: reference`)."""
    model = copy.deepcopy(model)
    model.encoder.kernels = "reference"
    return model


def reference(model, x):
    """The readable forward on a copy of the model: feature map and output."""
    model = readable(model)
    return model.encoder(x), model(x)


def test_fast_kernels_equal_readable_forward():
    """kernels: fast (net/st_gcn_fast.py) against the readable forward in float64, in training mode:
    forward, masked pooling and stacked outputs, every gradient and every BN running statistic."""
    torch.manual_seed(0)
    fast = randomise(tiny_model()).double().train()
    slow = readable(fast)
    x = sample_input(n=4).double()
    g = torch.Generator().manual_seed(5)
    mask, masks = torch.rand(4, 25, generator=g) > 0.5, [None, torch.rand(4, 25, generator=g) > 0.5]
    outputs = []
    for model in (fast, slow):
        # backward after each call: a later call's running-statistics update would bump what BN saved
        out = model(x)
        out.sum().backward()
        p, c = map(model.fc, masked_pool(model.encoder(x), mask))
        (p * c).sum().backward()
        maps = model.encoder.forward_stacked(torch.cat([x, x.flip(0)]), 2)
        q, (gp, gc) = model.fc(pool(maps[0])), map(model.fc, masked_pool(maps[1], masks[1]))
        ((q * gp).sum() + gc.square().sum()).backward()
        outputs.append([out, p, c, q, gp, gc])
    assert outputs[1][0].abs().max() > 0.1  # the comparison is not between two near-zero tensors
    for a, b in zip(*outputs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    grads = [{k: p.grad for k, p in model.named_parameters() if p.grad is not None} for model in (fast, slow)]
    assert sorted(grads[0]) == sorted(grads[1]) and len(grads[1]) == len(list(slow.parameters()))
    for k in grads[1]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-9, atol=1e-10, msg=k)
    buffers = dict(slow.named_buffers())
    for k, v in fast.named_buffers():
        torch.testing.assert_close(v, buffers[k], rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("training", [False, True])
def test_forward_matches_reference(training):
    model = randomise(tiny_model()).double().train(training)
    x = sample_input().double()
    fmap_ref, logits_ref = reference(model, x)
    with torch.no_grad():
        fmap, logits = model.encoder(x), model(x)
    assert fmap.shape == (3, 2, 24, 4, 25) and logits.shape == (3, 5)
    assert logits_ref.abs().max() > 0.1  # the comparison is not between two near-zero tensors
    torch.testing.assert_close(fmap, fmap_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(logits, logits_ref, atol=1e-10, rtol=0)


def test_readable_block_is_method_order():
    """The readable block is docs/method.md §2 written out: 1x1 conv, sum over subsets of x_k A_k, tcn, residual."""
    model = randomise(tiny_model()).double().eval()
    block, A = model.encoder.st_gcn_networks[4], model.encoder.A * model.encoder.edge_importance[4]
    x = torch.randn(2, 4, 16, 25, dtype=torch.float64)
    y = block.gcn.conv(x)
    y = sum(torch.matmul(y[:, 8 * k:8 * (k + 1)], A[k]) for k in range(3))
    expected = torch.relu(block.tcn(y) + block.residual(x))
    with torch.no_grad():
        torch.testing.assert_close(block(x, A), expected, atol=1e-12, rtol=0)


def test_return_features_is_pooled_feature_map():
    model = randomise(tiny_model()).eval()
    x = sample_input()
    with torch.no_grad():
        fmap, pooled = model.encoder(x), model(x, return_features=True)
    torch.testing.assert_close(pooled, fmap.mean(dim=(1, 3, 4)), atol=1e-6, rtol=0)


def explicit_masked_means(fmap, mask):
    """p, c as means over the listed positions of each sample, then over bodies."""
    ps, cs = [], []
    for i in range(fmap.shape[0]):
        sample_mask = mask if mask.dim() == 2 else mask[i]
        ps.append(torch.stack([fmap[i, b][:, sample_mask].mean(1) for b in range(fmap.shape[1])]).mean(0))
        cs.append(torch.stack([fmap[i, b][:, ~sample_mask].mean(1) for b in range(fmap.shape[1])]).mean(0))
    return torch.stack(ps), torch.stack(cs)


@pytest.mark.parametrize("per_sample", [False, True])
def test_masked_pool_equals_explicit_means(per_sample):
    g = torch.Generator().manual_seed(3)
    fmap = torch.randn(4, 2, 6, 5, 25, generator=g)
    mask = torch.rand((4, 5, 25) if per_sample else (5, 25), generator=g) > 0.6
    p, c = masked_pool(fmap, mask)
    p_ref, c_ref = explicit_masked_means(fmap, mask)
    torch.testing.assert_close(p, p_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(c, c_ref, atol=1e-6, rtol=0)


def test_pooling_in_fp16_at_large_activations_stays_finite():
    """16 x 25 positions x 2 bodies at mean activation 100: their fp16 sum (80,000) exceeds fp16's 65,504, so
    each pool must scale before summing; both agree with fp64 means within fp16 rounding."""
    g = torch.Generator().manual_seed(4)
    fmap = 100 + torch.randn(3, 2, 6, 16, 25, generator=g, dtype=torch.float64)  # (N, M, C, T', V)
    mask = torch.zeros(16, 25, dtype=torch.bool)
    mask[4:12, 3:10] = True
    p_ref, c_ref = explicit_masked_means(fmap, mask)
    p, c = masked_pool(fmap.half(), mask)
    joints_major = fmap.permute(4, 0, 1, 3, 2).half().permute(1, 2, 4, 3, 0)  # the fast kernels' layout
    fast_p, fast_c = masked_pool(joints_major, mask)
    for value, expected in ((p, p_ref), (c, c_ref), (fast_p, p_ref), (fast_c, c_ref)):
        assert value.dtype == torch.float16 and torch.isfinite(value).all()
        torch.testing.assert_close(value.double(), expected, atol=0.2, rtol=0)  # fp16 spacing at 100: 0.0625


def test_forward_with_mask_returns_fc_of_masked_means():
    model = randomise(tiny_model()).double().eval()
    x = sample_input().double()
    mask = torch.zeros(4, 25, dtype=torch.bool)
    mask[1:3, [4, 5, 6, 7, 21, 22]] = True
    fmap_ref, _ = reference(model, x)
    p_ref, c_ref = explicit_masked_means(fmap_ref, mask)
    with torch.no_grad():
        p, c = masked_pool(model.encoder(x), mask)
        fc_p, fc_c = model.fc(p), model.fc(c)
    torch.testing.assert_close(p, p_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(c, c_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(fc_p, p_ref @ model.fc.weight.T + model.fc.bias, atol=1e-10, rtol=0)
    torch.testing.assert_close(fc_c, c_ref @ model.fc.weight.T + model.fc.bias, atol=1e-10, rtol=0)


def test_bad_mask_shape_is_named():
    with pytest.raises(ValueError, match=r"\(4, 25\).*got torch.bool \(16, 25\)"):
        check_mask(torch.ones(16, 25, dtype=torch.bool), 3, tiny_model().encoder(sample_input()).shape[3:])


def test_state_dict_has_release_names_and_loads_strictly():
    model = randomise(tiny_model())
    sd = model.state_dict()
    assert sorted(sd) == sorted(EXPECTED_KEYS)
    assert len(EXPECTED_KEYS) == len(set(EXPECTED_KEYS))
    other = tiny_model()
    other.load_state_dict(sd, strict=True)
    x = sample_input()
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(x), model.eval()(x), atol=0, rtol=0)


def test_without_edge_importance():
    model = tiny_model(edge_importance_weighting=False)
    assert not any(k.startswith("edge_importance") for k in model.state_dict())
    assert model(sample_input()).shape == (3, 5)


def test_temporal_stride_and_defaults():
    model = classifier()
    encoder = model.encoder
    assert encoder.temporal_stride == 4 and encoder.out_channels == 256
    assert model.fc.in_features == 256 and model.fc.out_features == 60
    widths = [b.gcn.conv.out_channels // 3 for b in encoder.st_gcn_networks]
    assert widths == [16] * 4 + [32] * 3 + [64] * 2 + [256]
    assert [b.tcn[2].stride[0] for b in encoder.st_gcn_networks] == STRIDES
    assert all(b.tcn[4].p == 0.5 for b in encoder.st_gcn_networks[1:])  # dropout from block 1 on
    assert not isinstance(encoder.st_gcn_networks[0].tcn[4], nn.Dropout)
    assert "A" in model.state_dict() and encoder.A.shape == (3, 25, 25)


def test_init_statistics():
    torch.manual_seed(0)
    model = classifier()
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    weights = torch.cat([m.weight.flatten() for m in layers])
    biases = torch.cat([m.bias for m in layers])
    bn_w, bn_b = torch.cat([m.weight for m in norms]), torch.cat([m.bias for m in norms])
    assert abs(weights.mean()) < 1e-3 and abs(weights.std() - 0.02) < 1e-3
    assert abs(bn_w.mean() - 1) < 3e-3 and abs(bn_w.std() - 0.02) < 3e-3
    assert biases.abs().max() == 0 and bn_b.abs().max() == 0
    assert all(torch.equal(p, torch.ones(3, 25, 25)) for p in model.encoder.edge_importance)


def test_init_weights_covers_a_replaced_fc():
    model = tiny_model()
    model.fc = nn.Sequential(nn.Linear(24, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 8))
    model.init_weights()
    assert model.fc[0].bias.abs().max() == 0 and abs(model.fc[1].weight.mean() - 1) < 0.02
    assert model(sample_input()).shape == (3, 8)


def test_channels_last_gives_the_same_output_and_gradients():
    model = randomise(tiny_model()).eval()
    x = sample_input()
    ref = model(x)
    ref.sum().backward()
    ref_grad = model.encoder.st_gcn_networks[3].gcn.conv.weight.grad.clone()
    model.zero_grad()
    model = model.to(memory_format=torch.channels_last)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.encoder.st_gcn_networks[3].gcn.conv.weight.grad, ref_grad, atol=1e-4, rtol=1e-4)


def test_other_layout_and_unknown_argument():
    model = tiny_model(graph_args={"layout": "coco", "strategy": "spatial"})
    x = torch.randn(2, 3, 8, 17, 1)
    assert model(x).shape == (2, 5)
    with pytest.raises(TypeError, match="hidden_channel"):
        STGCN(hidden_channel=8)
    with pytest.raises(ValueError, match="encoder STGCN: .*unexpected keyword argument 'hidden_channel'"):
        build_encoder(dict(name="st_gcn", hidden_channel=8))
    with pytest.raises(ValueError, match="encoder.kernels must be one of fast, reference, got 'slow'"):
        STGCN(kernels="slow")
