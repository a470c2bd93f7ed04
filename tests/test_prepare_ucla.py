"""feeder/prepare/ucla.py: NW-UCLA JSON -> arrays -> preprocessing -> feeder, errors, and a kinect-v1 run."""
import glob
import json
import os
import pickle
import re

import numpy as np
import pytest
import torch

from feeder.feeder import Feeder
from feeder.prepare.demo import clip_joints
from feeder.prepare.preprocess import preprocess
from feeder.prepare.ucla import main
from processor import configure
from torchlight.config import load_yaml

ACTIONS = (1, 2, 3, 4, 5, 6, 8, 9, 11, 12)  # NW-UCLA action of label 1..10, from the issue text
NTU_OF_KINECT_V1 = [0, 1, 20, 3] + list(range(4, 20))  # 0-based NTU joint of each Kinect v1 joint
FRAMES = 16
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V1 = dict(layout="kinect-v1")


def ucla_name(action, subject, view, env=0):
    return f"a{action:02d}_s{subject:02d}_e{env:02d}_v{view:02d}"


def write_clip(folder, name, skeletons, label, **extra):
    """One clip file of the release format; `extra` replaces or adds JSON keys."""
    content = {"file_name": name, "skeletons": skeletons, "label": label, **extra}
    with open(os.path.join(folder, name + ".json"), "w") as f:
        json.dump(content, f, indent=1)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """40 clips: the ten single-person demo motions x subjects 1-2 x views 1-3 (less two), two too short."""
    folder = tmp_path_factory.mktemp("ucla_raw")
    clips = {}
    for label in range(10):
        for subject in (1, 2):
            for view in (1, 2, 3):
                if label < 2 and subject == 2 and view == 3:
                    continue
                rng = np.random.default_rng([label, subject, view])
                joints = clip_joints(label, view, rng)[:, 0, NTU_OF_KINECT_V1]  # (T, 20, 3), body 1
                name = ucla_name(ACTIONS[label], subject, view)
                write_clip(folder, name, np.round(joints, 6).tolist(), label + 1)
                clips[name] = (label, np.float32(np.round(joints, 6)))
    write_clip(folder, ucla_name(1, 9, 1), [], 1)                               # no frame
    write_clip(folder, ucla_name(12, 9, 3), [[[0.1, 0.2, 3.0]] * 20], 10)      # one frame
    return str(folder), clips


@pytest.fixture(scope="module")
def database(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("ucla_gen")
    main(["--data_path", raw[0], "--out_folder", str(out)])
    return str(out)


@pytest.fixture(scope="module")
def arrays(database, tmp_path_factory):
    out = tmp_path_factory.mktemp("ucla_arrays")
    preprocess(database, str(out), frames=FRAMES, layout="kinect-v1")
    return str(out / "xview")


def load(out, part):
    data = np.load(os.path.join(out, "xview", f"{part}_data.npy"))
    with open(os.path.join(out, "xview", f"{part}_label.pkl"), "rb") as f:
        names, labels = pickle.load(f)
    return data, names, labels


def test_arrays_labels_and_cross_view_split(raw, database):
    _, clips = raw
    for part, views in (("train", ("v01", "v02")), ("val", ("v03",))):
        data, names, labels = load(database, part)
        expected = sorted(n for n in clips if n[-3:] in views)
        assert names == expected and len(names) == (40 if part == "train" else 18)
        assert data.shape == (len(names), 3, 300, 20, 2) and data.dtype == np.float32
        assert labels == [clips[n][0] for n in names] and set(labels) == set(range(10))
        for i, name in enumerate(names):
            joints = clips[name][1]
            np.testing.assert_array_equal(data[i, :, :len(joints), :, 0], joints.transpose(2, 0, 1))
            assert not data[i, :, len(joints):].any() and not data[i, ..., 1].any()  # padding, no 2nd body


def test_validation_benchmark_holds_out_subjects_9_and_10_of_the_training_views(raw, tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    for name in raw[1]:
        os.link(os.path.join(raw[0], name + ".json"), folder / (name + ".json"))
    for view in (1, 2, 3):  # a clip of subject 10 in every view: only views 1 and 2 reach xview_val
        write_clip(str(folder), ucla_name(2, 10, view), raw[1][ucla_name(2, 1, view)][1].tolist(), 2)
    out = tmp_path / "out"
    main(["--data_path", str(folder), "--out_folder", str(out)])
    with open(out / "xview_val" / "val_label.pkl", "rb") as f:
        val = pickle.load(f)[0]
    with open(out / "xview_val" / "train_label.pkl", "rb") as f:
        train = pickle.load(f)[0]
    assert val == [ucla_name(2, 10, 1), ucla_name(2, 10, 2)]
    assert train == sorted(n for n in raw[1] if n[-3:] in ("v01", "v02"))
    assert not os.path.exists(os.path.join(raw[0], "xview_val"))


def test_a_second_run_into_the_folder_is_refused(raw, database):
    with pytest.raises(SystemExit, match=re.escape(f"error: out_folder {database} holds another run's arrays (")):
        main(["--data_path", raw[0], "--out_folder", database])  # the shared rule of docs/errors.md


def test_short_clips_are_skipped_and_reported(raw, tmp_path, capsys):
    main(["--data_path", raw[0], "--out_folder", str(tmp_path)])
    report = capsys.readouterr().out
    assert "xview/train: 40 clips" in report and "xview/val: 18 clips" in report
    assert ("skipped 2 clips shorter than 2 frames: a01_s09_e00_v01 (0 frames), a12_s09_e00_v03 (1 frames)"
            in report)
    names = load(str(tmp_path), "train")[1] + load(str(tmp_path), "val")[1]
    assert not [n for n in names if "_s09_" in n]
    assert not [f for _, _, files in os.walk(tmp_path) for f in files if ".partial-" in f]


def test_ntu_layout_option_maps_onto_25_joints(raw, tmp_path):
    main(["--data_path", raw[0], "--out_folder", str(tmp_path), "--layout", "ntu-rgb+d", "--num_person", "1",
          "--max_frames", "50"])
    data, names, _ = load(str(tmp_path), "val")
    assert data.shape == (18, 3, 50, 25, 1)
    joints = raw[1][names[0]][1][:50]  # (T, 20, 3)
    x = data[0, :, :len(joints), :, 0].transpose(1, 2, 0)
    np.testing.assert_array_equal(x[:, NTU_OF_KINECT_V1], joints)
    for ntu, kinect in ((2, 2), (21, 7), (22, 7), (23, 11), (24, 11)):  # neck, hand tips, thumbs
        np.testing.assert_array_equal(x[:, ntu], joints[:, kinect])


def test_feeder_end_to_end(raw, arrays):
    train = Feeder(os.path.join(arrays, "train_position.npy"), os.path.join(arrays, "train_label.pkl"), **V1)
    clip, label, index = train[3]
    assert clip.shape == (3, FRAMES, 20, 2) and len(train) == 40
    assert label == raw[1][train.names[3]][0] and index == 3
    np.testing.assert_allclose(clip[:, :, 2, 0], 0, atol=1e-6)  # centred on ShoulderCenter
    assert np.load(os.path.join(arrays, "val_label.npy")).shape == (18, 1)
    views, _, _ = Feeder(os.path.join(arrays, "train_position.npy"), os.path.join(arrays, "train_label.npy"),
                         views=2, **V1)[0]
    assert [v.shape for v in views] == [(3, 64, 20, 2)] * 2


@pytest.mark.parametrize("change, message", [
    (dict(text="{\n  \"skeletons\": [\n  oops"), r":3: not JSON"),
    (dict(label=3), r"label 3, but action a01 is label 1"),
    (dict(file_name="a01_s01_e00_v02"), r"file_name 'a01_s01_e00_v02' differs"),
    (dict(skeletons=[[[0.0, 0.0, 0.0]] * 20, [[0.0, 0.0, 0.0]] * 19]), r"frame 2 is not 20 joints x 3"),
    (dict(skeletons=[[[0.0, 0.0, "x"]] * 20] * 3), r"not a number"),
    (dict(skeletons=[[[0.0, 0.0, float("nan")]] * 20] * 3), r"not a finite float32"),
    (dict(name="a07_s01_e00_v01"), r"a07 is not an NW-UCLA action"),
    (dict(name="clip1"), r"does not match aAA_sSS_eEE_vVV.json"),
])
def test_malformed_clips_are_named(tmp_path, change, message):
    name = change.pop("name", "a01_s01_e00_v01")
    if "text" in change:
        (tmp_path / f"{name}.json").write_text(change["text"])
    else:
        write_clip(str(tmp_path), name, change.pop("skeletons", [[[0.0, 0.0, 1.0]] * 20] * 3),
                   change.pop("label", 1), **change)
    with pytest.raises(SystemExit, match=f"error: {tmp_path}/{name}.json.*{message}"):
        main(["--data_path", str(tmp_path), "--out_folder", str(tmp_path / "out")])
    assert not [files for _, _, files in os.walk(tmp_path / "out") if files]


def test_skelemixclr_plus_and_linear_evaluation_on_kinect_v1(arrays, tiny, tmp_path):
    feeders = dict(train_feeder_args=V1, test_feeder_args=V1, stream="bone")
    cls, cfg = tiny("pretrain_skeletonclr_multi_swapv2", arrays, tmp_path / "pre", num_epoch=1,
                    model_args=dict(queue_size=32, graph_args=V1), **feeders)
    pre = cls(cfg)
    pre.start()
    assert pre.raw_model.mixes[0].skelemix.layout.name == "kinect-v1"
    assert all(np.isfinite(s["train/loss"]) and s["train/loss_mix"] > 0 for s in pre.stats)
    weights = tmp_path / "pre" / "epoch1_model.pt"
    state = torch.load(weights, weights_only=False)["model"]
    assert state["encoder_q.A"].shape == (3, 20, 20)
    cls, cfg = tiny("linear_evaluation", arrays, tmp_path / "lin", weights=str(weights), num_epoch=2,
                    eval_interval=2, model_args=dict(num_class=10, graph_args=V1), **feeders)
    lin = cls(cfg)
    lin.start()
    for key, value in lin.raw_model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, state["encoder_q." + key]), key
    result = json.loads((tmp_path / "lin" / "result.json").read_text())
    assert 0 <= result["final"]["top1"] <= 100 and len(result["per_class_top1"]) == 10


def test_knn_monitor_on_kinect_v1(arrays, tiny, tmp_path):
    cls, cfg = tiny("pretrain_skeletonclr", arrays, tmp_path, num_epoch=1, eval_interval=1, knn_k=[1],
                    model_args=dict(queue_size=32, graph_args=V1), train_feeder_args=V1, test_feeder_args=V1)
    proc = cls(cfg)
    proc.start()
    assert 0 <= proc.stats[0]["knn/top1_k1"] <= 100


FULL_SIZE = sorted(p for p in glob.glob(os.path.join(REPO, "config", "ucla", "*.yaml")) if "_small" not in p)
SMALL = sorted(glob.glob(os.path.join(REPO, "config", "ucla", "*_small.yaml")))


@pytest.mark.parametrize("path", SMALL, ids=os.path.basename)
def test_cpu_scale_ucla_configs(path):
    command = re.search(r"# python main.py (\w+) --config (\S+)", open(path).read())
    assert command and command[2] == os.path.relpath(path, REPO)
    _, cfg = configure(command[1], load_yaml(path))
    if command[1] == "table":  # every row's configs exist and are CPU-scale ones
        files = [f for row in cfg["rows"] for f in [row["linear"], *row.get("pretrain", [])[1:]]]
        assert files and all(os.path.isfile(os.path.join(REPO, f)) and "_small" in f for f in files)
        return
    for key, part in (("train_feeder_args", "train"), ("test_feeder_args", "val")):
        assert cfg[key]["data_path"] == f"./data/ucla_frame32/xview/{part}_position.npy"
    if command[1].startswith("pretrain"):  # the recipe's departures from the paper (docs/method.md §3-4)
        args = cfg["model_args"]
        assert (cfg["encoder"]["dropout"], args["momentum"], cfg["base_lr"], cfg["layout"]) == (0.0, 0.99, 0.01,
                                                                                            V1["layout"])
        # each method's own head, one temperature, the mixes ramped in, one body (docs/experiments.md)
        head = "mlp" if cfg["method"] == "skeletonclr" else "mlp_bn"
        assert (args["head"], args["temperature"], cfg["mix_warmup"]) == (head, 0.07, 0.5)
        assert cfg["train_feeder_args"]["bodies"] == 1
        assert (cfg["num_steps"], args["queue_size"]) == (1200, "auto")


@pytest.mark.parametrize("path", FULL_SIZE, ids=os.path.basename)
def test_ucla_configs(path):
    command = re.search(r"# python main.py (\w+) --config (\S+)", open(path).read())
    assert command and command[2] == os.path.relpath(path, REPO)
    _, cfg = configure(command[1], load_yaml(path))
    assert cfg["layout"] == V1["layout"]
    for key, part in (("train_feeder_args", "train"), ("test_feeder_args", "val")):
        assert cfg[key] == dict(data_path=f"./data/ucla_frame64/xview/{part}_position.npy",
                                label_path=f"./data/ucla_frame64/xview/{part}_label.pkl", **V1)
    if command[1].startswith("pretrain"):  # about 1,000 training clips
        queue = cfg["model_args"]["queue_size"]
        assert queue < 1000 and queue % cfg["batch_size"] == 0
    else:
        assert cfg["model_args"]["num_class"] == 10
        assert re.fullmatch(r"\./work_dir/ucla_xview/\w+/epoch300_model\.pt", cfg["weights"])  # a run above
