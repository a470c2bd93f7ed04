"""tools/pose_gendata.py (feeder/prepare/pose.py): PYSKL / MMAction2 annotations in, training arrays out."""
import json
import os
import pickle
import re

import numpy as np
import pytest

import main
from feeder.augment import augment_sample, temporal_resize
from feeder.feeder import read_labels
from feeder.prepare.pose import gendata
from feeder.prepare.pose import main as pose_main
from feeder.prepare.preprocess import preprocess_clip
from tools.extract_features import main as extract_main
from torchlight.io import read_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOSE, LEFT_HIP, LEFT_WRIST = 0, 11, 9


def coco_clip(rng, label, frames):
    """One body walking right (label 0) or left (label 1) in pixels; the nose fixed at (300, 100)."""
    x = rng.uniform(200, 400, (1, frames, 17, 2))
    x[..., 0] += (1 if label == 0 else -1) * 5.0 * np.arange(frames)[None, :, None]
    x[:, :, NOSE] = (300, 100)
    return x


def annotation(path, scores=None, n=(24, 12), frames=20, seed=0, **changes):
    """A PYSKL annotation pickle of COCO-17 2D clips, splits xsub_train / xsub_val; `scores(rng, shape)` gives
    keypoint_score (default all 1)."""
    rng, score_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    anns, split = [], {"xsub_train": [], "xsub_val": []}
    for i in range(sum(n)):
        name = f"clip{i:03d}"
        label = i % 2
        x = coco_clip(rng, label, frames)
        shape = x.shape[:3]
        score = np.ones(shape) if scores is None else scores(score_rng, shape)
        anns.append(dict(frame_dir=name, label=label, keypoint=x.astype(np.float32),
                         keypoint_score=score.astype(np.float32), total_frames=frames, img_shape=(480, 640)))
        split["xsub_train" if i < n[0] else "xsub_val"].append(name)
    content = {"split": split, "annotations": anns, **changes}
    with open(path, "wb") as f:
        pickle.dump(content, f)
    return content


def test_scores_never_change_x_and_y(tmp_path):
    """Done-when of the issue: x and y identical whether scores are all 1 or vary in [0.7, 1]; the score is
    channel 3 of its own, resized in time only."""
    annotation(tmp_path / "ones.pkl")
    varied = annotation(tmp_path / "varied.pkl", scores=lambda rng, shape: rng.uniform(0.7, 1.0, shape))
    gendata(str(tmp_path / "ones.pkl"), str(tmp_path / "a"), frames=16)
    gendata(str(tmp_path / "varied.pkl"), str(tmp_path / "b"), frames=16)
    for part in ("train", "val"):
        a = np.load(tmp_path / "a" / "xsub" / f"{part}_position.npy")
        b = np.load(tmp_path / "b" / "xsub" / f"{part}_position.npy")
        assert a.shape == (24 if part == "train" else 12, 3, 16, 17, 2)
        np.testing.assert_array_equal(a[:, :2], b[:, :2])
        np.testing.assert_allclose(a[:, 2, ..., 0], 1, rtol=1e-6)
    score = varied["annotations"][0]["keypoint_score"][0]  # (T, V)
    b = np.load(tmp_path / "b" / "xsub" / "train_position.npy")
    np.testing.assert_allclose(b[0, 2, :, :, 0], temporal_resize(score[None, :, :, None], 16)[0, ..., 0], rtol=1e-5)


def test_outputs_are_what_training_reads(tmp_path):
    annotation(tmp_path / "poses.pkl")
    report = gendata(str(tmp_path / "poses.pkl"), str(tmp_path / "out"), frames=16)
    folder = tmp_path / "out" / "xsub"
    assert sorted(os.listdir(folder)) == sorted(["manifest.json"] + [
        f"{p}_{k}" for p in ("train", "val") for k in ("position.npy", "motion.npy", "label.npy", "label.pkl")])
    assert read_manifest(str(folder)) == dict(frames=16, layout="coco", bodies=2, source="pose_gendata",
                                              scores="keep", parts=dict(train=24, val=12))
    names, labels = pickle.load(open(folder / "val_label.pkl", "rb"))
    assert names == [f"clip{i:03d}" for i in range(24, 36)] and labels == [i % 2 for i in range(24, 36)]
    np.testing.assert_array_equal(np.load(folder / "val_label.npy")[:, 0], labels)
    assert "layout coco, 2 classes (model_args.num_class), 16 frames" in report


def test_missing_keypoints_neither_shorten_nor_shift_a_clip():
    """A nose and a wrist at (0, 0) in some frames: the clip keeps its 20 frames, the centre of a frame
    without a nose is the nearest frame's, and a missing keypoint stays 0 instead of minus the centre."""
    x = coco_clip(np.random.default_rng(0), 0, 20)[0].transpose(2, 0, 1)[..., None]  # (2, T, V, 1)
    clip = np.concatenate([x, np.ones((1, *x.shape[1:]))])
    full, _ = preprocess_clip(clip, frames=20, layout="coco")
    holes = clip.copy()
    holes[:, 3:9, NOSE] = 0
    holes[:, 10, LEFT_WRIST] = 0
    position, _ = preprocess_clip(holes, frames=20, layout="coco")
    expected = clip[:2, :, LEFT_HIP, 0] - clip[:2, :, NOSE, 0]  # the nose never moves: filling it is exact
    np.testing.assert_allclose(position[:2, :, LEFT_HIP, 0], expected, rtol=1e-6)
    np.testing.assert_array_equal(position[:, 10, LEFT_WRIST, 0], 0)
    np.testing.assert_allclose(position[:2, 11:, LEFT_WRIST], full[:2, 11:, LEFT_WRIST], rtol=1e-6)


def test_a_missing_keypoint_is_zero_however_it_is_marked(tmp_path):
    """(0, 0) and a score below --min_score both mark a keypoint missing: x, y and score all 0."""
    def scores(rng, shape):
        s = np.ones(shape)
        s[0, 5, LEFT_WRIST] = 0.05
        return s
    content = annotation(tmp_path / "p.pkl", scores=scores, n=(2, 2), frames=16)
    content["annotations"][0]["keypoint"][0, 7, LEFT_WRIST] = 0
    with open(tmp_path / "p.pkl", "wb") as f:
        pickle.dump(content, f)
    gendata(str(tmp_path / "p.pkl"), str(tmp_path / "out"), frames=16)
    position = np.load(tmp_path / "out" / "xsub" / "train_position.npy")
    np.testing.assert_array_equal(position[0, :, [5, 7], LEFT_WRIST, 0], 0)
    assert (position[0, 2, [4, 6, 8], LEFT_WRIST, 0] == 1).all()


def test_2d_clips_are_never_view_aligned():
    """Old code read (x, y, score) as (x, y, z) and rotated x into 'depth'; a 2D clip only moves to its centre."""
    x = coco_clip(np.random.default_rng(1), 1, 12)[0].transpose(2, 0, 1)[..., None]
    clip = np.concatenate([x, np.random.default_rng(2).uniform(0.7, 1, (1, *x.shape[1:]))])
    position, _ = preprocess_clip(clip, frames=12, layout="coco")
    np.testing.assert_allclose(position[:2], clip[:2] - clip[:2, :, NOSE:NOSE + 1], rtol=1e-6)
    np.testing.assert_allclose(position[2], clip[2], rtol=1e-6)


def test_shear_gives_2d_clips_no_depth():
    """The shear of a 2D clip mixes x and y only: the score channel is the unsheared one, and x, y ignore it."""
    rng = np.random.default_rng(0)
    clip = rng.normal(0, 1, (3, 20, 17, 1))
    clip[2] = rng.uniform(0.7, 1, clip[2].shape)
    sheared = augment_sample(clip, np.random.default_rng(5), 16, shear_amplitude=0.5, dims=2)
    plain = augment_sample(clip, np.random.default_rng(5), 16, shear_amplitude=0.0, dims=2)
    np.testing.assert_allclose(sheared[2], plain[2])
    other = clip.copy()
    other[2] = 1
    np.testing.assert_allclose(augment_sample(other, np.random.default_rng(5), 16, dims=2)[:2], sheared[:2])
    assert not np.allclose(augment_sample(clip, np.random.default_rng(5), 16, dims=3)[2], plain[2])  # 3D: shears


def test_ntu_25_3d_clips_are_preprocessed_as_ntu(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.3, (2, 30, 25, 3)) + [0.1, 0.2, 3.0]
    content = {"split": {"train": ["a"], "val": ["b"]},
               "annotations": [dict(frame_dir=n, label=3, keypoint=x.astype(np.float32)) for n in "ab"]}
    with open(tmp_path / "ntu.pkl", "wb") as f:
        pickle.dump(content, f)
    gendata(str(tmp_path / "ntu.pkl"), str(tmp_path / "out"), frames=16)
    expected, _ = preprocess_clip(x.astype(np.float32).transpose(3, 1, 2, 0), 16, "ntu-rgb+d")
    np.testing.assert_allclose(np.load(tmp_path / "out" / "train_position.npy")[0], expected, rtol=1e-5)
    assert json.load(open(tmp_path / "out" / "manifest.json"))["layout"] == "ntu-rgb+d"


@pytest.mark.parametrize("change, message", [
    (dict(keypoint=np.zeros((1, 5, 18, 2))), "keypoint must be \\(M, T, 17 or 25, 2 or 3\\)"),
    (dict(keypoint=np.zeros((1, 5, 25, 2))), "NTU-25 keypoints must be 3D"),
    (dict(label=-1), "label -1 is not a class index"),
    (dict(keypoint_score=np.ones((1, 4, 17))), "keypoint_score must be finite numbers of shape"),
])
def test_bad_annotations_are_one_line(tmp_path, capsys, change, message):
    content = annotation(tmp_path / "p.pkl", n=(2, 2), frames=5)
    content["annotations"][1].update(change)
    with open(tmp_path / "p.pkl", "wb") as f:
        pickle.dump(content, f)
    with pytest.raises(SystemExit) as err:
        pose_main(["--annotation", str(tmp_path / "p.pkl"), "--out_folder", str(tmp_path / "out")])
    assert str(err.value).startswith("error: ") and "\n" not in str(err.value)
    assert re.search(message, str(err.value)) and "clip001" in str(err.value)


def test_small_recipe_pretrains_and_evaluates_on_converted_poses(tmp_path, monkeypatch):
    """The documented commands (docs/datasets.md, "Your own data") on a tiny annotation, run from a folder
    holding data/mine, as a user would."""
    annotation(tmp_path / "poses.pkl", scores=lambda rng, shape: rng.uniform(0.7, 1.0, shape), n=(32, 16))
    monkeypatch.chdir(tmp_path)
    pose_main(["--annotation", "poses.pkl", "--out_folder", "data/mine", "--frames", "16"])
    tiny = ["--num_steps", "4", "--batch_size", "16", "--train_feeder_args.frames", "16", "--progress", "false"]
    main.main(["pretrain", "--config", os.path.join(ROOT, "config/mine/skelemixclr_plus.yaml"), *tiny])
    run = tmp_path / "work_dir" / "mine" / "skelemixclr_plus"
    weights = sorted(run.glob("epoch*_model.pt"))[-1]
    main.main(["linear_evaluation", "--config", os.path.join(ROOT, "config/mine/linear.yaml"),
               "--weights", str(weights), "--num_epoch", "2", "--batch_size", "16", "--progress", "false"])
    result = json.load(open(run / "linear" / "result.json"))
    assert 0 <= result["final"]["top1"] <= 100 and len(result["confusion"]) == 2
    # docs/datasets.md's command (tools/extract_features.py: the evaluation config, then the checkpoint's)
    extract_main(["--config", os.path.join(ROOT, "config/mine/linear.yaml"), "--weights", str(weights),
                  "--data_path", "data/mine/xsub/val_position.npy", "--out", "features.npy"])
    features = np.load(tmp_path / "features.npy")
    assert features.shape == (16, 64) and features.dtype == np.float32 and np.isfinite(features).all()
    names, labels = read_labels(str(tmp_path / "data/mine/xsub/val_label.pkl"))[:2]
    assert list(names) == [f"clip{i:03d}" for i in range(32, 48)] and list(labels) == [0, 1] * 8
