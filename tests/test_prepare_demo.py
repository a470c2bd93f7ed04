"""feeder/prepare/demo.py: synthetic NTU-format clips (file format of docs/method.md §1.1)."""
import os

import numpy as np
import pytest

from feeder.prepare.demo import CLASSES, FRAMES, TWO_PERSON, clip_joints, clip_names, generate, main
from feeder.prepare.ntu import is_training, parse_name, read_skeleton

NUM_FILES = 36  # three clips of every class
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, generate(out, num_files=NUM_FILES, seed=3)


def frames_with_data(x, body):
    return int((np.abs(x[..., body]).sum(axis=(0, 2)) > 0).sum())


def joint_speed(path):
    """Mean distance per frame travelled by each joint of body 1."""
    x = read_skeleton(path)
    body = x[:, :frames_with_data(x, 0), :, 0]
    return np.linalg.norm(np.diff(body, axis=1), axis=0).mean(axis=0)


def test_names_cover_every_class_once_per_cycle_and_all_splits(demo):
    _, names = demo
    assert len(names) == len(set(names)) == NUM_FILES
    labels = [parse_name(n).action - 1 for n in names]
    assert labels == [i % len(CLASSES) for i in range(NUM_FILES)]
    assert {parse_name(n).camera for n in names} == {1, 2, 3}
    for benchmark in ("xsub", "xview", "xset"):
        assert {is_training(n, benchmark) for n in names} == {True, False}, benchmark


def test_names_are_unique_prefix_stable_and_avoid_the_missing_lists():
    names = clip_names(2000, seed=0)
    assert len(set(names)) == 2000 and clip_names(50, seed=0) == names[:50]
    for n in (60, 120):
        with open(os.path.join(REPO, "resource", f"NTU_RGBD{n}_samples_with_missing_skeletons.txt")) as f:
            missing = {line.strip() + ".skeleton" for line in f}
        assert not missing & set(names)


def test_same_seed_same_bytes_other_seed_differs(demo, tmp_path):
    out, names = demo
    again = generate(tmp_path / "a", num_files=NUM_FILES, seed=3)
    assert again == names
    for name in names[:13]:
        assert (tmp_path / "a" / name).read_bytes() == (out / name).read_bytes()
    other = generate(tmp_path / "b", num_files=2, seed=4)
    assert (tmp_path / "b" / other[0]).read_bytes() != (out / names[0]).read_bytes()


def test_file_layout_matches_the_ntu_format(demo):
    out, names = demo
    lines = (out / names[CLASSES.index("handshake")]).read_text().splitlines()
    frames = int(lines[0])
    assert FRAMES[0] <= frames <= FRAMES[1]
    assert lines[1] == "2" and len(lines[2].split()) == 10 and lines[3] == "25"
    assert all(len(line.split()) == 12 for line in lines[4:29])
    assert len(lines) == 1 + frames * (1 + 2 * 27)


def test_clips_parse_back_with_the_right_number_of_bodies(demo):
    out, names = demo
    for name in names:
        x = read_skeleton(out / name)
        frames = int((out / name).read_text().split("\n", 1)[0])
        two = CLASSES[parse_name(name).action - 1] in TWO_PERSON
        assert frames_with_data(x, 0) == frames
        assert frames_with_data(x, 1) == (frames if two else 0), name


def test_bodies_are_human_sized_about_three_metres_away(demo):
    out, names = demo
    x = read_skeleton(out / names[0])
    frames = frames_with_data(x, 0)
    body = x[:, :frames, :, 0]
    upper_arm = np.linalg.norm(body[:, :, 4] - body[:, :, 5], axis=0)  # left shoulder - left elbow
    assert 0.2 < np.median(upper_arm) < 0.4
    height = body[1, :, 3] - body[1, :, 15]  # head above left foot
    assert 1.2 < np.median(height) < 2.0
    assert 2.3 < body[2, :, 0].mean() < 3.8


def test_classes_move_differently(demo):
    """Mean speed of each hand/foot differs between a wave of the left and of the right arm and a kick."""
    out, names = demo
    left, right, kick = (joint_speed(out / names[CLASSES.index(c)])
                         for c in ("wave left arm", "wave right arm", "kick"))
    assert left[7] > 3 * left[11] and right[11] > 3 * right[7]  # the waving hand moves
    assert kick[19] > 3 * kick[15]  # the right foot kicks


def test_command_line(tmp_path):
    main(["--out", str(tmp_path), "--num_files", "3", "--seed", "1"])
    assert len(os.listdir(tmp_path)) == 3
    with pytest.raises(SystemExit, match="num_files"):
        main(["--out", str(tmp_path), "--num_files", "0"])


def active_window(joints, joint=7, share=0.1):
    """(first, last) fraction of the clip where `joint` moves faster than `share` of its top speed."""
    speed = np.linalg.norm(np.diff(joints[:, 0, joint], axis=0), axis=-1)
    moving = np.flatnonzero(speed > share * speed.max())
    return moving[0] / len(speed), moving[-1] / len(speed)


def test_timing_shortens_the_action_and_moves_it_anywhere_in_the_clip():
    """timing 0: the wave starts in the first quarter and lasts 60-80 % of the clip; timing 1: it lasts
    about half that and its start ranges over the clip."""
    wave = CLASSES.index("wave left arm")
    windows = {timing: [active_window(clip_joints(wave, 2, np.random.default_rng([5, i]), timing=timing))
                        for i in range(40)] for timing in (0.0, 1.0)}
    starts = {t: np.array([w[0] for w in ws]) for t, ws in windows.items()}
    lengths = {t: np.array([b - a for a, b in ws]) for t, ws in windows.items()}
    assert starts[0.0].max() < 0.3 and 0.5 < lengths[0.0].mean() < 0.85
    assert starts[1.0].max() > 0.5 and 0.2 < lengths[1.0].mean() < 0.45
