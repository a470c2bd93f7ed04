"""Evaluation protocols (processor/evaluation.py, tools/ensemble.py) against hand computations."""
import json
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from flat import classifier, moco

import processor.evaluation
from net.weights import load_encoder
from processor import configure
from processor.evaluation import SHIPPED_WEIGHTS
from tools import ensemble
from torchlight.config import ConfigError, load_yaml

ENC = dict(hidden_channels=4, hidden_dim=16, dropout=0.0)


def toy_dataset(folder, n=24, frames=16):
    """Two classes that differ in sign of a smooth motion: linearly separable for any sensible encoder."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    t = np.linspace(0, 1, frames)[None, :, None, None]
    x = 0.05 * rng.standard_normal((n, 3, frames, 25, 2)).astype(np.float32)
    x[:, 0] += ((2 * labels - 1)[:, None, None, None] * t).astype(np.float32)
    np.save(folder / "x.npy", x)
    with open(folder / "y.pkl", "wb") as f:
        pickle.dump(([f"clip{i}" for i in range(n)], labels.tolist()), f)
    return dict(data_path=str(folder / "x.npy"), label_path=str(folder / "y.pkl"))


def linear(tiny, tmp_path, data, **overrides):
    cls, cfg = tiny("linear_evaluation", "unused", tmp_path / "lin", train_feeder_args=data,
                    test_feeder_args=data, model_args=dict(num_class=2), **overrides)
    return cls(cfg)


def calibrated_encoder(path, data_path):
    """A random encoder whose BN running statistics are those of the data (as after pretraining)."""
    torch.manual_seed(0)
    model = classifier(**ENC, num_class=2).train()
    x = torch.from_numpy(np.load(data_path))
    with torch.no_grad():
        for _ in range(60):
            model(x)
    torch.save({"model": model.state_dict()}, path)


def test_linear_evaluation_separable_toy_and_frozen_encoder(tiny, tmp_path):
    data = toy_dataset(tmp_path)
    calibrated_encoder(tmp_path / "enc.pt", data["data_path"])
    proc = linear(tiny, tmp_path, data, num_epoch=60, step=[50], eval_interval=20, batch_size=8, base_lr=0.5,
                  weights=str(tmp_path / "enc.pt"))
    before = {k: v.clone() for k, v in proc.raw_model.state_dict().items()}
    proc.start()
    after = proc.raw_model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}  # every encoder parameter and BN buffer unchanged
    result = json.loads((tmp_path / "lin" / "result.json").read_text())
    assert result["final"]["top1"] == 100.0 and result["best_on_val"]["top1"] == 100.0
    assert [h["epoch"] for h in result["history"]] == [20, 40, 60]
    assert result["confusion"] == [[12, 0], [0, 12]] and result["per_class_top1"] == [1.0, 1.0]
    with open(tmp_path / "lin" / "scores.pkl", "rb") as f:
        scores = pickle.load(f)
    assert len(scores) == 24 and scores["clip1"].argmax() == 1
    report = json.loads((tmp_path / "lin" / "weights.json").read_text())  # which keys came from where
    saved = torch.load(tmp_path / "enc.pt")["model"]
    assert report["loaded"] == sorted(saved) and report["ignored"] == [] and report["missing"] == []


@pytest.mark.parametrize("overrides, clips", [(dict(batch_size=32), 24),
                                               (dict(batch_size=8, label_fraction=0.25), 6)])
def test_fewer_training_clips_than_a_batch_is_a_one_line_error_before_training(tiny, tmp_path, overrides, clips):
    """Was an IndexError in the cached path's first epoch (no full batch, so an empty float index)."""
    data = toy_dataset(tmp_path)
    train = dict(data, label_fraction=overrides.pop("label_fraction", None))
    cls, cfg = tiny("linear_evaluation", "unused", tmp_path / "lin", train_feeder_args=train, test_feeder_args=data,
                    model_args=dict(num_class=2), num_epoch=1, **overrides)
    with pytest.raises(ConfigError) as info:
        cls(cfg)
    assert str(info.value) == (f"batch_size {overrides['batch_size']} is larger than the {clips} training clips of "
                               f"{data['data_path']}: lower batch_size")


def test_each_protocol_has_its_folder_beside_the_weights_or_under_its_data_without():
    def folder(name, **cfg):
        cls, cfg = configure(name, cfg)
        return cls.default_work_dir(cfg)
    run, weights = os.path.abspath("runs/a"), "runs/a/epoch80_model.pt"
    assert folder("linear_evaluation", weights=weights) == f"{run}/linear"
    assert folder("knn_evaluation", weights=weights) == f"{run}/knn"
    assert folder("finetune_evaluation", weights=weights) == f"{run}/finetune"
    for fraction, suffix in ((0.01, "1pct"), (0.1, "10pct")):
        assert folder("finetune_evaluation", weights=weights, train_feeder_args=dict(label_fraction=fraction)) == \
            f"{run}/finetune_{suffix}_labels"
    # The README's two commands on one run: before, the probe was refused (or, with --overwrite, replaced
    # the paper protocol's result) because both wrote <run>/linear.
    assert folder("linear_evaluation", weights=weights, feature_norm=True) == f"{run}/probe"
    # A shipped file: never into the repository's weights/ (before: weights/linear, not git-ignored).
    shipped = os.path.join(SHIPPED_WEIGHTS, "ucla_xview_small_skelemixclr_plus.pt")
    assert folder("linear_evaluation", weights=shipped) == "work_dir/ucla_xview_small_skelemixclr_plus/linear"
    assert folder("knn_evaluation", weights=shipped) == "work_dir/ucla_xview_small_skelemixclr_plus/knn"
    val = dict(data_path="./data/ucla_frame32/xview/val_position.npy")
    assert folder("linear_evaluation", test_feeder_args=val) == "work_dir/ucla_frame32_xview/random_init/linear"
    assert folder("linear_evaluation", test_feeder_args=val, model="net.raw_joints.Model") == \
        "work_dir/ucla_frame32_xview/raw_joints/linear"


def test_cached_features_match_full_path(demo_arrays, tiny, tmp_path):
    accs, classifiers = [], []
    for cache in (True, False):
        cls, cfg = tiny("linear_evaluation", demo_arrays, tmp_path / str(cache), num_epoch=4, step=[3],
                        eval_interval=4, cache_features=cache, grad_clip=1.0, model_args=dict(num_class=12))
        proc = cls(cfg)
        proc.start()
        assert (proc.cached is not None) == cache  # the path taken
        accs.append(proc.history[-1]["top1"])
        classifiers.append(proc.raw_model.fc.weight.detach().clone())
        n_val = len(proc.val_loader.dataset)
    assert abs(accs[0] - accs[1]) <= 100 / n_val + 1e-9   # within one clip
    # Same optimiser, schedule, clipping and batch order: the same classifier up to summation order.
    torch.testing.assert_close(classifiers[0], classifiers[1], rtol=1e-3, atol=1e-4)
    assert not (tmp_path / "True" / "labelled_subset.txt").exists()  # all labels: no subset file


def test_final_result_without_periodic_evaluation(demo_arrays, tiny, tmp_path):
    cls, cfg = tiny("linear_evaluation", demo_arrays, tmp_path, num_epoch=2, eval_interval=0,
                    model_args=dict(num_class=12))
    cls(cfg).start()
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["final"]["epoch"] == 2 and [h["epoch"] for h in result["history"]] == [2]


@pytest.mark.parametrize("device_augment", [False, True])
def test_augmented_linear_evaluation_runs_the_encoder_every_step(demo_arrays, tiny, tmp_path, device_augment):
    cls, cfg = tiny("linear_evaluation", demo_arrays, tmp_path, num_epoch=2, eval_interval=2, augment=True,
                    device_augment=device_augment, model_args=dict(num_class=12))
    proc = cls(cfg)
    records, prepare = [], proc.prepare

    def recording_prepare(batch):  # the encoder's input of every training step, by clip index
        x, y = prepare(batch)
        records.append(dict(zip(batch[2].tolist(), x)))
        return x, y

    proc.prepare = recording_prepare
    proc.start()
    assert proc.cached is None  # cache_features (the default) falls back by itself
    dataset = proc.train_loader.dataset
    assert dataset.views == 1 and dataset.augment is not device_augment
    per_epoch = len(records) // 2
    epochs = [{i: x for r in records[e * per_epoch:(e + 1) * per_epoch] for i, x in r.items()} for e in (0, 1)]
    both = sorted(set(epochs[0]) & set(epochs[1]))[:5]
    assert both
    for i in both:  # cropped and sheared, anew every epoch
        stored = torch.from_numpy(np.array(dataset.data[dataset.indices[i]], dtype=np.float32))
        assert epochs[0][i].shape == stored.shape
        assert not torch.allclose(epochs[0][i], stored) and not torch.allclose(epochs[0][i], epochs[1][i])
    assert "no feature cache" in (tmp_path / "log.txt").read_text()


def moco_state(prefix=""):
    torch.manual_seed(0)
    model = moco(**ENC, feature_dim=8, queue_size=8, head="mlp_bn")
    return model, {prefix + k: v for k, v in model.state_dict().items()}


@pytest.mark.parametrize("wrap", [OrderedDict, lambda s: {"model": s}])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_checkpoints_of_ours_and_of_the_original_release_load(tmp_path, wrap, prefix):
    moco, state = moco_state(prefix)
    torch.save(wrap(state), tmp_path / "ckpt.pt")
    model = classifier(**ENC, num_class=5)
    loaded, ignored, missing = load_encoder(model, str(tmp_path / "ckpt.pt"),
                                            ["encoder_q.fc", "encoder_k", "queue"])
    assert missing == ["fc.bias", "fc.weight"]
    assert any(k.startswith("encoder_k.") for k in ignored) and "queue" in ignored
    for k, v in moco.encoder_q.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(model.state_dict()[k], v), k


def test_bad_checkpoints_fail_clearly(tmp_path):
    _, state = moco_state()
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(ConfigError, match="unexpected.*fc.0.weight"):
        load_encoder(classifier(**ENC), str(tmp_path / "ckpt.pt"), ["encoder_k", "queue"])
    state["encoder_q.data_bn.weight"] = torch.ones(3)
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(ConfigError, match=r"data_bn.weight has shape \(3,\), the model expects \(75,\)"):
        load_encoder(classifier(**ENC), str(tmp_path / "ckpt.pt"), ["encoder_q.fc", "encoder_k", "queue"])
    torch.save({"encoder_q.fc.weight": torch.zeros(1)}, tmp_path / "empty.pt")
    with pytest.raises(ConfigError, match="does not hold this encoder: missing"):
        load_encoder(classifier(**ENC), str(tmp_path / "empty.pt"), ["encoder_q.fc"])
    with pytest.raises(ConfigError, match="weights file not found: nope.pt"):
        load_encoder(classifier(**ENC), "nope.pt")


def test_evaluation_takes_the_encoders_shape_from_the_checkpoint_and_refuses_another(tiny, tmp_path):
    """hidden_channels / hidden_dim of the pretraining config the checkpoint carries: a config may leave
    them out (the layer widths follow the checkpoint) or repeat them, not name others."""
    data = toy_dataset(tmp_path)
    moco, state = moco_state()
    torch.save({"model": state, "config": {"model_args": dict(ENC, feature_dim=8, head="mlp_bn")}},
               tmp_path / "ckpt.pt")
    cls, cfg = tiny("linear_evaluation", "unused", tmp_path / "lin", train_feeder_args=data, test_feeder_args=data,
                    weights=str(tmp_path / "ckpt.pt"), model_args=dict(num_class=2))
    del cfg["encoder"]["hidden_channels"], cfg["encoder"]["hidden_dim"]
    proc = cls(cfg)
    assert proc.raw_model.fc.in_features == 16 and proc.cfg["encoder"]["hidden_channels"] == 4
    torch.testing.assert_close(proc.raw_model.encoder.data_bn.weight, moco.encoder_q.encoder.data_bn.weight)
    cfg = dict(cfg, work_dir=str(tmp_path / "other"), encoder=dict(hidden_dim=32))
    with pytest.raises(ConfigError, match=r"encoder.hidden_dim 32 differs from 16 in the config of .*ckpt.pt"):
        cls(cfg)


def test_null_leaves_out_a_width_a_base_config_sets(tmp_path):
    """config/small/linear.yaml sets encoder.hidden_channels 8; a child's `hidden_channels: null` takes the
    checkpoint's 4 (before: refused as 'None differs from 4'); the checkpoint's config in the release's flat form."""
    data = toy_dataset(tmp_path)
    _, state = moco_state()
    torch.save({"model": state, "config": {"model_args": dict(ENC, feature_dim=8, head="mlp_bn")}},
               tmp_path / "ckpt.pt")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "child.yaml").write_text(
        f"_base_: {root}/config/small/linear.yaml\nencoder: {{hidden_channels: null, hidden_dim: null}}\n"
        f"model_args: {{num_class: 2}}\ntrain_feeder_args: {data}\ntest_feeder_args: {data}\n")
    cls, cfg = configure("linear_evaluation", load_yaml(str(tmp_path / "child.yaml")),
                         dict(weights=str(tmp_path / "ckpt.pt"), work_dir=str(tmp_path / "lin"), batch_size=8))
    proc = cls(cfg)
    assert proc.cfg["encoder"]["hidden_channels"] == 4 and proc.raw_model.fc.in_features == 16


def test_a_linear_run_keeps_its_last_and_best_checkpoints_only(tiny, tmp_path, monkeypatch):
    data = toy_dataset(tmp_path)
    tops = iter([50.0, 90.0, 60.0, 70.0])  # best at epoch 2
    evaluate = processor.evaluation.Classification.evaluate

    def scripted(self, epoch):
        out = evaluate(self, epoch)
        self.history[-1]["top1"] = next(tops)
        self.best = max(self.history, key=lambda h: h["top1"])
        return out
    monkeypatch.setattr(processor.evaluation.Classification, "evaluate", scripted)
    linear(tiny, tmp_path, data, num_epoch=4, eval_interval=1, save_interval=1, batch_size=8).start()
    assert sorted(f for f in os.listdir(tmp_path / "lin") if f.endswith(".pt")) == ["eval_epoch2.pt",
                                                                                   "eval_epoch4.pt"]
    tops = iter([50.0, 90.0, 60.0, 70.0])
    cls, cfg = tiny("linear_evaluation", "unused", tmp_path / "all", train_feeder_args=data, test_feeder_args=data,
                    model_args=dict(num_class=2), num_epoch=4, eval_interval=1, save_interval=1, batch_size=8,
                    keep_checkpoints=True)
    cls(cfg).start()
    assert {f"eval_epoch{i}.pt" for i in range(1, 5)} <= set(os.listdir(tmp_path / "all"))


def test_semi_supervised_writes_its_subset(demo_arrays, tiny, tmp_path):
    cls, cfg = tiny("finetune_evaluation", demo_arrays, tmp_path, num_epoch=1, eval_interval=1,
                    train_feeder_args=dict(label_fraction=0.5), batch_size=4, model_args=dict(num_class=12))
    proc = cls(cfg)
    proc.start()
    names = (tmp_path / "labelled_subset.txt").read_text().split()
    with open(f"{demo_arrays}/train_label.pkl", "rb") as f:
        all_names, labels = pickle.load(f)
    counts = np.bincount(labels)
    assert len(names) == sum(round(0.5 * c) for c in counts) and set(names) <= set(all_names)
    assert json.loads((tmp_path / "result.json").read_text())["final"]["epoch"] == 1


def test_knn_evaluation_runs_standalone(demo_arrays, tiny, tmp_path):
    cls, cfg = tiny("knn_evaluation", demo_arrays, tmp_path, knn_k=[1, 3], model_args=dict(num_class=12))
    accs = cls(cfg).start()
    assert set(accs) == {"top1_k1", "top1_k3"}
    assert json.loads((tmp_path / "knn.json").read_text())["top1_k1"] == accs["top1_k1"]


def test_ensemble_fusion_by_hand(tmp_path):
    a = {"x": np.array([2.0, 0.0, 0.0]), "y": np.array([0.0, 1.0, 0.0])}
    b = {"x": np.array([0.0, 3.0, 0.0]), "y": np.array([0.0, 0.0, 2.0])}
    fused = ensemble.fuse([a, b])
    sm = lambda v: np.exp(v) / np.exp(v).sum()  # noqa: E731
    assert np.allclose(fused["x"], sm(a["x"]) + sm(b["x"])) and np.allclose(fused["y"], sm(a["y"]) + sm(b["y"]))
    assert fused["x"].argmax() == 1                      # 3 beats 2 after softmax
    raw = ensemble.fuse([a, b], weights=[2, 1], use_softmax=False)
    assert np.allclose(raw["x"], [4.0, 3.0, 0.0])
    for name, s in (("a", a), ("b", b)):
        with open(tmp_path / f"{name}.pkl", "wb") as f:
            pickle.dump(s, f)
    with open(tmp_path / "label.pkl", "wb") as f:
        pickle.dump((["x", "y"], [1, 2]), f)
    files = [str(tmp_path / f) for f in ("a.pkl", "b.pkl", "label.pkl")]
    top1, top5 = ensemble.main([files[0], files[1], "--label", files[2]])
    assert (top1, top5) == (1.0, 1.0)


def test_ensemble_refuses_foreign_mismatched_and_non_finite_scores(tmp_path):
    def scores(name, values):
        with open(tmp_path / name, "wb") as f:
            pickle.dump({"x": np.array(values[0]), "y": np.array(values[1])}, f)
        return str(tmp_path / name)

    good = scores("good.pkl", [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    (tmp_path / "result.json").write_text('{"final": {"top1": 50.0}}')
    with open(tmp_path / "label.pkl", "wb") as f:
        pickle.dump((["x", "y"], [0, 1]), f)
    label = ["--label", str(tmp_path / "label.pkl")]
    cases = [([good, str(tmp_path / "result.json")], f"{tmp_path / 'result.json'}: not a scores pickle"),
             ([good, scores("four.pkl", [[1.0, 0, 0, 0], [0, 1.0, 0, 0]])],
              f"different numbers of classes: {good} 3, {tmp_path / 'four.pkl'} 4"),
             ([good, scores("nan.pkl", [[1.0, 0, 0], [np.nan, 1.0, 0]])],
              f"{tmp_path / 'nan.pkl'}: the scores of 1 clips hold NaN or inf, e.g. y"),
             ([good, good, "--label", str(tmp_path / "result.json")], "result.json: not a gendata label pickle")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as info:
            ensemble.main(argv + (label if "--label" not in argv else []))
        assert str(info.value).startswith("error: ") and message in str(info.value) and "\n" not in str(info.value)


def test_knn_features_head_or_pooled_of_the_checkpoints_query_encoder(demo_arrays, tiny, tmp_path):
    torch.manual_seed(0)
    args = dict(ENC, feature_dim=8, queue_size=8, head="mlp_bn")
    pretrained = moco(**args).eval()
    torch.save({"model": pretrained.state_dict(), "config": {"model_args": args}}, tmp_path / "ckpt.pt")
    for features, width in (("head", 8), ("pooled", 16)):
        cls, cfg = tiny("knn_evaluation", demo_arrays, tmp_path / features, knn_k=[1], knn_features=features,
                        weights=str(tmp_path / "ckpt.pt"), model_args=dict(num_class=12))
        proc = cls(cfg)
        assert proc.optimizer is None  # nothing trains
        x = next(iter(proc.val_loader))[0].float()
        with torch.no_grad():
            out = proc.raw_model.eval()(x, return_features=features == "pooled")
            expected = pretrained.encoder_q(x, return_features=features == "pooled")
        assert out.shape == (len(x), width)
        torch.testing.assert_close(out, expected)
        accs = proc.start()
        written = json.loads((tmp_path / features / "knn.json").read_text())
        assert written["knn_features"] == features and written["top1_k1"] == accs["top1_k1"]


def test_knn_monitor_reads_the_projection_heads_output(demo_arrays, tiny, tmp_path):
    cls, cfg = tiny("pretrain_skeletonclr", demo_arrays, tmp_path, num_epoch=1, eval_interval=1, knn_k=[1],
                    model_args=dict(queue_size=32))
    proc = cls(cfg)
    calls, encode = [], proc.encode
    proc.encode = lambda encoder, loader, pooled: calls.append((encoder, pooled)) or encode(encoder, loader, pooled)
    assert set(proc.evaluate(0)) == {"knn/top1_k1"}
    assert calls == [(proc.raw_model.encoder_q, False)] * 2  # the bank and the val clips, after the head


def test_normalised_probe_standardises_the_classifiers_input(demo_arrays, tiny, tmp_path):
    """feature_norm: fc sees features with the training clips' mean 0 and variance 1, on every path."""
    cls, cfg = tiny("linear_evaluation", demo_arrays, tmp_path, num_epoch=1, feature_norm=True,
                    model_args=dict(num_class=12))
    proc = cls(cfg)
    proc.start()
    feats, _ = proc.encode(proc.raw_model, proc.ordered_train_loader, pooled=True)
    seen = []
    hook = proc.raw_model.fc.register_forward_hook(lambda _, args, out: seen.append(args[0]))
    proc.encode(proc.raw_model, proc.ordered_train_loader, pooled=False)  # the encoder's own fc call
    hook.remove()
    expected = (feats - feats.mean(0)) / torch.sqrt(feats.var(0, correction=0) + 1e-6)
    torch.testing.assert_close(torch.cat(seen), expected, rtol=1e-4, atol=1e-4)
    assert abs(float(torch.cat(seen).mean())) < 1e-4
    # the checkpoint's keys are those of the paper protocol: the statistics are measured, not stored
    state = torch.load(tmp_path / "eval_epoch1.pt", weights_only=False)["model"]
    assert not any("norm" in k and k.startswith("fc") for k in state)


def test_a_resumed_evaluation_keeps_its_history_and_best(tiny, tmp_path):
    data = toy_dataset(tmp_path)
    args = dict(num_epoch=3, eval_interval=1, save_interval=1, batch_size=8)
    linear(tiny, tmp_path, data, **dict(args, num_epoch=2)).start()
    linear(tiny, tmp_path, data, **args, resume=str(tmp_path / "lin" / "eval_epoch2.pt")).start()
    result = json.loads((tmp_path / "lin" / "result.json").read_text())
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    assert result["best_on_val"] == max(result["history"], key=lambda h: h["top1"])


def test_scores_pkl_holds_every_counted_clip_under_its_own_name(tiny, tmp_path):
    data = toy_dataset(tmp_path, n=24)
    with open(tmp_path / "y.pkl", "wb") as f:  # repeated names: two recordings named alike
        pickle.dump(([f"clip{i % 20}" for i in range(24)], (np.arange(24) % 2).tolist()), f)
    val = dict(data, label_fraction=0.5)  # a labelled subset of the validation clips
    cls, cfg = tiny("linear_evaluation", "unused", tmp_path / "lin", train_feeder_args=data, test_feeder_args=val,
                    model_args=dict(num_class=2), num_epoch=1, batch_size=8)
    cls(cfg).start()
    with open(tmp_path / "lin" / "scores.pkl", "rb") as f:
        scores = pickle.load(f)
    result = json.loads((tmp_path / "lin" / "result.json").read_text())
    assert len(scores) == sum(map(sum, result["confusion"])) == 12
    from feeder.feeder import Feeder
    subset = Feeder(**val).subset_names()
    assert [n.split("#")[0] for n in scores] == subset and len(set(scores)) == 12


@pytest.mark.parametrize("config", [[1], {"model_args": [1]}, "text"])
def test_a_checkpoint_with_a_crafted_config_loads_as_one_without(tiny, tmp_path, config):
    """Before: AttributeError ('list' object has no attribute 'get') from linear and kNN evaluation."""
    data = toy_dataset(tmp_path)
    moco, state = moco_state()
    torch.save({"model": state, "config": config}, tmp_path / "ckpt.pt")
    for name, extra in (("linear_evaluation", {}), ("knn_evaluation", dict(knn_k=[1]))):
        cls, cfg = tiny(name, "unused", tmp_path / name, train_feeder_args=data, test_feeder_args=data,
                        weights=str(tmp_path / "ckpt.pt"), model_args=dict(ENC, num_class=2), **extra)
        proc = cls(cfg)
        torch.testing.assert_close(proc.raw_model.encoder.data_bn.weight, moco.encoder_q.encoder.data_bn.weight)
