"""feeder/prepare/pku.py: PKU-MMD files -> action clips -> preprocessing -> feeder, split files, errors, and
the transfer protocol (an NTU-pretrained encoder evaluated on PKU-MMD labels) with the shipped configs."""
import glob
import json
import os
import pickle
import re

import numpy as np
import pytest
import torch
from flat import moco

from feeder.feeder import Feeder
from feeder.prepare.demo import clip_joints
from feeder.prepare.pku import main, read_split
from feeder.prepare.preprocess import preprocess
from processor import configure
from torchlight.config import load_yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XSUB = "Training videos: 0002-L, 0002-M, 0003-L,\n0003-R\nValidataion videos: 0004-M, 0005-L\n"
XVIEW = "Training videos:\n0002-L, 0003-L, 0005-L\n\nTesting videos:\n0002-M 0003-R\n0004-M, 0009-R\n"
# Per video: (demo class, first frame, frames) of each action; gaps between actions are idle frames.
VIDEOS = {
    "0002-L": [(0, 5, 50), (10, 70, 40), (3, 120, 60)],
    "0002-M": [(1, 0, 45), (4, 50, 30)],    # start 0 reads as frame 1
    "0003-L": [(2, 3, 120), (5, 130, 40)],  # 120 frames: truncated to --max_frames 100
    "0003-R": [(6, 10, 44)],
    "0004-M": [(7, 2, 50), (11, 60, 40)],
    "0005-L": [(8, 1, 40), (9, 50, 60)],    # its last action runs 5 frames past the file's end
}
MAX_FRAMES = 100
TRANSFER = "linear_eval_skelemixclr_multi_swap_ntu120_to_pku2.yaml"


def skeleton_rows(video):
    """(T, 150) float32 frames of a video: two bodies x 25 joints x xyz per row, idle between actions."""
    actions = VIDEOS[video]
    length = max(max(first, 1) + frames for _, first, frames in actions) + 3
    rows = np.zeros((length, 2, 25, 3))
    rest = clip_joints(0, 2, np.random.default_rng(99))[0, 0]  # a standing body
    rows[:, 0] = rest
    for k, (label, first, frames) in enumerate(actions):
        joints = clip_joints(label, 1 + k % 3, np.random.default_rng([label, first]))
        start = max(first, 1) - 1
        joints = np.resize(joints, (frames, *joints.shape[1:]))
        rows[start:start + frames, :joints.shape[1]] = joints
    return np.float32(np.round(rows.reshape(length, 150), 5))


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("pku_raw")
    for folder in ("skeleton", "label"):
        os.makedirs(root / folder)
    expected = {}  # clip name -> (0-based label, (T, 150) rows of the clip)
    for video in VIDEOS:
        rows = skeleton_rows(video)
        np.savetxt(root / "skeleton" / f"{video}.txt", rows, fmt="%.5f")
        lines = []
        for k, (label, first, frames) in enumerate(VIDEOS[video]):
            last = max(first, 1) + frames - 1 + (5 if video == "0005-L" and k == 1 else 0)
            lines.append(f"{label + 1},{first},{last},{1 + k % 2}")
            expected[f"{video}_{k + 1:03d}"] = (label, rows[max(first, 1) - 1:last][:MAX_FRAMES])
        (root / "label" / f"{video}.txt").write_text("\n".join(lines) + "\n")
    (root / "label" / "0007-L.txt").write_text("1,1,10,1\n")  # in no split: ignored
    (root / "xsub.txt").write_text(XSUB)
    (root / "xview.txt").write_text(XVIEW)
    return root, expected


def gendata_args(root, out, *extra):
    return ["--skeleton_path", str(root / "skeleton"), "--label_path", str(root / "label"),
            "--out_folder", str(out), "--xsub", str(root / "xsub.txt"), "--xview", str(root / "xview.txt"),
            "--max_frames", str(MAX_FRAMES), *extra]


@pytest.fixture(scope="module")
def database(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("pku_gen")
    main(gendata_args(raw[0], out))
    return out


def load(out, split, part):
    data = np.load(out / split / f"{part}_data.npy")
    with open(out / split / f"{part}_label.pkl", "rb") as f:
        names, labels = pickle.load(f)
    return data, names, labels


@pytest.mark.parametrize("split, part, videos", [
    ("xsub", "train", ["0002-L", "0002-M", "0003-L", "0003-R"]), ("xsub", "val", ["0004-M", "0005-L"]),
    ("xview", "train", ["0002-L", "0003-L", "0005-L"]), ("xview", "val", ["0002-M", "0003-R", "0004-M"]),
])
def test_actions_are_cut_into_clips_of_their_split(raw, database, split, part, videos):
    _, expected = raw
    data, names, labels = load(database, split, part)
    assert names == sorted(n for n in expected if n[:6] in videos)
    assert data.shape == (len(names), 3, MAX_FRAMES, 25, 2) and data.dtype == np.float32
    assert labels == [expected[n][0] for n in names]
    for i, name in enumerate(names):
        rows = expected[name][1]
        clip = rows.reshape(len(rows), 2, 25, 3).transpose(3, 0, 2, 1)
        np.testing.assert_array_equal(data[i, :, :len(rows)], clip)
        assert not data[i, :, len(rows):].any()
    two_person = [n for n, (label, _) in expected.items() if label >= 10 and n in names]
    assert all(data[names.index(n), ..., 1].any() for n in two_person)


def test_report_names_skips_cuts_and_truncations(raw, tmp_path, capsys):
    main(gendata_args(raw[0], tmp_path))
    report = capsys.readouterr().out.splitlines()
    assert "xsub/train: 8 clips" in report and "xview/val: 5 clips" in report
    assert "skipped 1 videos of the split files without skeleton or label file: 0009-R" in report
    assert "1 actions cut at the end of their skeleton file" in report
    assert f"1 actions truncated to {MAX_FRAMES} frames" in report
    assert not [f for _, _, files in os.walk(tmp_path) for f in files if ".partial-" in f]


def test_a_second_run_into_the_folder_is_refused(raw, database):
    with pytest.raises(SystemExit, match=re.escape(f"error: out_folder {database} holds another run's arrays (")):
        main(gendata_args(raw[0], database))  # the shared rule of docs/errors.md; the arrays stay


def test_feeder_end_to_end(raw, database, tmp_path):
    preprocess(str(database), str(tmp_path), frames=16)
    arrays = tmp_path / "xsub"
    feeder = Feeder(str(arrays / "val_position.npy"), str(arrays / "val_label.npy"))
    clip, label, _ = feeder[2]
    assert clip.shape == (3, 16, 25, 2) and len(feeder) == 4
    assert feeder.names == sorted(n for n in raw[1] if n[:6] in ("0004-M", "0005-L"))
    assert label == raw[1][feeder.names[2]][0]
    np.testing.assert_allclose(clip[:, :, 20, 0], 0, atol=1e-6)  # centred on joint 21


def test_split_files_official_and_lenient(tmp_path):
    train, val = read_split_text(tmp_path, XSUB)
    assert train == {"0002-L", "0002-M", "0003-L", "0003-R"} and val == {"0004-M", "0005-L"}
    train, val = read_split_text(tmp_path, XVIEW)
    assert train == {"0002-L", "0003-L", "0005-L"} and val == {"0002-M", "0003-R", "0004-M", "0009-R"}
    train, val = read_split_text(tmp_path, "training videos : A01N01-L,A01N02-L\nValidation Videos:A01N03-R")
    assert train == {"A01N01-L", "A01N02-L"} and val == {"A01N03-R"}


@pytest.mark.parametrize("text, message", [
    ("0002-L, 0002-M\nTraining videos: 0003-L\nValidataion videos: 0004-M", r":1: video names before"),
    ("Training videos: 0003-L\nEvaluation videos: 0004-M", r":2: unknown section 'Evaluation'"),
    ("Training videos: 0003-L, 0004-M\nValidataion videos: 0004-M", r": videos in both .*: 0004-M"),
    ("Training videos: 0003-L\n", r": no validation videos"),
])
def test_malformed_split_files_are_named(tmp_path, text, message):
    with pytest.raises(ValueError, match=f"{tmp_path}/split.txt{message}"):
        read_split_text(tmp_path, text)


def read_split_text(folder, text):
    (folder / "split.txt").write_text(text)
    return read_split(str(folder / "split.txt"))


@pytest.mark.parametrize("folder, line, message, part", [
    ("label", "1,34", r"label/0003-R.txt:2: expected label,start_frame,end_frame,confidence, got '1,34'", 1),
    ("label", "x,1,20,1", r"label/0003-R.txt:2: expected label,start_frame", 1),
    ("label", "52,1,20,1", r"label/0003-R.txt:2: label 52 outside 1..51", 1),
    ("label", "42,1,20,1", r"label/0003-R.txt:2: label 42 outside 1..41", 2),
    ("label", "5,50,40,1", r"label/0003-R.txt:2: bad frame interval 50..40", 1),
    ("label", "5,900,940,1", r"label/0003-R.txt:2: the action starts at frame 900, the skeleton file has", 1),
    ("skeleton", " ".join(["0.5"] * 149), r"skeleton/0003-R.txt:2: expected 150 numbers, got 149", 1),
    ("skeleton", " ".join(["0.5"] * 149 + ["abc"]), r"skeleton/0003-R.txt:2: bad number 'abc'", 1),
    ("skeleton", " ".join(["0.5"] * 149 + ["nan"]), r"skeleton/0003-R.txt:2: bad number 'nan'", 1),
    ("skeleton", "", r"skeleton/0003-R.txt:2: expected 150 numbers, got 0", 1),
])
def test_malformed_lines_are_named(raw, tmp_path, folder, line, message, part):
    root = tmp_path / "raw"
    for sub in ("skeleton", "label"):
        os.makedirs(root / sub)
        for video in ("0003-R", "0004-M"):
            lines = (raw[0] / sub / f"{video}.txt").read_text().splitlines()
            if sub == folder and video == "0003-R":
                lines.insert(1, line)
            (root / sub / f"{video}.txt").write_text("\n".join(lines) + "\n")
    (root / "xsub.txt").write_text("Training videos: 0003-R\nValidataion videos: 0004-M\n")
    args = ["--skeleton_path", str(root / "skeleton"), "--label_path", str(root / "label"), "--out_folder",
            str(tmp_path / "out"), "--xsub", str(root / "xsub.txt"), "--part", str(part)]
    with pytest.raises(SystemExit, match=f"error: {root}/{message}"):
        main(args)
    assert not [files for _, _, files in os.walk(tmp_path / "out") if files]


def test_linear_evaluation_transfers_an_ntu_encoder(database, tiny, tmp_path):
    """docs/method.md §4 across datasets with the shipped transfer config: NTU-pretrained encoder, PKU-MMD labels."""
    preprocess(str(database), str(tmp_path / "arrays"), frames=16)
    torch.manual_seed(0)
    pretrained = moco(hidden_channels=4, hidden_dim=16, dropout=0.0, queue_size=32)  # NTU layout
    torch.save({"model": pretrained.state_dict()}, tmp_path / "ntu.pt")
    config = load_yaml(os.path.join(REPO, "config", "transfer", TRANSFER))
    data = {f"{key}_feeder_args": dict(data_path=str(tmp_path / "arrays" / "xsub" / f"{part}_position.npy"),
                                       label_path=str(tmp_path / "arrays" / "xsub" / f"{part}_label.pkl"))
            for key, part in (("train", "train"), ("test", "val"))}
    config.update(data, weights=str(tmp_path / "ntu.pt"), num_epoch=2, eval_interval=2, batch_size=4)
    config.pop("work_dir")
    cls, cfg = tiny("linear_evaluation", "unused", tmp_path / "lin", **config)
    assert cfg["model_args"]["num_class"] == 41
    lin = cls(cfg)
    lin.start()
    for key, value in lin.raw_model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, pretrained.state_dict()["encoder_q." + key]), key
    result = json.loads((tmp_path / "lin" / "result.json").read_text())
    assert len(result["per_class_top1"]) == 41 and 0 <= result["final"]["top1"] <= 100


CONFIGS = sorted(glob.glob(os.path.join(REPO, "config", "pku", "*.yaml"))
                 + glob.glob(os.path.join(REPO, "config", "transfer", "*.yaml")))


# dataset in the config name -> (arrays folder, classes, training clips of the full dataset)
DATASETS = {"pku1": ("./data/pku1_frame64/xsub/", 51, 18800), "pku2": ("./data/pku2_frame64/xsub/", 41, 5300),
            "ucla": ("./data/ucla_ntu_frame64/xview/", 10, 1000)}


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_pku_and_transfer_configs(path):
    name = os.path.basename(path)
    command = re.search(r"# python main.py (\w+) --config (\S+)", open(path).read())
    assert command and command[2] == os.path.relpath(path, REPO)
    cls, cfg = configure(command[1], load_yaml(path))
    folder, classes, clips = DATASETS[re.search(r"pku1|pku2|ucla", name)[0]]
    assert cfg["train_feeder_args"]["data_path"] == folder + "train_position.npy"
    assert cfg["test_feeder_args"]["label_path"] == folder + "val_label.pkl"
    assert "layout" not in cfg["train_feeder_args"] and not cfg["model_args"].get("graph_args")  # NTU layout
    if command[1].startswith("pretrain"):
        queue = cfg["model_args"]["queue_size"]
        assert queue < clips and queue % cfg["batch_size"] == 0
    else:
        assert cfg["model_args"]["num_class"] == classes
        if "transfer" not in path:
            assert cfg["work_dir"] is None  # beside the weights
            assert cls.default_work_dir(cfg) == os.path.abspath(os.path.dirname(cfg["weights"]) + "/linear")
