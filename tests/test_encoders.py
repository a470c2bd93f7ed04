"""The encoder contract (net/encoders.py) and methods from parts: a toy encoder and a toy mix, defined in this
file alone and registered by a test-only registry entry, pretrain and evaluate through `main.py`."""
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

import main
from net import encoders, methods
from net.encoders import Classifier, Network, build_encoder, pool
from net.losses import info_nce


class ToyEncoder(nn.Module):
    """A contract encoder in a few lines: a 1x1 convolution, BatchNorm, ReLU and a temporal mean over pairs."""

    def __init__(self, in_channels=3, width=8):
        super().__init__()
        self.out_channels, self.temporal_stride = width, 2
        self.conv = nn.Conv2d(in_channels, width, 1)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x):
        n, c, t, v, m = x.shape
        y = torch.relu(self.bn(self.conv(x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v))))
        y = F.avg_pool2d(y, (2, 1))
        return y.view(n, m, *y.shape[1:])


def official_state_dict(state):
    """The toy's 'official' format: its keys under `backbone.`, and a classifier `head.` the encoder drops."""
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


class ReverseMix:
    """A toy mix: the query clip played backwards must still match its key (one InfoNCE per draw)."""

    def __init__(self, weight=1.0, temporal_stride=None):
        self.weight, self.temporal_stride = weight, temporal_stride

    def draw(self, x, generator=None):
        return [(x.flip(2), None)]

    def pool(self, fmap, context):
        return (pool(fmap),)

    def losses(self, features, context, k, queue, temperature):
        return info_nce(F.normalize(features[0], dim=1), k, queue, temperature)

    def chance(self, queue_size):
        return math.log(queue_size + 1)


@pytest.fixture
def registered(monkeypatch):
    """The toy encoder and mix registered for this test only (one registry line each)."""
    monkeypatch.setitem(encoders.ENCODERS, "toy", ToyEncoder)
    monkeypatch.setitem(methods.MIXES, "reverse", ReverseMix)


def test_pool_is_the_mean_over_time_joints_then_bodies():
    fmap = torch.randn(3, 2, 5, 4, 7)
    expected = torch.stack([torch.stack([fmap[n, m].reshape(5, -1).mean(1) for m in range(2)]).mean(0)
                            for n in range(3)])
    torch.testing.assert_close(pool(fmap), expected)


def test_network_keeps_the_encoders_own_keys_beside_fc(registered):
    network = Network(build_encoder({"name": "toy"}), nn.Linear(8, 4))
    assert sorted(network.state_dict()) == sorted(["conv.weight", "conv.bias", "bn.weight", "bn.bias",
                                                   "bn.running_mean", "bn.running_var", "bn.num_batches_tracked",
                                                   "fc.weight", "fc.bias"])
    other = Network(build_encoder({"name": "toy"}), nn.Linear(8, 4))
    other.load_state_dict(network.state_dict(), strict=True)
    assert torch.equal(other.encoder.conv.weight, network.encoder.conv.weight)


def test_unknown_encoder_and_bad_argument_are_one_line_errors(registered):
    with pytest.raises(ValueError, match=r"unknown encoder 'nope'; registered: st_gcn, ctrgcn, mamp, toy"):
        build_encoder({"name": "nope"})
    with pytest.raises(ValueError, match=r"encoder ToyEncoder: .*unexpected keyword argument 'depth'"):
        build_encoder({"name": "toy", "depth": 3})


def test_a_toy_encoder_with_skelemix_and_a_toy_mix_pretrains_and_evaluates_through_main(registered, demo_arrays,
                                                                                           tmp_path):
    """SkeleMixCLR+ on the toy encoder (SkeleMix reads its temporal stride 2) plus the toy mix as a second
    query view; then linear evaluation and kNN of its checkpoint, which carries the encoder's name."""
    data = {p: dict(data_path=f"{demo_arrays}/{p}_position.npy", label_path=f"{demo_arrays}/{p}_label.pkl")
            for p in ("train", "val")}
    common = dict(batch_size=16, test_batch_size=32, num_workers=0, progress=False, eval_interval=0,
                  train_feeder_args=dict(data["train"], frames=16), test_feeder_args=data["val"])
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump(dict(common, method="skelemixclr_plus", num_epoch=1, encoder=dict(name="toy"),
                                          model_args=dict(queue_size=32, mixes=[dict(name="reverse")]))))
    main.main(["pretrain", "--config", str(config), "--work_dir", str(tmp_path / "pre")])
    checkpoint = tmp_path / "pre" / "epoch1_model.pt"
    state = torch.load(checkpoint, weights_only=False)
    assert state["config"]["encoder"] == {"name": "toy"} and "encoder_q.conv.weight" in state["model"]
    log = (tmp_path / "pre" / "log.txt").read_text()
    assert "loss_mix" in log

    evaluation = tmp_path / "eval.yaml"
    evaluation.write_text(yaml.safe_dump(dict(common, model_args=dict(num_class=12))))
    main.main(["linear_evaluation", "--config", str(evaluation), "--weights", str(checkpoint), "--num_epoch", "2",
               "--work_dir", str(tmp_path / "linear")])
    result = json.loads((tmp_path / "linear" / "result.json").read_text())
    assert 0 <= result["final"]["top1"] <= 100
    loaded = json.loads((tmp_path / "linear" / "weights.json").read_text())["loaded"]
    assert "conv.weight" in loaded and "fc.weight" not in loaded
    main.main(["knn_evaluation", "--config", str(evaluation), "--weights", str(checkpoint), "--knn_k", "[1, 3]",
               "--work_dir", str(tmp_path / "knn")])
    assert set(json.loads((tmp_path / "knn" / "knn.json").read_text())) >= {"top1_k1", "top1_k3"}


def test_official_weights_load_through_the_encoder_files_hook(registered, tmp_path):
    """load_encoder renames an official state dict with the hook of the encoder's file and names what it dropped."""
    from net.weights import load_encoder
    source = Classifier({"name": "toy"}, num_class=5)
    official = {f"backbone.{k}": v for k, v in source.encoder.state_dict().items()}
    official["head.weight"] = torch.zeros(60, 8)
    torch.save(official, tmp_path / "official.pt")
    model = Classifier({"name": "toy"}, num_class=5)
    loaded, dropped, missing = load_encoder(model, str(tmp_path / "official.pt"))
    assert dropped == ["head.weight"] and missing == ["fc.bias", "fc.weight"] and "conv.weight" in loaded
    torch.testing.assert_close(model.encoder.conv.weight, source.encoder.conv.weight)
    official["backbone.conv.weight"] = torch.zeros(16, 3, 1, 1)
    torch.save(official, tmp_path / "wider.pt")
    with pytest.raises(ValueError, match=r"wider.pt: conv.weight has shape \(16, 3, 1, 1\), the model expects "
                                         r"\(8, 3, 1, 1\)$"):
        load_encoder(model, str(tmp_path / "wider.pt"))


def test_the_small_recipe_takes_another_encoder_by_changing_encoder_alone(registered, tmp_path):
    """Another `name` replaces the recipe's encoder (its ST-GCN widths do not leak into it), in a file built
    on the recipe and on the command line alike; the rest of the recipe stays."""
    from processor import configure
    from torchlight.config import load_yaml
    mine = tmp_path / "toy.yaml"
    mine.write_text(f"_base_: {__import__('os').path.abspath('config/small/skelemixclr_plus.yaml')}\n"
                    "encoder: {name: toy, width: 4}\n")
    _, from_file = configure("pretrain", load_yaml(str(mine)), source=str(mine))
    _, from_line = configure("pretrain", load_yaml("config/small/skelemixclr_plus.yaml"),
                             {"encoder": {"name": "toy", "width": 4}})
    _, dotted = configure("pretrain", load_yaml("config/small/skelemixclr_plus.yaml"),
                          {"encoder.name": "toy", "encoder.width": 4})
    assert from_file == from_line == dotted and from_file["encoder"] == {"name": "toy", "width": 4}
    assert from_file["model_args"]["queue_size"] == "auto" and from_file["num_steps"] == 1200
    model = methods.pretraining_model(from_file["encoder"], **{k: v for k, v in from_file["model_args"].items()
                                                              if k != "queue_size"})
    assert model.mixes[0].skelemix.temporal_stride == 2  # SkeleMix's grid is the toy's


@pytest.mark.parametrize("encoder, key", [
    ("{name: ctrgcn, base_channel: 8, num_person: 1}", "encoder_q.l10.gcn1.PA"),
    ("{name: mamp, dim_feat: 16, depth: 1, num_heads: 2, num_frames: 32}", "encoder_q.joints_embed.proj.weight")])
def test_the_small_recipe_pretrains_ctrgcn_and_mamp_through_main(encoder, key, demo_arrays, tmp_path):
    """The registered CTR-GCN and MAMP (tiny widths; CTR-GCN's narrowest with a relation channel is 8) on the small
    recipe, changed by `--encoder` alone: one epoch of SkeleMixCLR+ (SkeleMix on each encoder's (T / 4, V) grid),
    a checkpoint that carries the encoder."""
    import os
    config = tmp_path / "small.yaml"
    data = {f"{p}_feeder_args": dict(data_path=f"{demo_arrays}/{d}_position.npy",
                                     label_path=f"{demo_arrays}/{d}_label.pkl")
            for p, d in (("train", "train"), ("test", "val"))}
    config.write_text(f"_base_: {os.path.abspath('config/small/skelemixclr_plus.yaml')}\n" + yaml.safe_dump(data))
    main.main(["pretrain", "--config", str(config), "--encoder", encoder, "--num_steps", "null", "--num_epoch", "1",
               "--batch_size", "32", "--progress", "false", "--work_dir", str(tmp_path / "pre")])
    state = torch.load(tmp_path / "pre" / "epoch1_model.pt", weights_only=False)
    assert state["config"]["encoder"] == yaml.safe_load(encoder) and key in state["model"]
    assert state["config"]["num_steps"] is None and state["config"]["train_feeder_args"]["frames"] == 32
    assert "loss_mix" in (tmp_path / "pre" / "log.txt").read_text()
