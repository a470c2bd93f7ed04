"""tools/extract_features.py: the features linear evaluation trains its classifier on, in clip order."""
import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_run
from flat import moco

from net.encoders import pool
from processor import configure
from tools import extract_features


def pretrained(tmp_path):
    """A pretraining checkpoint of ours: a MoCo state dict with the (flat, as the release wrote it) config."""
    torch.manual_seed(0)
    args = dict(hidden_channels=4, hidden_dim=16, dropout=0.0, queue_size=32, head="mlp_bn")
    model = moco(**args)
    with torch.no_grad():  # running statistics away from 0 / 1, so that eval mode shows
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_()
    path = tmp_path / "pretrained.pt"
    torch.save({"model": model.state_dict(), "config": dict(model_args=args, stream="bone")}, path)
    return model, str(path)


def test_features_are_those_linear_evaluation_sees(demo_arrays, tmp_path):
    model, weights = pretrained(tmp_path)
    config = tmp_path / "linear.yaml"
    run = tiny_run(demo_arrays, tmp_path / "linear", model_args=dict(num_class=12), stream="bone",
                   train_feeder_args=dict(bodies=1), test_feeder_args=dict(bodies=1))
    run.pop("model_args")  # the encoder comes from the checkpoint's config
    run["model_args"] = dict(num_class=12)
    config.write_text(yaml.safe_dump(run))
    out = tmp_path / "features.npy"
    extract_features.main(["--config", str(config), "--weights", weights, "--batch_size", "7",
                           "--data_path", f"{demo_arrays}/train_position.npy", "--out", str(out)])
    features = np.load(out)

    cls, cfg = configure("linear_evaluation", dict(run, weights=weights))
    expected, _ = cls(cfg).training_features()  # what the classifier is trained on
    assert features.dtype == np.float32 and features.shape == tuple(expected.shape) == (len(features), 16)
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-5, atol=1e-6)

    # by hand: the pretrained query encoder in eval mode on the bone stream of the first body, mean-pooled
    from feeder.streams import to_stream
    clip = torch.from_numpy(np.load(f"{demo_arrays}/train_position.npy")[:3, ..., :1]).float()
    with torch.no_grad():
        by_hand = pool(model.encoder_q.encoder.eval()(to_stream(clip, "bone", "ntu-rgb+d")))
    np.testing.assert_allclose(features[:3], by_hand.numpy(), rtol=1e-5, atol=1e-6)


def test_a_wrong_array_is_a_one_line_error_and_writes_nothing(demo_arrays, tmp_path):
    _, weights = pretrained(tmp_path)
    config = tmp_path / "linear.yaml"
    config.write_text(yaml.safe_dump(dict(model_args=dict(num_class=12))))
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 16, 20, 1), dtype=np.float32))
    out = tmp_path / "features.npy"
    with pytest.raises(SystemExit, match=r"^error: .*wrong.npy: expected shape \(N, 3, T, 25, M\) for layout "
                                         r"'ntu-rgb\+d', got \(2, 3, 16, 20, 1\)$"):
        extract_features.main(["--config", str(config), "--weights", weights, "--data_path",
                               str(tmp_path / "wrong.npy"), "--out", str(out)])
    assert not out.exists()


# Official checkpoints of the two other encoders, in the shapes of their linear-evaluation configs: the official
# keys and shapes (tests/data/*_official_keys.json, classifier and decoder included), every tensor drawn.
OFFICIAL = {"ctrgcn": ("config/linear_eval/linear_eval_ctrgcn_ntu60_xsub.yaml", 64),
            "mamp": ("config/linear_eval/linear_eval_mamp_ntu60_xsub.yaml", 120)}


def official_checkpoint(name, path):
    """(the encoder's state dict, the file): CTR-GCN's a plain state dict with its classifier `fc.*`, MAMP's
    pretraining checkpoint `{'model': state_dict}` with its decoder and mask token."""
    import json

    from reference import seeded_state
    keys = json.load(open(f"tests/data/{name}_official_keys.json"))
    state = seeded_state(keys if name == "ctrgcn" else keys["pretrain"])
    torch.save(state if name == "ctrgcn" else {"model": state}, path)
    if name == "ctrgcn":
        return {k: v for k, v in state.items() if not k.startswith("fc.")}
    return {k: v for k, v in state.items() if not k.startswith(("decoder", "mask_token"))}


@pytest.mark.parametrize("name", OFFICIAL)
def test_an_official_checkpoint_gives_the_features_of_its_encoder(name, tmp_path):
    """Acceptance: an official CTR-GCN / MAMP file through the linear-evaluation config (full size), net/weights.py
    and tools/extract_features.py gives the pooled feature map (mean over M, T', V) of the encoder built here
    from the same tensors, to a relative 1e-4."""
    from net.ctrgcn import CTRGCN
    from net.mamp import MAMPTransformer
    config, frames = OFFICIAL[name]
    encoder_state = official_checkpoint(name, tmp_path / "official.pt")
    x = np.random.default_rng(0).normal(size=(3, 3, frames, 25, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "features.npy"
    extract_features.main(["--config", config, "--weights", str(tmp_path / "official.pt"), "--batch_size", "2",
                           "--data_path", str(tmp_path / "x.npy"), "--out", str(out)])
    features = np.load(out)

    encoder = CTRGCN(base_channel=64, num_person=2) if name == "ctrgcn" else \
        MAMPTransformer(dim_feat=256, depth=8, num_heads=8, num_frames=120)
    encoder.load_state_dict(encoder_state, strict=True)
    with torch.no_grad():
        expected = encoder.eval()(torch.from_numpy(x)).mean((1, 3, 4)).numpy()
    assert features.shape == expected.shape == (3, 256)
    scale = np.abs(expected).max()
    relative = np.abs(features - expected).max() / scale  # to the features' scale
    elementwise = (np.abs(features - expected) / np.maximum(np.abs(expected), 1e-6 * scale)).max()
    print(f"{name}: max relative difference {relative:.2e} (of the largest feature), {elementwise:.2e} (elementwise)")
    assert relative <= 1e-4 and elementwise <= 1e-4
