"""Honest baselines and training-health signals (issue 10): BN-calibrated random encoder, raw-joint row,
loss over chance, collapse statistics and the not-learning warning, against explicit computations."""
import copy
import json
import math

import numpy as np
import torch
import torch.nn.functional as F
from flat import classifier, moco

from net.moco import training_health
from processor.evaluation import calibrate_batchnorm
from processor.pretrain import near_chance
from tests.test_evaluation import toy_dataset

ENC = dict(hidden_channels=4, hidden_dim=16, dropout=0.0)


def test_calibrated_random_encoder_gives_features_of_order_one():
    torch.manual_seed(0)
    x = torch.randn(32, 3, 16, 25, 2) * 0.3 + 0.5
    model = classifier(**ENC, num_class=2).eval()
    with torch.no_grad():
        raw = model(x, return_features=True)
    assert raw.abs().max() < 1e-3  # docs/method.md §2 init with running statistics 0/1: features vanish
    calibrate_batchnorm(model, [x[:16], x[16:]])  # two equal batches: cumulative mean = data mean
    data = x.permute(0, 4, 3, 1, 2).reshape(64, 75, 16)  # data BN's (N·M, V·C, T) view
    assert torch.allclose(model.encoder.data_bn.running_mean, data.mean((0, 2)), atol=1e-5)
    assert not model.training and not model.encoder.data_bn.training and model.encoder.data_bn.momentum == 0.1
    with torch.no_grad():
        feats = model(x, return_features=True)
    assert 0.1 < feats.std(0).mean() < 10 and 0.1 < feats.abs().mean() < 10


def test_calibration_is_the_cumulative_average_of_momentum_none():
    """Batches of unequal size: every running statistic and counter equals torch's own cumulative average
    (momentum None), in float64, and each layer's momentum is restored."""
    torch.manual_seed(0)
    model = classifier(**ENC, num_class=2).double()
    for m in model.modules():  # unequal momenta: the restore puts each back
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1 + 0.01 * len(m.running_mean) % 7
    momenta = {k: m.momentum for k, m in model.named_modules() if hasattr(m, "momentum")}
    reference = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, 3, 16, 25, 2, generator=g, dtype=torch.float64) * (1 + n) + n for n in (5, 3, 7)]
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
                m.train()
        for x in batches:
            reference(x, return_features=True)
    assert calibrate_batchnorm(model, batches) == len(momenta)
    expected = dict(reference.named_buffers())
    for k, v in model.named_buffers():
        torch.testing.assert_close(v, expected[k], rtol=1e-12, atol=1e-12, msg=k)
    data_bn = model.encoder.data_bn
    assert data_bn.num_batches_tracked == 3 and data_bn.running_var.std() > 1  # not a vacuous match
    assert {k: m.momentum for k, m in model.named_modules() if hasattr(m, "momentum")} == momenta


def test_calibrating_a_compiled_encoder_keeps_one_graph():
    """Momentum None broke a compiled encoder's graph at every BatchNorm (and a per-batch momentum would
    compile a graph per batch): the calibration now runs as one graph without breaks."""
    from torch._dynamo.utils import counters
    graphs = []

    def backend(graph_module, example_inputs):  # counts the graphs dynamo hands over, runs them as traced
        graphs.append(graph_module)
        return graph_module.forward

    torch.manual_seed(0)
    model = classifier(**ENC, num_class=2)
    model.compile(backend=backend)
    torch.compiler.reset()
    counters.clear()
    x = torch.randn(12, 3, 16, 25, 2)
    calibrate_batchnorm(model, [x[:4], x[4:8], x[8:]])
    assert sum(counters["graph_break"].values()) == 0 and len(graphs) == 1
    torch.compiler.reset()


def linear_eval(tiny, tmp_path, data, name, model_args, **overrides):
    cls, cfg = tiny("linear_evaluation", "unused", tmp_path / name, train_feeder_args=data, test_feeder_args=data,
                    num_epoch=40, step=[30], eval_interval=0, batch_size=8, base_lr=0.5, **overrides)
    cfg["model_args"] = model_args if "model" in overrides else {**cfg["model_args"], **model_args}
    proc = cls(cfg)
    proc.start()
    return proc, json.loads((tmp_path / name / "result.json").read_text())["final"]["top1"]


def test_random_init_linear_evaluation_is_above_chance(tiny, tmp_path):
    data = toy_dataset(tmp_path)
    proc, top1 = linear_eval(tiny, tmp_path, data, "random", model_args=dict(num_class=2))
    assert top1 >= 90.0  # separable toy data; uncalibrated, the features are ~1e-8 and top-1 is 50
    assert proc.raw_model.encoder.data_bn.running_var.min() > 0
    assert "random encoder" in (tmp_path / "random" / "log.txt").read_text()


def test_random_init_with_few_labels_measures_bn_statistics_on_every_training_clip(tiny, tmp_path):
    data = toy_dataset(tmp_path)
    proc, _ = linear_eval(tiny, tmp_path, dict(data, label_fraction=0.5), "few", model_args=dict(num_class=2),
                          test_batch_size=24)
    assert len(proc.train_loader.dataset) == 12  # the classifier sees half the labels...
    x = torch.from_numpy(np.load(data["data_path"])).double()  # ...the BN statistics all 24 clips
    n, c, t, v, m = x.shape
    every_clip = x.permute(0, 4, 3, 1, 2).reshape(n * m, v * c, t).mean((0, 2))
    assert torch.allclose(proc.raw_model.encoder.data_bn.running_mean.double(), every_clip, atol=1e-5)


def test_raw_joint_baseline_standardises_the_flattened_clip(tiny, tmp_path):
    data = toy_dataset(tmp_path)
    proc, top1 = linear_eval(tiny, tmp_path, data, "raw", model="net.raw_joints.Model",
                             model_args=dict(num_class=2))
    x = np.load(data["data_path"]).reshape(24, -1)
    assert np.allclose(proc.raw_model.norm.running_mean.numpy(), x.mean(0), atol=1e-5)
    assert top1 == 100.0


def collapsed_moco(**kwargs):
    """A MoCo whose query outputs are all zero (after normalisation): every logit equal."""
    torch.manual_seed(0)
    model = moco(**ENC, feature_dim=8, queue_size=12, **kwargs)
    model.encoder_q.fc[-1].weight.data.zero_()
    return model


def test_chance_losses_of_each_method():
    k = 12
    assert collapsed_moco().chance_losses() == {"loss_ins": math.log(k + 1)}  # the parts of the loss
    plus = collapsed_moco(swap_params=[[2, 3, 7, 11, 3, 1.0]]).chance_losses()
    assert math.isclose(plus["loss_ins"], math.log(13))  # ins + 3 mixes with one extra negative
    assert math.isclose(plus["loss_mix"], 3 * math.log(14))


def test_collapsed_outputs_give_chance_loss_and_zero_spread():
    for swap in (None, [[2, 3, 7, 11, 3, 1.0]]):
        model = collapsed_moco(swap_params=swap, head="mlp_bn" if swap else "mlp")
        views = [torch.randn(6, 3, 16, 25, 2) for _ in range(model.num_queries + 1)]
        out = model(views, generator=torch.Generator().manual_seed(0))
        for key, chance in model.chance_losses().items():
            assert math.isclose(float(out[key].detach()), chance, rel_tol=1e-5), key
        assert float(out["health/q_std"]) == 0.0


def test_health_statistics_by_hand():
    torch.manual_seed(0)
    q, k, queue = F.normalize(torch.randn(5, 4), dim=1), F.normalize(torch.randn(5, 4), dim=1), torch.randn(4, 7)
    h = training_health(q, k, queue)
    assert math.isclose(float(h["health/pos_cos"]), sum(float(q[i] @ k[i]) for i in range(5)) / 5, rel_tol=1e-5)
    assert math.isclose(float(h["health/neg_cos"]), float((q @ queue).sum()) / 35, rel_tol=1e-5)
    spread = sum(float(np.std(q[:, j].numpy())) for j in range(4)) / 4
    assert math.isclose(float(h["health/q_std"]), spread, rel_tol=1e-5)


def test_near_chance_rule():
    assert near_chance(0.99, keys_seen=2000, queue_size=100)
    assert not near_chance(0.99, keys_seen=1900, queue_size=100)  # queue refilled only 19 times
    assert not near_chance(0.90, keys_seen=10_000, queue_size=100)


def pretrain(tiny, demo_arrays, work_dir, collapse):
    cls, cfg = tiny("pretrain_skeletonclr", demo_arrays, work_dir, num_epoch=3, batch_size=8, save_interval=3,
                    base_lr=0.0 if collapse else 0.1, model_args=dict(queue_size=8))  # 27 queue refills
    proc = cls(cfg)
    if collapse:
        proc.raw_model.encoder_q.fc[-1].weight.data.zero_()
    proc.start()
    return proc, (work_dir / "log.txt").read_text()


def test_warning_fires_on_forced_collapse_only(demo_arrays, tiny, tmp_path):
    proc, log = pretrain(tiny, demo_arrays, tmp_path / "collapsed", collapse=True)
    assert math.isclose(proc.stats[-1]["health/loss_over_chance"], 1.0, rel_tol=1e-5)
    assert proc.stats[-1]["health/q_std"] == 0.0 and "is not learning" in log
    proc, log = pretrain(tiny, demo_arrays, tmp_path / "healthy", collapse=False)
    assert proc.stats[-1]["health/loss_over_chance"] < 0.9 and "is not learning" not in log
