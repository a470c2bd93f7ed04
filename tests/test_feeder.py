"""feeder/feeder.py: shapes per mode, seeded augmentation, labelled subsets (docs/method.md §1.5, §4, §4b), errors."""
import os
import pickle
from collections import Counter

import numpy as np
import pytest
import torch

from feeder.augment import augment_sample, temporal_resize
from feeder.feeder import Feeder
from torchlight.io import write_manifest

LABELS = [0] * 30 + [1] * 20 + [2] * 10 + [3] * 5 + [4] * 25


@pytest.fixture
def files(tmp_path):
    """A preprocessed part: position (N, 3, 64, 25, 2), label .npy (N, 1) and the generator's pickle."""
    n = len(LABELS)
    data = np.random.default_rng(0).standard_normal((n, 3, 64, 25, 2)).astype(np.float32)
    np.save(tmp_path / "train_position.npy", data)
    np.save(tmp_path / "train_label.npy", np.array(LABELS, np.int64)[:, None])
    with open(tmp_path / "train_label.pkl", "wb") as f:
        pickle.dump(([f"clip{i:03d}" for i in range(n)], LABELS), f)
    return str(tmp_path / "train_position.npy"), str(tmp_path / "train_label.npy"), data


def test_evaluation_items(files):
    data_path, label_path, data = files
    x, label, index = Feeder(data_path, label_path)[7]
    assert x.shape == (3, 64, 25, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x, data[7])
    assert (label, index) == (LABELS[7], 7) and type(label) is int
    x, _, _ = Feeder(data_path, label_path, window_size=50, mmap=False)[3]
    np.testing.assert_array_equal(x, data[3, :, 7:57])


def test_pretraining_views(files):
    data_path, label_path, data = files
    feeder = Feeder(data_path, label_path, views=2, seed=1)
    views, label, index = feeder[5]
    assert len(views) == 2 and all(v.shape == (3, 64, 25, 2) and v.dtype == np.float32 for v in views)
    assert not np.allclose(views[0], views[1])
    rng = np.random.default_rng([1, 0, 5])  # the documented per-item seed: (seed, epoch, index)
    np.testing.assert_allclose(views[0], augment_sample(data[5], rng, 64), atol=1e-6)
    np.testing.assert_allclose(views[1], augment_sample(data[5], rng, 64), atol=1e-6)
    np.testing.assert_array_equal(Feeder(data_path, label_path, views=2, seed=1)[5][0][0], views[0])
    feeder.set_epoch(1)
    assert not np.allclose(feeder[5][0][0], views[0])  # a new epoch draws new augmentations
    views = Feeder(data_path, label_path, views=3, frames=32)[0][0]
    assert len(views) == 3 and views[2].shape == (3, 32, 25, 2)


def test_views_without_augmentation_are_raw_copies(files):
    data_path, label_path, data = files
    views, _, _ = Feeder(data_path, label_path, views=2, augment=False)[4]
    assert len(views) == 2  # as many as asked for: the processor asks for one when the device augments
    np.testing.assert_array_equal(views[0], data[4])
    np.testing.assert_array_equal(views[1], data[4])
    views, _, _ = Feeder(data_path, label_path, views=2, frames=32, augment=False)[4]
    np.testing.assert_allclose(views[0], temporal_resize(data[4], 32))


def test_persistent_workers_see_each_epoch(files):
    """One worker started once serves both epochs, each with that epoch's augmentations."""
    data_path, label_path, _ = files
    feeder = Feeder(data_path, label_path, views=1, frames=16, seed=1)
    loader = torch.utils.data.DataLoader(feeder, batch_size=4, num_workers=1, persistent_workers=True)
    for epoch in (0, 1):
        feeder.set_epoch(epoch)
        first = next(iter(loader))[0][0]
        expected = np.stack([feeder[i][0][0] for i in range(4)])
        np.testing.assert_allclose(first.numpy(), expected, atol=1e-6)
        assert feeder.epoch == epoch


def test_labels_and_names(files, tmp_path):
    data_path, label_path, _ = files
    feeder = Feeder(data_path, str(tmp_path / "train_label.pkl"))
    assert len(feeder) == len(LABELS) and feeder[40][1] == LABELS[40] and feeder.names[2] == "clip002"
    assert Feeder(data_path, label_path).names[2] == "clip002"
    (tmp_path / "train_label.pkl").unlink()
    assert Feeder(data_path, label_path).names[:3] == ["0", "1", "2"]


def test_labelled_subset_per_class(files):
    data_path, label_path, _ = files
    feeder = Feeder(data_path, label_path, label_fraction=0.1, label_seed=3)
    counts = Counter(LABELS[i] for i in feeder.indices)
    for c, n in Counter(LABELS).items():
        assert counts.get(c, 0) == round(0.1 * n)  # 3, 2, 1, round(0.5) = 0, round(2.5) = 2
    assert list(feeder.indices) == sorted(feeder.indices) and len(feeder) == len(feeder.indices)
    assert feeder.subset_names() == [f"clip{i:03d}" for i in feeder.indices]
    x, label, index = feeder[1]
    assert label == LABELS[feeder.indices[1]] and index == 1
    same = Feeder(data_path, label_path, label_fraction=0.1, label_seed=3)
    other = Feeder(data_path, label_path, label_fraction=0.1, label_seed=4)
    assert list(same.indices) == list(feeder.indices) and list(other.indices) != list(feeder.indices)


def test_errors_name_the_file(files, tmp_path):
    data_path, label_path, data = files
    with pytest.raises(FileNotFoundError, match="nothere_position.npy"):
        Feeder(str(tmp_path / "nothere_position.npy"), label_path)
    with pytest.raises(FileNotFoundError, match="nothere_label.npy"):
        Feeder(data_path, str(tmp_path / "nothere_label.npy"))
    np.save(tmp_path / "flat.npy", data[:, :, :, :, 0])
    with pytest.raises(ValueError, match=r"flat\.npy.*\(90, 3, 64, 25\)"):
        Feeder(str(tmp_path / "flat.npy"), label_path)
    np.save(tmp_path / "short_label.npy", np.zeros((3, 1), np.int64))
    with pytest.raises(ValueError, match="3 labels"):
        Feeder(data_path, str(tmp_path / "short_label.npy"))
    with pytest.raises(ValueError, match="label_fraction"):
        Feeder(data_path, label_path, label_fraction=1.5)
    with pytest.raises(ValueError, match="views"):
        Feeder(data_path, label_path, views=-1)


@pytest.mark.parametrize("mmap", [True, False])
def test_truncated_or_empty_arrays_name_the_file(files, tmp_path, mmap):
    data_path, label_path, _ = files
    raw = open(data_path, "rb").read()
    for name, content in (("empty.npy", b""), ("cut.npy", raw[:len(raw) // 2]), ("head.npy", raw[:60])):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name}: not a complete numpy array file"):
            Feeder(str(tmp_path / name), label_path, mmap=mmap)


def test_check_finite_names_the_first_bad_clip(files, tmp_path):
    data_path, label_path, data = files
    Feeder(data_path, label_path, check_finite=True)
    bad = data.copy()
    bad[41, 2, 10, 3, 1] = np.inf
    bad[60, 0, 0, 0, 0] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    Feeder(str(tmp_path / "bad.npy"), label_path)  # off by default: the whole array is read only when asked
    with pytest.raises(ValueError, match=r"bad\.npy: clip 41 \(clip041\) holds NaN or inf"):
        Feeder(str(tmp_path / "bad.npy"), label_path, check_finite=True)


@pytest.mark.parametrize("label, shown", [(1.5, "1.5"), (-1, "-1"), (float("nan"), "nan")])
def test_labels_that_are_not_class_indices_name_file_and_clip(files, tmp_path, label, shown):
    data_path, _, _ = files
    labels = list(LABELS)
    labels[7] = label
    with open(tmp_path / "bad_label.pkl", "wb") as f:
        pickle.dump(([f"clip{i:03d}" for i in range(len(labels))], labels), f)
    with pytest.raises(ValueError, match=f"bad_label.pkl: label {shown} of clip 7 is not a class index"):
        Feeder(data_path, str(tmp_path / "bad_label.pkl"))


def test_labels_beyond_the_classifier_name_file_and_clip(files):
    data_path, label_path, _ = files
    feeder = Feeder(data_path, label_path)
    feeder.check_labels(5)
    with pytest.raises(ValueError, match=r"train_label.npy: label 4 of clip 65 \(clip065\) is out of range for "
                                         "model_args.num_class 4"):
        feeder.check_labels(4)


def test_bodies_keeps_the_first_bodies_of_every_clip(tmp_path):
    x = np.arange(2 * 3 * 4 * 25 * 2, dtype=np.float32).reshape(2, 3, 4, 25, 2)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.zeros((2, 1), dtype=np.int64))
    one = Feeder(str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), bodies=1)
    np.testing.assert_array_equal(one[1][0], x[1][..., :1])
    assert Feeder(str(tmp_path / "x.npy"), str(tmp_path / "y.npy"))[1][0].shape == (3, 4, 25, 2)
    with pytest.raises(ValueError, match="bodies must be an integer >= 1, got 0"):
        Feeder(str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), bodies=0)


def test_a_crafted_label_pickle_runs_nothing(tmp_path, crafted):
    from feeder.feeder import read_labels
    from torchlight.config import ConfigError
    marker, payload = crafted
    with open(tmp_path / "train_label.pkl", "wb") as f:
        pickle.dump((["a"], payload), f)
    with pytest.raises(ConfigError, match=r"train_label.pkl: not a label pickle, not loaded"):
        read_labels(str(tmp_path / "train_label.pkl"))
    assert not marker.exists()


@pytest.mark.parametrize("manifest, message", [
    (dict(frames=32, layout="ntu-rgb+d", parts=dict(train=90)), "frames 32 there, 64 here"),
    (dict(frames=64, layout="ntu-rgb+d", parts=dict(train=40, val=10)), "train clips 40 there, 90 here"),
    (dict(frames=64, layout="kinect-v1"), "layout kinect-v1 there, ntu-rgb\\+d here"),
])
def test_arrays_that_disagree_with_their_manifest_are_refused(files, manifest, message):
    """Before: a 64-frame part beside a manifest of 32-frame parts (an overwrite killed midway) was read silently."""
    data_path, label_path, _ = files
    write_manifest(os.path.dirname(data_path), manifest)
    with pytest.raises(ValueError, match=f"train_position.npy disagrees with the manifest.json beside it \\({message}"):
        Feeder(data_path, label_path)


def test_arrays_that_agree_with_their_manifest_are_read(files):
    data_path, label_path, _ = files
    write_manifest(os.path.dirname(data_path), dict(frames=64, layout="ntu-rgb+d", parts=dict(train=90, val=3)))
    assert len(Feeder(data_path, label_path)) == 90


def test_clip_names_come_only_from_a_pickle_of_the_same_labels(files):
    """Before: a stale .pkl beside the .npy labels named the clips of another array."""
    data_path, label_path, _ = files
    assert Feeder(data_path, label_path).names[:2] == ["clip000", "clip001"]
    with open(label_path.replace(".npy", ".pkl"), "wb") as f:
        pickle.dump(([f"old{i}" for i in range(len(LABELS))], LABELS[::-1]), f)
    assert Feeder(data_path, label_path).names[:2] == ["0", "1"]
