"""tools/skelemix_picture.py and tools/feature_picture.py: what is highlighted, the PCA fallback, the PNGs."""
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from flat import moco

from feeder.feeder import Feeder
from tools import feature_picture, skelemix_picture

TINY = "{hidden_channels: 4, hidden_dim: 16, dropout: 0.0}"


def parts(data):
    return [f"{data}/val_position.npy", f"{data}/val_label.pkl"]


def png_shape(path):
    """(height, width) of a PNG file, after checking its magic bytes."""
    image = pytest.importorskip("matplotlib.image")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return image.imread(path).shape[:2]


# --- feature picture: the PCA fallback ------------------------------------------------------------

def test_pca_variance_is_the_top_two_covariance_eigenvalues_and_clusters_stay_apart(monkeypatch):
    monkeypatch.setattr(feature_picture, "has_sklearn", lambda: False)  # 'auto' must fall back to PCA
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (3, 12))
    labels = np.repeat(np.arange(3), 50)
    x = centres[labels] + rng.normal(0, 1, (150, 12)) * np.linspace(0.5, 1.5, 12)
    points = feature_picture.embed_2d(x, "auto")
    assert points.shape == (150, 2)
    top2 = np.linalg.eigh(np.cov(x, rowvar=False))[0][::-1][:2]
    np.testing.assert_allclose(np.cov(points, rowvar=False), np.diag(top2), atol=1e-8 * top2[0])
    centroids = np.stack([points[labels == k].mean(0) for k in range(3)])
    nearest = np.linalg.norm(points[:, None] - centroids[None], axis=-1).argmin(1)
    assert (nearest == labels).all()


def test_tsne_without_scikit_learn_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(feature_picture, "has_sklearn", lambda: False)
    with pytest.raises(ValueError, match="scikit-learn"):
        feature_picture.embed_2d(np.zeros((5, 3)), "tsne")
    with pytest.raises(ValueError, match="unknown method 'umap'"):
        feature_picture.embed_2d(np.zeros((5, 3)), "umap")


# --- SkeleMix picture: what is highlighted --------------------------------------------------------

def test_highlight_is_the_mask_expanded_over_the_stride():
    mask = torch.zeros(4, 25, dtype=torch.bool)
    mask[1:3, [0, 4, 7]] = True
    expected = np.zeros((18, 25), dtype=bool)  # 18 frames: the last two are beyond the 4 steps of 4
    for step in (1, 2):
        for frame in range(4 * step, 4 * step + 4):
            expected[frame, [0, 4, 7]] = True
    np.testing.assert_array_equal(skelemix_picture.highlight(mask, 4, 18), expected)
    np.testing.assert_array_equal(skelemix_picture.highlight(mask, 4, 12), expected[:12])


@pytest.mark.parametrize("mode", ["gaussian", "swap"])
def test_highlighted_joints_and_frames_are_the_mixed_ones(demo_arrays, mode):
    feeder = Feeder(f"{demo_arrays}/train_position.npy", f"{demo_arrays}/train_label.pkl")
    ids, x, mixed, mask, partner = skelemix_picture.mix_batch(feeder, 5, 8, (2, 3), (1, 2), mode,
                                                              "ntu-rgb+d", 4, seed=1)
    assert ids == list(range(5, 13)) and mask.shape == (4, 25)
    lit = skelemix_picture.highlight(mask, 4, x.shape[2])
    np.testing.assert_array_equal(lit, np.repeat(mask.numpy(), 4, axis=0))
    changed = (mixed[0] != x[0]).any(0).any(-1).numpy()  # (T, V): where sample 0 was altered
    if mode == "gaussian":  # noise differs from the clip everywhere in the region
        np.testing.assert_array_equal(changed, lit)
    else:
        assert not (changed & ~lit).any() and changed.any()
        region = torch.from_numpy(lit)[None, :, :, None].expand_as(x[0])
        torch.testing.assert_close(mixed[0][region], x[int(partner[0])][region])


# --- both tools end to end ------------------------------------------------------------------------

def test_skelemix_picture_writes_a_png(demo_arrays, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "skelemix.png"
    skelemix_picture.main(["--data_path", parts(demo_arrays)[0], "--label_path", parts(demo_arrays)[1],
                           "--index", "3", "--tem", "1", "2", "--frames", "4", "--out", str(out)])
    height, width = png_shape(out)
    assert width == 2 * 4 * 100 and height > 300
    assert "wrote" in capsys.readouterr().out


def test_feature_picture_writes_a_png_with_and_without_weights(demo_arrays, tmp_path):
    pytest.importorskip("matplotlib")
    ckpt = tmp_path / "pretrained.pt"
    torch.save({"model": moco(hidden_channels=4, hidden_dim=16, dropout=0.0, queue_size=32).state_dict()}, ckpt)
    for weights in ([], ["--weights", str(ckpt)]):
        out = tmp_path / f"features{len(weights)}.png"
        feature_picture.main(["--data_path", parts(demo_arrays)[0], "--label_path", parts(demo_arrays)[1],
                              "--encoder", TINY, "--stream", "bone", "--max_clips", "30", "--method", "pca",
                              "--out", str(out), *weights])
        assert png_shape(out) == (660, 825)


def test_skelemix_picture_takes_the_layout_from_the_arrays_manifest(demo_arrays, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    data, label = parts(demo_arrays)
    assert skelemix_picture.recorded_layout(data) == "ntu-rgb+d"  # preprocessing recorded it
    assert json.loads(open(f"{demo_arrays}/manifest.json").read())["layout"] == "ntu-rgb+d"
    np.save(tmp_path / "val_position.npy", np.load(data)[:12, :, :, :20])  # 20 joints: a Kinect v1 array
    with open(label, "rb") as f:
        names, labels = pickle.load(f)
    with open(tmp_path / "val_label.pkl", "wb") as f:
        pickle.dump((names[:12], labels[:12]), f)
    (tmp_path / "manifest.json").write_text(json.dumps(dict(frames=16, layout="kinect-v1")))
    out = tmp_path / "skelemix.png"
    skelemix_picture.main(["--data_path", str(tmp_path / "val_position.npy"), "--label_path",
                           str(tmp_path / "val_label.pkl"), "--tem", "1", "2", "--frames", "2", "--out", str(out)])
    assert f"wrote {out} (kinect-v1 layout)" in capsys.readouterr().out
    (tmp_path / "manifest.json").unlink()  # no manifest: the default layout, whose 25 joints this array lacks
    assert skelemix_picture.recorded_layout(str(tmp_path / "val_position.npy")) == "ntu-rgb+d"
    with pytest.raises(SystemExit, match="expected shape"):
        skelemix_picture.main(["--data_path", str(tmp_path / "val_position.npy"), "--label_path",
                               str(tmp_path / "val_label.pkl"), "--out", str(out)])


def test_feature_picture_takes_model_args_and_stream_from_the_checkpoints_config(demo_arrays, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model_args = dict(hidden_channels=4, hidden_dim=16, dropout=0.0, queue_size=32, head="mlp_bn",
                      swap_params=[[2, 3, 7, 11, 1, 1.0]])  # a pretraining run's: MoCo's arguments too
    ckpt = tmp_path / "epoch1_model.pt"
    torch.save({"model": moco(**model_args).state_dict(), "config": dict(model_args=model_args, stream="motion")},
               ckpt)
    out = tmp_path / "features.png"
    feature_picture.main(["--data_path", parts(demo_arrays)[0], "--label_path", parts(demo_arrays)[1],
                          "--weights", str(ckpt), "--max_clips", "20", "--method", "pca", "--out", str(out)])
    assert capsys.readouterr().out.strip().endswith(
        "motion stream, encoder {'hidden_channels': 4, 'hidden_dim': 16, 'dropout': 0.0}")
    with pytest.raises(SystemExit, match="does not hold this encoder"):  # --model_args wins over the checkpoint
        feature_picture.main(["--data_path", parts(demo_arrays)[0], "--label_path", parts(demo_arrays)[1],
                              "--weights", str(ckpt), "--model_args", "{hidden_channels: 4}", "--out", str(out)])


def test_missing_data_file_is_a_one_line_error_naming_it(demo_arrays, tmp_path):
    label = parts(demo_arrays)[1]
    for tool in (skelemix_picture, feature_picture):
        missing = str(tmp_path / "nowhere_position.npy")
        with pytest.raises(SystemExit) as info:
            tool.main(["--data_path", missing, "--label_path", label, "--out", str(tmp_path / "x.png")])
        message = str(info.value)
        assert message.startswith("error:") and missing in message and "\n" not in message
        assert not os.path.exists(tmp_path / "x.png")


def test_missing_matplotlib_is_a_one_line_error(monkeypatch, tmp_path):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` now raises ImportError
    with pytest.raises(SystemExit, match="^error: matplotlib is needed for pictures: pip install matplotlib$"):
        feature_picture.plot(np.zeros((3, 2)), np.arange(3), "t", str(tmp_path / "x.png"))
    with pytest.raises(SystemExit, match="matplotlib is needed"):
        skelemix_picture.draw([np.zeros((3, 4, 25, 1))], ["clip"], [(0, 1)], np.zeros((4, 25), bool),
                              str(tmp_path / "x.png"))


def test_a_crafted_checkpoint_config_gives_no_encoder_args():
    """Before: model_args that are no mapping (a crafted file) were an AttributeError in the tools."""
    from types import SimpleNamespace

    from tools.feature_picture import encoder_and_layout
    none = SimpleNamespace(encoder=None, model_args=None)
    assert encoder_and_layout(none, {"model_args": [1]}) == ({}, "ntu-rgb+d")
    assert encoder_and_layout(none, {"model_args": {"hidden_dim": 8, "num_class": 3, "queue_size": 4}}) == \
        ({"hidden_dim": 8}, "ntu-rgb+d")
