"""The MoCo wrapper (net/moco.py): losses, EMA, queue and state-dict names against hand computations."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from flat import moco

from net.losses import info_nce
from net.skelemix import MixSetting, masked_pool, mix_settings

TINY = dict(hidden_channels=4, hidden_dim=16, dropout=0.0, feature_dim=8, queue_size=12)


def make(**kwargs):
    torch.manual_seed(0)
    return moco(**{**TINY, **kwargs})


def batch(n=4, t=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, t, 25, 2, generator=g)


def cross_entropy_at_zero(logits):
    """-log softmax(logits)[0] per row, averaged, written out by hand."""
    return sum(math.log(sum(math.exp(v) for v in row)) - row[0] for row in logits.tolist()) / len(logits)


def test_key_encoder_starts_as_copy_and_is_frozen():
    model = make()
    for (nq, q), (nk, k) in zip(model.encoder_q.state_dict().items(), model.encoder_k.state_dict().items()):
        assert nq == nk and torch.equal(q, k)
    assert not any(p.requires_grad for p in model.encoder_k.parameters())
    assert torch.allclose(model.queue.norm(dim=0), torch.ones(12))


@pytest.mark.parametrize("head, names", [
    ("mlp", ["fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"]),
    ("mlp_bn", ["fc.0.weight", "fc.0.bias", "fc.1.weight", "fc.1.bias", "fc.1.running_mean",
                "fc.1.running_var", "fc.1.num_batches_tracked", "fc.3.weight", "fc.3.bias"]),
])
def test_original_release_key_names(head, names):
    keys = list(make(head=head).state_dict())
    for prefix in ("encoder_q.", "encoder_k."):
        assert [k for k in keys if k.startswith(prefix + "fc.")] == [prefix + n for n in names]
        assert prefix + "data_bn.weight" in keys and prefix + "st_gcn_networks.9.tcn.3.running_var" in keys
        assert prefix + "edge_importance.0" in keys and prefix + "A" in keys
    assert "queue" in keys and "queue_ptr" in keys
    other = make(head=head)
    other.load_state_dict(make(head=head).state_dict(), strict=True)


def test_skeletonclr_loss_ema_and_queue_exactly():
    model = make(momentum=0.9, temperature=0.07)
    q_params = [p.detach().clone() for p in model.encoder_q.parameters()]
    k_params = [p.detach().clone() for p in model.encoder_k.parameters()]
    queue0 = model.queue.clone()
    im_q, im_k = batch(seed=1), batch(seed=2)
    reference_k = copy.deepcopy(model.encoder_k)

    losses = model([im_q, im_k])

    # EMA: k <- 0.9 k + 0.1 q, once, before the keys are computed
    for k0, q0, k1 in zip(k_params, q_params, model.encoder_k.parameters()):
        assert torch.allclose(k1, 0.9 * k0 + 0.1 * q0, atol=1e-7)
    with torch.no_grad():
        for p, k0, q0 in zip(reference_k.parameters(), k_params, q_params):
            p.copy_(0.9 * k0 + 0.1 * q0)
        k = F.normalize(reference_k(im_k), dim=1)
        q = F.normalize(model.encoder_q(im_q), dim=1)
    logits = torch.stack([torch.cat([(q[i] * k[i]).sum()[None], q[i] @ queue0]) for i in range(4)]) / 0.07
    assert losses["loss"].item() == pytest.approx(cross_entropy_at_zero(logits), rel=1e-4, abs=1e-6)
    assert set(losses) == {"loss", "loss_ins", "health/pos_cos", "health/neg_cos", "health/q_std"}
    # queue: the 4 new keys at the front, pointer advanced, the rest untouched
    assert torch.allclose(model.queue[:, :4], k.T, atol=1e-6)
    assert torch.equal(model.queue[:, 4:], queue0[:, 4:]) and int(model.queue_ptr) == 4
    model([im_q, im_k])
    model([im_q, im_k])
    assert int(model.queue_ptr) == 0   # 12 = 3 batches of 4: wrapped around


def test_queue_size_must_be_divisible_by_batch():
    with pytest.raises(ValueError, match="queue_size 12 is not divisible by the global batch 5"):
        make()([batch(5), batch(5)])


def test_skelemix_losses_by_hand():
    model = make(head="mlp_bn", temperature=0.2, swap_params=[[2, 3, 1, 2, 2, 0.5]])
    im_q, im_k = batch(seed=3), batch(seed=4)
    queue0 = model.queue.clone()
    state = copy.deepcopy(model.state_dict())
    g = torch.Generator().manual_seed(7)
    losses = model([im_q, im_k], generator=g)

    ref = make(head="mlp_bn", temperature=0.2, swap_params=[[2, 3, 1, 2, 2, 0.5]])
    ref.load_state_dict(state)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        ref._momentum_update_key_encoder(ref.momentum)
        k = F.normalize(ref.encoder_k(im_k), dim=1)
        q = F.normalize(ref.encoder_q(im_q), dim=1)
        ins = cross_entropy_at_zero(torch.cat([(q * k).sum(1, keepdim=True), q @ queue0], 1) / 0.2)
        mix = 0.0
        for _ in range(2):
            mixed, mask, partner = ref.mixes[0].skelemix(im_q, 2, 3, 1, 2, generator=g)
            assert all(int(partner[i]) != i for i in range(4))
            pc = masked_pool(ref.encoder_q.encoder(mixed), mask)
            p, c = (F.normalize(ref.encoder_q.fc(f), dim=1) for f in pc)
            lp = torch.stack([torch.cat([(p[i] * k[partner[i]]).sum()[None], p[i] @ queue0,
                                         (p[i] * c[i]).sum()[None]]) for i in range(4)]) / 0.2
            lc = torch.stack([torch.cat([(c[i] * k[i]).sum()[None], c[i] @ queue0,
                                         (c[i] * p[i]).sum()[None]]) for i in range(4)]) / 0.2
            mix += 0.5 * (cross_entropy_at_zero(lp) + cross_entropy_at_zero(lc)) / 2
    assert losses["loss_ins"].item() == pytest.approx(0.5 * ins, rel=1e-4, abs=1e-6)
    assert losses["loss_mix"].item() == pytest.approx(mix, rel=1e-4, abs=1e-6)
    assert losses["loss"].item() == pytest.approx(0.5 * ins + mix, rel=1e-4, abs=1e-6)


def test_schedules_are_arguments_of_forward():
    """momentum replaces the EMA momentum for one step; mix_weight weighs the mixes' losses in `loss` only."""
    model = make(head="mlp_bn", temperature=0.2, swap_params=[[2, 3, 1, 2, 1, 1.0]])
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
    k0 = [p.clone() for p in model.encoder_k.parameters()]
    q0 = [p.clone() for p in model.encoder_q.parameters()]
    losses = model([batch(seed=5), batch(seed=6)], generator=torch.Generator().manual_seed(0), momentum=0.25,
                   mix_weight=0.3)
    for k, a, b in zip(model.encoder_k.parameters(), k0, q0):
        torch.testing.assert_close(k, 0.25 * a + 0.75 * b)
    assert model.momentum == 0.999  # the base momentum is not changed by a step's
    torch.testing.assert_close(losses["loss"], losses["loss_ins"] + 0.3 * losses["loss_mix"])


def test_stop_gradient_on_the_extra_negative():
    model = make(head="mlp_bn", temperature=0.2, swap_params=[[2, 3, 1, 2, 1, 1.0]])
    losses = model([batch(seed=5), batch(seed=6)], generator=torch.Generator().manual_seed(0))
    losses["loss"].backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert model.encoder_q.fc[0].weight.grad.abs().sum() > 0


def test_wrong_number_of_views():
    with pytest.raises(ValueError, match="expected 1 query views and a key view, got 3 views"):
        make()([batch(), batch(), batch()])


def test_release_rows_dicts_and_settings_read_as_the_same_mixes():
    plus = MixSetting(spatial=(2, 3), temporal=(7, 11), repeat=3, weight=1.0)
    assert mix_settings([[2, 3, 7, 11, 3, 1.0]]) == [plus]  # the release's row, unchanged
    assert mix_settings([dict(spatial=[2, 3], temporal=[7, 11], repeat=3, weight=1.0)]) == [plus]
    assert mix_settings([plus, (1, 2, 3, 4, 1, 0.5)]) == [plus, MixSetting((1, 2), (3, 4), 1, 0.5)]
    assert mix_settings(None) == [] and mix_settings([]) == []
    model = make(head="mlp_bn", swap_params=[[2, 3, 1, 2, 2, 0.5], dict(spatial=[1, 1], temporal=[1, 2],
                                                                          repeat=1, weight=2.0)])
    assert [m.setting for m in model.mixes] == [MixSetting((2, 3), (1, 2), 2, 0.5), MixSetting((1, 1), (1, 2), 1, 2.0)]
    assert model.num_queries == 2 and make().mixes == [] and make().num_queries == 1


@pytest.mark.parametrize("bad", [[[3, 2, 7, 11, 1, 1.0]], [dict(spatial=[2, 3], temporal=[7, 11], repeat=1)],
                                 [dict(spatial=[2, 3], temporal=[0, 11], repeat=1, weight=1.0)],
                                 [MixSetting((2, 3), (7, 11), 0, 1.0)], [[2, 3, 7, 11, 1]]])
def test_bad_mix_settings_name_the_key_and_value(bad):
    with pytest.raises(ValueError, match=r"model_args.swap_params .*: each row must be"):
        mix_settings(bad)


def test_cosine_momentum_and_auto_queue_by_hand():
    from net.moco import auto_queue_size, cosine_momentum
    assert cosine_momentum(0.99, 0.0) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 0.5) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 1.0) == pytest.approx(1.0)
    # half an epoch of keys in whole batches: NW-UCLA's 1,019 clips 15 steps -> 7 batches; tiny sets 1 batch
    assert auto_queue_size(1019, 64) == 448 and auto_queue_size(629, 64) == 256
    assert auto_queue_size(100, 64) == 64 and auto_queue_size(300, 64) == 128


@pytest.mark.parametrize("swap, head, temperature, expected", [
    (None, "mlp", 0.07, dict(loss_ins=7.38921226002276e-05)),
    ([[2, 3, 7, 11, 3, 1.0]], "mlp_bn", 0.2, dict(loss_ins=3.028470516204834, loss_mix=7.410656929016113)),
])
def test_a_seed_gives_the_losses_it_gave_before_the_encoder_contract(swap, head, temperature, expected):
    """Seed 0, the first step's losses as the encoder-owned pooling and heads computed them (the release's order
    of initial draws kept): SkeletonCLR and SkeleMixCLR+ at hidden 8, 32-d features, a queue of 64."""
    torch.manual_seed(0)
    model = moco(hidden_channels=8, hidden_dim=32, queue_size=64, head=head, temperature=temperature,
                 swap_params=swap, momentum=0.99)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 32, 25, 2, generator=g) for _ in range(model.num_queries + 1)]
    losses = model(views, generator=g)
    for key, value in expected.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-4, abs=1e-7), key


@pytest.mark.parametrize("which", ["both", "p", "c"])
def test_mix_losses_both_or_one_alone_by_hand(which):
    """mix_losses: both = (L_p + L_c) / 2, p = L_p, c = L_c, each InfoNCE written out with its extra negative."""
    from net.skelemix import SkeleMix, SkeleMixViews
    g = torch.Generator().manual_seed(3)
    p, c, k = (F.normalize(torch.randn(4, 8, generator=g), dim=1) for _ in range(3))
    queue = F.normalize(torch.randn(8, 5, generator=g), dim=0)
    partner = torch.tensor([2, 3, 0, 1])
    mix = SkeleMixViews(MixSetting((2, 3), (7, 11), 1, 1.0), SkeleMix(), losses=which)
    loss = mix.losses((p, c), (None, partner), k, queue, 0.2)

    def by_hand(q, positive, extra):
        rows = [[float(q[i] @ positive[i]), *(q[i] @ queue).tolist(), float(q[i] @ extra[i])] for i in range(4)]
        return cross_entropy_at_zero(torch.tensor(rows) / 0.2)
    l_p, l_c = by_hand(p, k[partner], c), by_hand(c, k, p)
    assert loss.item() == pytest.approx({"both": (l_p + l_c) / 2, "p": l_p, "c": l_c}[which], rel=1e-5)
    if which == "both":  # bit for bit the loss before mix_losses existed: earlier results stay valid
        assert torch.equal(loss, (info_nce(p, k[partner], queue, 0.2, extra_negative=c)
                                  + info_nce(c, k, queue, 0.2, extra_negative=p)) / 2)


@pytest.mark.parametrize("swap_params", [[[2, 3, 7, 11, 1, 1.0]], None])
def test_mix_losses_refuses_another_value(swap_params):
    with pytest.raises(ValueError, match="model_args.mix_losses must be one of both, p, c, got 'pc'"):
        make(head="mlp_bn", swap_params=swap_params, mix_losses="pc")
