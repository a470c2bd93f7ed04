"""feeder/prepare/ntu.py and its command line tools/ntu_gendata.py: parsing, splits, outputs (docs/method.md
§1.1-1.2, §6)."""
import os
import pickle
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from test_io import hold_lock, snapshot

from feeder.prepare.demo import generate
from feeder.prepare.ntu import count_warnings, is_training, main, read_skeleton
from torchlight.io import temp_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.join(REPO, "tests", "data", "S001C001P001R001A001.skeleton")
LINES_PER_FRAME = 28  # one body: body count, body info, joint count, 25 joints


def real_lines():
    with open(REAL) as f:
        return f.read().split("\n")


def copy_real(folder, *names):
    os.makedirs(folder, exist_ok=True)
    for name in names:
        shutil.copy(REAL, os.path.join(folder, name))
    return folder


def load_part(out, benchmark, part):
    data = np.load(os.path.join(out, benchmark, f"{part}_data.npy"), mmap_mode="r")
    with open(os.path.join(out, benchmark, f"{part}_label.pkl"), "rb") as f:
        names, labels = pickle.load(f)
    return data, names, labels


def all_files(folder):
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, ns in os.walk(folder) for n in ns)


def test_real_clip_shape_frames_and_second_body():
    x = read_skeleton(REAL)
    assert x.shape == (3, 300, 25, 2) and x.dtype == np.float32
    assert (np.abs(x).sum(axis=(0, 2, 3)) > 0).sum() == 103
    assert np.abs(x[:, :103, :, 0]).sum(axis=(0, 2)).min() > 0
    assert not x[..., 1].any()
    assert not x[:, 103:].any()


def test_real_clip_values_equal_the_file_numbers():
    x = read_skeleton(REAL)
    np.testing.assert_array_equal(x[:, 0, 0, 0], np.float32([0.2181153, 0.1725972, 3.785547]))
    lines = real_lines()
    assert lines[0].strip() == "103"
    for frame in (0, 1, 50, 102):
        assert lines[1 + frame * LINES_PER_FRAME].strip() == "1"  # one body in every frame
        for joint in (0, 3, 11, 20, 24):
            tokens = lines[1 + frame * LINES_PER_FRAME + 3 + joint].split()
            assert len(tokens) == 12
            expected = np.float32([float(v) for v in tokens[:3]])
            np.testing.assert_array_equal(x[:, frame, joint, 0], expected)


def test_max_frames_keeps_the_first_frames():
    x = read_skeleton(REAL, max_frames=10)
    assert x.shape == (3, 10, 25, 2)
    np.testing.assert_array_equal(x, read_skeleton(REAL)[:, :10])


@pytest.mark.parametrize("name, bench, train", [
    ("S001C001P001R001A001.skeleton", "xsub", True),
    ("S001C001P003R001A001.skeleton", "xsub", False),
    ("S001C002P038R001A001", "xsub", True),
    ("S001C002P040R001A001", "xsub", False),
    ("S001C001P002R001A001.skeleton", "xview", False),
    ("S001C002P003R001A001.skeleton", "xview", True),
    ("S001C003P003R001A001.skeleton", "xview", True),
    ("S018C001P103R001A120.skeleton", "xsub", True),
    ("S018C001P104R001A120.skeleton", "xsub", False),
    ("S018C001P045R001A061.skeleton", "xsub", True),
    ("S018C001P044R001A061.skeleton", "xsub", False),
    ("S002C001P001R001A001.skeleton", "xset", True),
    ("S001C002P001R001A001.skeleton", "xset", False),
    ("S032C001P106R002A120.skeleton", "xset", True),
    ("S031C001P106R002A120.skeleton", "xset", False),
])
def test_split_membership(name, bench, train):
    assert is_training(name, bench) is train


def test_unknown_benchmark_and_bad_name_are_named():
    with pytest.raises(ValueError, match="'xfoo'"):
        is_training("S001C001P001R001A001.skeleton", "xfoo")
    with pytest.raises(ValueError, match="clip.skeleton"):
        is_training("clip.skeleton", "xsub")


def test_missing_list_and_action_range_are_skipped(tmp_path):
    missing = "S001C002P005R002A008.skeleton"  # first entry of the NTU 60 missing list
    data = copy_real(tmp_path / "raw", "S001C001P001R001A001.skeleton", "S001C002P002R001A002.skeleton",
                     missing, "S018C002P001R001A061.skeleton")
    main(["--data_path", str(data), "--out_folder", str(tmp_path / "out60")])
    names = [n for part in ("train", "val") for n in load_part(tmp_path / "out60", "xsub", part)[1]]
    assert sorted(names) == ["S001C001P001R001A001.skeleton", "S001C002P002R001A002.skeleton"]

    main(["--data_path", str(data), "--out_folder", str(tmp_path / "out120"), "--dataset", "ntu120"])
    data_, names, labels = load_part(tmp_path / "out120", "xset", "train")
    assert names == ["S018C002P001R001A061.skeleton"] and labels == [60] and data_.shape[0] == 1
    assert set(os.listdir(tmp_path / "out120")) == {"xsub", "xset"}

    main(["--data_path", str(data), "--out_folder", str(tmp_path / "none"), "--ignored_sample_path", "",
          "--benchmark", "xview"])
    _, names, labels = load_part(tmp_path / "none", "xview", "train")
    assert names == ["S001C002P002R001A002.skeleton", missing] and labels == [1, 7]


def test_truncated_file_names_file_and_line(tmp_path):
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_text("\n".join(real_lines()[:50]) + "\n")
    # frame 2 starts at line 30: body count, body info (31), joint count (32), joints from 33
    with pytest.raises(ValueError, match=rf"{path}:32: expected 25 joint lines, file ends"):
        read_skeleton(path)


def test_bad_number_names_file_line_and_token(tmp_path):
    lines = real_lines()
    lines[40] = "abc" + lines[40][lines[40].index(" "):]
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=rf"{path}:41: bad number 'abc'"):
        read_skeleton(path)
    lines[0] = "x103"
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=rf"{path}:1: bad frame count 'x103'"):
        read_skeleton(path)


def test_bad_file_stops_the_run_and_leaves_no_files(tmp_path):
    data = copy_real(tmp_path / "raw", "S001C001P001R001A001.skeleton", "S001C002P002R001A002.skeleton")
    bad = data / "S001C003P003R001A003.skeleton"
    bad.write_text("\n".join(real_lines()[:50]))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["--data_path", str(data), "--out_folder", str(out)])
    message = str(info.value)
    assert message.startswith("error: ") and "\n" not in message and f"{bad}:32:" in message
    assert all_files(out) == []


def test_skip_bad_skips_and_reports(tmp_path, capsys):
    names = ["S001C001P001R001A001.skeleton", "S001C002P002R001A002.skeleton",
             "S001C002P004R001A004.skeleton"]
    data = copy_real(tmp_path / "raw", *names)
    bad = "S001C002P001R001A003.skeleton"  # sorts between good train files of both benchmarks
    (data / bad).write_text("\n".join(real_lines()[:50]))
    (data / "notes.skeleton").write_text("1\n0\n")
    out = tmp_path / "out"
    main(["--data_path", str(data), "--out_folder", str(out), "--skip_bad"])
    printed = capsys.readouterr().out
    assert "skipped 2 bad files" in printed and bad in printed and "notes.skeleton" in printed
    x, kept, labels = load_part(out, "xview", "train")
    assert kept == names[1:] and labels == [1, 3] and x.shape == (2, 3, 300, 25, 2)
    np.testing.assert_array_equal(x[1], read_skeleton(REAL))
    x, kept, _ = load_part(out, "xsub", "train")
    assert kept == names and x.shape == (3, 3, 300, 25, 2)
    assert all_files(out) == [f"{b}/{p}_{k}" for b in ("xsub", "xview") for p in ("train", "val")
                              for k in ("data.npy", "label.pkl")]


def test_skip_bad_with_nothing_readable_is_an_error(tmp_path):
    (tmp_path / "S001C001P001R001A001.skeleton").write_text("2\n1\n")
    with pytest.raises(SystemExit, match="no readable clips .*:3: expected body info"):
        main(["--data_path", str(tmp_path), "--out_folder", str(tmp_path / "out"), "--skip_bad"])
    assert all_files(tmp_path / "out") == []


def test_empty_directory_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["--data_path", str(tmp_path), "--out_folder", str(tmp_path / "out")])
    assert str(info.value) == f"error: no .skeleton files in {tmp_path}"
    with pytest.raises(SystemExit, match="not a directory"):
        main(["--data_path", str(tmp_path / "nope"), "--out_folder", str(tmp_path / "out")])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    raw = tmp_path_factory.mktemp("demo")
    names = generate(raw, num_files=30, seed=0)
    return raw, sorted(names)


@pytest.mark.parametrize("dataset, benches", [("ntu60", ("xsub", "xview")), ("ntu120", ("xsub", "xset"))])
def test_end_to_end_on_demo_files(demo, tmp_path, dataset, benches, capsys):
    raw, names = demo
    out = tmp_path / "out"
    main(["--data_path", str(raw), "--out_folder", str(out), "--dataset", dataset])
    warned = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warned == [f"{b}/{p}" for b in benches for p in ("train", "val")]  # 30 files: far from every split
    assert all_files(out) == [f"{b}/{p}_{k}" for b in sorted(benches) for p in ("train", "val")
                              for k in ("data.npy", "label.pkl")]
    for benchmark in benches:
        seen = []
        for part in ("train", "val"):
            x, kept, labels = load_part(out, benchmark, part)
            assert x.dtype == np.float32 and x.shape == (len(kept), 3, 300, 25, 2) and len(kept) > 0
            assert kept == sorted(kept) and labels == [int(n[17:20]) - 1 for n in kept]
            assert all(is_training(n, benchmark) == (part == "train") for n in kept)
            np.testing.assert_array_equal(x[-1], read_skeleton(raw / kept[-1]))
            seen += kept
        assert sorted(seen) == names


def test_split_sizes_far_from_the_official_counts_are_warned():
    sizes = {("xsub", "train"): 40091, ("xsub", "val"): 15000, ("xview", "train"): 38000, ("xview", "val"): 20000}
    assert count_warnings("ntu60", sizes) == [
        "warning: xsub/val holds 15,000 clips, 9% off the 16,487 of the official ntu60 xsub split (files missing "
        "or extra?)",  # 1,487 / 16,487; xview/train is 0.9% off, xview/val 5.64%:
        "warning: xview/val holds 20,000 clips, 6% off the 18,932 of the official ntu60 xview split (files missing "
        "or extra?)"]
    assert count_warnings("ntu120", {("xset", "train"): 54468, ("xset", "val"): 59477, ("xsub", "val"): 50919}) == []
    assert count_warnings("ntu60", {("xset", "train"): 5}) == []  # no official ntu60 xset split


def test_script_and_module_run_without_torch(demo, tmp_path):
    raw, _ = demo
    for i, launcher in enumerate((["tools/ntu_gendata.py"], ["-m", "tools.ntu_gendata"])):
        out = tmp_path / f"out{i}"
        cmd = [sys.executable, *launcher, "--data_path", str(raw), "--out_folder", str(out),
               "--benchmark", "xview"]
        env = {**os.environ, "PYTHONPATH": ""}
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        assert (out / "xview" / "val_data.npy").exists()
    check = ("import sys, tools.ntu_gendata, tools.ucla_gendata, tools.pku_gendata, feeder.prepare.demo; "
             "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_bytes_that_are_not_utf8_name_file_and_line(tmp_path, capsys):
    data = copy_real(tmp_path / "raw", "S001C001P001R001A001.skeleton")
    bad = data / "S001C002P002R001A002.skeleton"
    raw = "\n".join(real_lines()).encode()
    bad.write_bytes(raw[:200] + b"\xff\xfe" + raw[200:])
    line = raw[:200].count(b"\n") + 1
    with pytest.raises(ValueError, match=rf"{bad}:{line}: byte 0xff is not UTF-8 text"):
        read_skeleton(bad)
    main(["--data_path", str(data), "--out_folder", str(tmp_path / "out"), "--skip_bad"])
    assert f"S001C002P002R001A002.skeleton: {bad}:{line}: byte 0xff is not UTF-8 text" in capsys.readouterr().out


def test_rerun_removes_temporaries_of_a_killed_run(tmp_path):
    data = copy_real(tmp_path / "raw", "S001C001P001R001A001.skeleton", "S001C002P002R001A002.skeleton")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = temp_name(tmp_path / "out" / "xsub" / "train_data.npy", pid=int(dead.stdout))
    os.makedirs(os.path.dirname(stale))
    with open(stale, "wb") as f:
        f.write(b"\0" * 1000)
    main(["--data_path", str(data), "--out_folder", str(tmp_path / "out"), "--benchmark", "xsub"])
    assert all_files(tmp_path / "out") == [f"xsub/{p}_{k}" for p in ("train", "val") for k in ("data.npy", "label.pkl")]


def test_a_file_without_frames_is_skipped_and_listed_not_a_zero_clip(tmp_path, capsys):
    data = copy_real(tmp_path / "raw", "S001C001P001R001A001.skeleton", "S001C002P002R001A002.skeleton")
    (data / "S001C001P001R001A003.skeleton").write_text("0\n")
    main(["--data_path", str(data), "--out_folder", str(tmp_path / "out"), "--benchmark", "xsub"])
    assert (f"warning: skipped 1 files with no frames, listed in {tmp_path / 'out' / 'empty_files.txt'}"
            in capsys.readouterr().out)
    assert (tmp_path / "out" / "empty_files.txt").read_text() == "S001C001P001R001A003.skeleton\n"
    names = [pickle.load(open(tmp_path / "out" / "xsub" / f"{p}_label.pkl", "rb"))[0] for p in ("train", "val")]
    assert "S001C001P001R001A003.skeleton" not in names[0] + names[1] and len(names[0] + names[1]) == 2


def test_a_folder_with_another_runs_arrays_is_refused_unless_overwrite(tmp_path):
    data = copy_real(tmp_path / "raw", "S001C001P001R001A001.skeleton", "S001C002P002R001A002.skeleton")
    out = tmp_path / "out"
    argv = ["--data_path", str(data), "--out_folder", str(out), "--benchmark", "xsub"]
    main(argv)
    before = snapshot(out)
    for again in (argv, argv[:-1] + ["xview"]):  # the same benchmark, or another one beside it
        with pytest.raises(SystemExit) as info:
            main(again)
        assert str(info.value) == (f"error: out_folder {out} holds another run's arrays (xsub/train_data.npy, "
                                   "xsub/train_label.pkl, xsub/val_data.npy, xsub/val_label.pkl): pass --overwrite "
                                   "or choose another --out_folder")
    assert snapshot(out) == before  # untouched, and no run.lock left
    main(argv[:-1] + ["xview", "--overwrite"])
    assert all_files(out) == [f"{b}/{p}_{k}" for b in ("xsub", "xview") for p in ("train", "val")
                              for k in ("data.npy", "label.pkl")]


def test_a_run_into_a_folder_another_process_holds_is_refused_naming_it(tmp_path):
    data = copy_real(tmp_path / "raw", "S001C001P001R001A001.skeleton")
    out = tmp_path / "out"
    other = hold_lock(out)  # training's run.lock, held by a live process (another gendata or a training run)
    try:
        with pytest.raises(SystemExit) as info:
            main(["--data_path", str(data), "--out_folder", str(out)])
    finally:
        other.kill()
        other.wait()
    assert str(info.value).startswith(f"error: out_folder {out} is in use by pid {other.pid} on "
                                      f"{socket.gethostname()} since ")
    assert os.listdir(out) == ["run.lock"]  # nothing of the refused run was written
