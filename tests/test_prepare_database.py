"""feeder/prepare/database.py: the raw database every converter writes (docs/method.md §1.2)."""
import os
import pickle

import numpy as np
import pytest

from feeder.prepare.database import write_database


def clip(value):
    return np.full((3, 4, 2, 1), value, np.float32)


def read(folder, benchmark, part):
    with open(os.path.join(folder, benchmark, f"{part}_label.pkl"), "rb") as f:
        names, labels = pickle.load(f)
    return np.load(os.path.join(folder, benchmark, f"{part}_data.npy")), names, labels


def test_rows_sorted_by_name_and_left_out_clips_removed(tmp_path):
    parts = {("xsub", "train"): {"c": 2, "a": 0, "b": 1}, ("xsub", "val"): {"d": 3},
             ("xview", "train"): {"a": 0, "d": 3}, ("xview", "val"): {"b": 1, "c": 2}}
    clips = [("d", clip(4)), ("b", None), ("a", clip(1)), ("c", clip(3))]  # any order; b unreadable
    sizes = write_database(str(tmp_path), parts, iter(clips), (3, 4, 2, 1))
    assert sizes == {("xsub", "train"): 2, ("xsub", "val"): 1, ("xview", "train"): 2, ("xview", "val"): 1}
    x, names, labels = read(tmp_path, "xsub", "train")
    assert names == ["a", "c"] and labels == [0, 2] and x.shape == (2, 3, 4, 2, 1)
    assert x[:, 0, 0, 0, 0].tolist() == [1.0, 3.0]
    x, names, labels = read(tmp_path, "xview", "val")
    assert names == ["c"] and labels == [2] and x[:, 0, 0, 0, 0].tolist() == [3.0]
    assert sorted(os.listdir(tmp_path / "xview")) == ["train_data.npy", "train_label.pkl", "val_data.npy",
                                                      "val_label.pkl"]  # no temporary file left


def test_a_named_clip_never_produced_writes_nothing(tmp_path):
    with pytest.raises(RuntimeError, match=r"clips named but never produced: \['b'\]"):
        write_database(str(tmp_path), {("xsub", "train"): {"a": 0, "b": 1}}, iter([("a", clip(1))]), (3, 4, 2, 1))
    assert not os.path.exists(tmp_path / "xsub" / "train_data.npy")
