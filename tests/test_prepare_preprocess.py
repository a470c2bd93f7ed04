"""feeder/prepare/preprocess.py against a direct per-frame computation of docs/method.md §1.3, and its CLI (§6)."""
import json
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
from reference import resize_loop
from test_io import hold_lock, snapshot

from feeder.prepare.preprocess import main, preprocess_clip
from torchlight.io import temp_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def raw_clip(seed=0, length=12, total=20):
    """Random bodies for `length` frames, zero after, as the generator pads them."""
    x = np.zeros((3, total, 25, 2), np.float32)
    x[:, :length] = np.random.default_rng(seed).standard_normal((3, length, 25, 2))
    x[2, :length] += 3  # metres in front of the camera
    return x


def expected_clip(x, frames):
    """docs/method.md §1.3 steps 1-5 written frame by frame, body by body, joint by joint."""
    x = x.astype(np.float64)
    _, total, joints, bodies = x.shape
    length = sum(1 for t in range(total) if np.any(x[:, t, 0, 0] != 0))
    motion = np.zeros_like(x)
    for t in range(total - 1):
        motion[:, t] = x[:, t + 1] - x[:, t]
    centred = x.copy()
    for t in range(total):
        for m in range(bodies):
            for j in range(joints):
                centred[:, t, j, m] = x[:, t, j, m] - x[:, t, 20, m]
    position = resize_loop(centred[:, :length], frames)
    motion = resize_loop(motion[:, :length], frames)
    for m in range(bodies):
        shoulder = [position[:, t, 8, m] - position[:, t, 4, m] for t in range(frames)]
        for v in shoulder:
            v[1] = 0
        negate = sum(v[2] for v in shoulder) >= 0
        for t in range(frames):
            v = shoulder[t]
            a = np.arccos(v[0] / (np.sqrt(v @ v) + 1e-4))
            a = -a if negate else a
            rot = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])
            for j in range(joints):
                position[:, t, j, m] = rot @ position[:, t, j, m]
    return position, motion


@pytest.mark.parametrize("length,frames", [(12, 8), (12, 30), (20, 20), (1, 4)])
def test_clip_matches_per_frame_formula(length, frames):
    x = raw_clip(length=length)
    position, motion = preprocess_clip(x, frames)
    assert position.shape == motion.shape == (3, frames, 25, 2)
    assert position.dtype == motion.dtype == np.float32
    exp_position, exp_motion = expected_clip(x, frames)
    np.testing.assert_allclose(position, exp_position, atol=1e-5)
    np.testing.assert_allclose(motion, exp_motion, atol=1e-5)


def test_length_counts_frames_of_joint_1_of_body_1():
    x = raw_clip(length=12)
    x[:, :, 0, 1] = 0  # body 2's joint 1 does not count
    x[:, 15, 0, 0] = [1, 2, 3]  # a non-zero frame after a gap counts: L = 13, so frame 12 (zero) is used
    np.testing.assert_allclose(preprocess_clip(x, 8)[0], expected_clip(x, 8)[0], atol=1e-5)


def test_alignment_puts_shoulders_on_x_axis_with_sign_rule():
    x = raw_clip(length=10)
    rng = np.random.default_rng(1)
    # Body 1 turned one way (v_z > 0 every frame), body 2 the other way (v_z < 0): both sum rules.
    for m, sign in [(0, 1), (1, -1)]:
        for t in range(10):
            phi = sign * rng.uniform(0.2, 1.2)
            x[:, t, 8, m] = x[:, t, 4, m] + 0.4 * np.array([np.cos(phi), rng.uniform(-0.1, 0.1), np.sin(phi)])
    position = preprocess_clip(x, 10)[0]  # no resize: |v_xz| stays 0.4
    v = position[:, :, 8] - position[:, :, 4]  # (C, T, M)
    np.testing.assert_allclose(v[2], 0, atol=1e-3)
    np.testing.assert_allclose(v[0], 0.4, atol=1e-3)
    np.testing.assert_allclose(position[:, :, 20], 0, atol=1e-6)  # centred on joint 21, which rotation keeps
    v = np.diff(preprocess_clip(x, 16)[0][:, :, [4, 8]], axis=2)[:, :, 0]
    np.testing.assert_allclose(v[2], 0, atol=1e-3)
    assert (v[0] > 0.3).all()


def test_zero_body_and_empty_clip_stay_zero():
    x = raw_clip()
    x[..., 1] = 0
    position, motion = preprocess_clip(x, 8)
    assert not position[..., 1].any() and not motion[..., 1].any()
    position, motion = preprocess_clip(np.zeros((3, 20, 25, 2), np.float32), 8)
    assert position.shape == (3, 8, 25, 2) and not position.any() and not motion.any()


def write_part(folder, part, data, labels=None):
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, f"{part}_data.npy"), data)
    if labels is not None:
        names = [f"S001C001P001R001A{label + 1:03d}" for label in labels]
        with open(os.path.join(folder, f"{part}_label.pkl"), "wb") as f:
            pickle.dump((names, list(labels)), f)


def test_cli_processes_every_benchmark(tmp_path):
    gen, out = tmp_path / "gen", tmp_path / "out"
    data = np.stack([raw_clip(seed, length) for seed, length in enumerate([12, 20, 5])])
    write_part(gen / "xsub", "train", data, [0, 3, 1])
    write_part(gen / "xsub", "val", data[:1], [2])
    write_part(gen / "xview", "train", data[1:], [3, 1])
    main(["--dataset_path", str(gen), "--out_folder", str(out), "--frames", "16"])
    position = np.load(out / "xsub" / "train_position.npy")
    motion = np.load(out / "xsub" / "train_motion.npy")
    labels = np.load(out / "xsub" / "train_label.npy")
    assert position.shape == motion.shape == (3, 3, 16, 25, 2) and position.dtype == np.float32
    assert labels.dtype == np.int64 and labels.tolist() == [[0], [3], [1]]
    for i in range(3):
        np.testing.assert_allclose(position[i], expected_clip(data[i], 16)[0], atol=1e-5)
        np.testing.assert_allclose(motion[i], expected_clip(data[i], 16)[1], atol=1e-5)
    assert (out / "xsub" / "train_label.pkl").read_bytes() == (gen / "xsub" / "train_label.pkl").read_bytes()
    assert np.load(out / "xsub" / "val_position.npy").shape == (1, 3, 16, 25, 2)
    assert np.load(out / "xview" / "train_label.npy").tolist() == [[3], [1]]
    assert not [f for f in os.listdir(out / "xsub") if ".partial-" in f]


@pytest.mark.parametrize("how", [["feeder/preprocess_ntu.py"], ["-m", "feeder.preprocess_ntu"]])
def test_runs_as_script_and_module(tmp_path, how):
    write_part(tmp_path / "gen" / "xsub", "val", raw_clip()[None], [4])
    cmd = [sys.executable, *how, "--dataset_path", str(tmp_path / "gen"),
           "--out_folder", str(tmp_path / "out")]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    assert np.load(tmp_path / "out" / "xsub" / "val_position.npy").shape == (1, 3, 64, 25, 2)


def error_of(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    message = str(e.value)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_errors_name_the_path(tmp_path):
    out = ["--out_folder", str(tmp_path / "out")]
    assert str(tmp_path / "missing") in error_of(["--dataset_path", str(tmp_path / "missing"), *out])
    (tmp_path / "empty").mkdir()
    message = error_of(["--dataset_path", str(tmp_path / "empty"), *out])
    assert "no *_data.npy" in message and str(tmp_path / "empty") in message
    write_part(tmp_path / "shape" / "xsub", "train", np.zeros((2, 3, 10, 25), np.float32), [0, 1])
    message = error_of(["--dataset_path", str(tmp_path / "shape"), *out])
    assert "train_data.npy" in message and "(2, 3, 10, 25)" in message
    write_part(tmp_path / "nolabel" / "xsub", "train", raw_clip()[None])
    message = error_of(["--dataset_path", str(tmp_path / "nolabel"), *out])
    assert str(tmp_path / "nolabel" / "xsub" / "train_label.pkl") in message
    write_part(tmp_path / "count" / "xsub", "train", raw_clip()[None], [0, 1])
    assert "train_label.pkl" in error_of(["--dataset_path", str(tmp_path / "count"), *out])


def test_nan_or_inf_clip_is_refused_naming_file_and_clip(tmp_path):
    data = np.stack([raw_clip(0), raw_clip(1)])
    data[1, 0, 3, 7, 0] = np.nan
    write_part(tmp_path / "gen" / "xsub", "train", data, [0, 1])
    message = error_of(["--dataset_path", str(tmp_path / "gen"), "--out_folder", str(tmp_path / "out")])
    assert "train_data.npy: clip 1 (S001C001P001R001A002) holds NaN or inf" in message
    assert not os.path.exists(tmp_path / "out" / "xsub" / "train_position.npy")


def test_rerun_removes_stale_temporaries(tmp_path):
    write_part(tmp_path / "gen" / "xsub", "val", raw_clip()[None], [4])
    argv = ["--dataset_path", str(tmp_path / "gen"), "--out_folder", str(tmp_path / "out"), "--frames", "16"]
    # A killed run's temporary (its pid no longer runs) is removed; a running writer's is left alone.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    os.makedirs(tmp_path / "out" / "xsub")
    stale = temp_name(tmp_path / "out" / "xsub" / "val_position.npy", pid=int(dead.stdout))
    live = temp_name(tmp_path / "out" / "xsub" / "val_motion.npy", pid=os.getppid())
    for path, size in ((stale, 100), (live, 1)):
        with open(path, "wb") as f:
            f.write(b"x" * size)
    staging = temp_name(tmp_path / "out" / "staging", pid=int(dead.stdout))  # a killed run's staging folder
    os.makedirs(os.path.join(staging, "xsub"))
    open(os.path.join(staging, "xsub", "val_position.npy"), "w").close()
    main(argv)
    assert not os.path.exists(stale) and os.path.exists(live) and not os.path.exists(staging)
    manifest = (tmp_path / "out" / "xsub" / "manifest.json").read_text()
    assert '"frames": 16' in manifest and '"layout": "ntu-rgb+d"' in manifest


def test_a_folder_with_another_runs_arrays_is_refused_unless_overwrite(tmp_path):
    write_part(tmp_path / "gen" / "xsub", "val", raw_clip()[None], [4])
    out = tmp_path / "out"
    argv = ["--dataset_path", str(tmp_path / "gen"), "--out_folder", str(out), "--frames", "16"]
    main(argv)
    before = snapshot(out)
    refusal = (f"error: out_folder {out} holds another run's arrays (xsub/manifest.json, xsub/val_label.npy, "
               "xsub/val_motion.npy, xsub/val_position.npy): pass --overwrite or choose another --out_folder")
    assert error_of(argv) == refusal  # the same settings again
    assert error_of(argv[:-1] + ["32"]) == refusal  # other settings
    assert snapshot(out) == before  # untouched, and no run.lock left
    main(argv[:-1] + ["32", "--overwrite"])  # replaces them, whatever their settings
    assert '"frames": 32' in (out / "xsub" / "manifest.json").read_text()
    assert np.load(out / "xsub" / "val_position.npy").shape == (1, 3, 32, 25, 2)
    # An overwrite that stops midway (a NaN clip in its later part) leaves the old arrays and manifest as they
    # were: before, its first part was replaced (64 frames beside 32) and the manifest deleted.
    write_part(tmp_path / "bad" / "xsub", "train", raw_clip()[None], [4])
    write_part(tmp_path / "bad" / "xsub", "val", np.full((1, 3, 20, 25, 2), np.nan, np.float32), [4])
    main(["--dataset_path", str(tmp_path / "gen"), "--out_folder", str(out), "--frames", "32", "--overwrite"])
    before = snapshot(out)
    assert "holds NaN" in error_of(["--dataset_path", str(tmp_path / "bad"), "--out_folder", str(out), "--overwrite"])
    assert snapshot(out) == before and sorted(os.listdir(out)) == ["xsub"]
    assert json.loads((out / "xsub" / "manifest.json").read_text())["parts"] == {"val": 1}


def test_a_run_into_a_folder_another_process_holds_is_refused_naming_it(tmp_path):
    write_part(tmp_path / "gen" / "xsub", "val", raw_clip()[None], [4])
    out = tmp_path / "out"
    other = hold_lock(out)  # training's run.lock, held by a live process
    try:
        message = error_of(["--dataset_path", str(tmp_path / "gen"), "--out_folder", str(out)])
    finally:
        other.kill()
        other.wait()
    assert message.startswith(f"error: out_folder {out} is in use by pid {other.pid} on {socket.gethostname()} since ")
    assert os.listdir(out) == ["run.lock"]  # nothing of the refused run was written
