"""Synthetic NTU RGB+D `.skeleton` files for demos and tests (file format of docs/method.md §1.1).

    python -m feeder.prepare.demo --out data/demo_skeletons --num_files 1000 --seed 0

A 25-joint Kinect v2 body with adult bone lengths performs one of `CLASSES` (wave left arm, wave
right arm, raise both arms, clap, punch, kick, squat, jump, bow, march in place, and the two-person
handshake and push); every clip draws its own performer size, speed, phase, amplitude, camera
(C001-C003 at -45, 0, +45 degrees of yaw, about 3 m away), noise and length. Class k is written
as action A(k+1), so labels are 0..K-1. File i depends only on (seed, i). No torch here.
"""
import argparse
import functools
import itertools
import os

import numpy as np

from feeder.prepare.demo_body import bend_knees, forward_kinematics, rest_pose, rotate_yaw, set_arm

CAMERA_YAW = {1: -np.pi / 4, 2: 0.0, 3: np.pi / 4}
SETUPS, PERFORMERS = (1, 2), (1, 2, 3, 4, 5, 6, 7, 8)  # NTU 60 xsub: 3, 6, 7 are val; xset: S001 val
FRAMES = (40, 120)
NOISE = 0.004  # metres
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MISSING_LISTS = [os.path.join(REPO, "resource", f"NTU_RGBD{n}_samples_with_missing_skeletons.txt")
                 for n in (60, 120)]
JOINT_LINE = "%.7g %.7g %.7g %.4f %.4f %.3f %.3f 0 0 0 0 2\n"


def _bump(t, t0, t1):
    """0 outside [t0, t1], rising smoothly to 1 in the middle."""
    s = np.clip((t - t0) / (t1 - t0), 0.0, 1.0)
    return np.sin(np.pi * s) ** 2


def _hold(t, t0, t1, edge=0.2):
    """0 outside [t0, t1], 1 inside except for smooth ramps of `edge` of the interval at both ends."""
    s = np.clip((t - t0) / (t1 - t0), 0.0, 1.0)
    ramp = np.clip(np.minimum(s, 1.0 - s) / edge, 0.0, 1.0)
    return ramp * ramp * (3.0 - 2.0 * ramp)


def _envelopes(t, r):
    """hold (on for the event), bump (peaks once in the event) and osc (periodic, -1..1) over time t."""
    osc = np.sin(2 * np.pi * r["cycles"] * t + r["phase"])
    return _hold(t, r["t0"], r["t1"]), _bump(t, r["t0"], r["t1"]), osc


def _one(pose, r):
    """A single performer facing the camera, up to the clip's yaw jitter."""
    return [(pose, r["yaw"], 0.0)]


def _pair(pose, other, gap):
    """Two performers `gap` metres apart facing each other (the first stands on the left)."""
    return [(pose, -np.pi / 2, -gap / 2), (other, np.pi / 2, gap / 2)]


def _wave(t, r, arm):
    pose, (hold, _, osc) = rest_pose(t), _envelopes(t, r)
    up = 0.12 + hold * 2.0
    set_arm(pose, arm, up, up + hold * (0.6 + 0.45 * r["amp"] * osc), azimuth=0.3)
    return _one(pose, r)


def _raise_arms(t, r):
    pose, (_, bump, _) = rest_pose(t), _envelopes(t, r)
    for s in "lr":
        set_arm(pose, s, 0.12 + bump * 2.8 * r["amp"], 0.15 + bump * 2.85 * r["amp"], azimuth=0.0)
    return _one(pose, r)


def _clap(t, r):
    pose, (hold, _, osc) = rest_pose(t), _envelopes(t, r)
    for s in "lr":  # forearms swing towards the midline (azimuth beyond pi/2) and back
        pose[s + "_upper"] = np.stack([0.12 + hold * r["amp"], hold * 1.75], -1)
        pose[s + "_fore"] = np.stack([0.15 + hold * 1.4 * r["amp"],
                                      np.pi / 2 * (1 - hold) + hold * (1.6 + 0.45 * (0.5 + 0.5 * osc))], -1)
    return _one(pose, r)


def _punch(t, r):
    pose, (hold, _, osc) = rest_pose(t), _envelopes(t, r)
    for s, extend in (("r", np.maximum(osc, 0) ** 2), ("l", np.maximum(-osc, 0) ** 2)):
        set_arm(pose, s, 0.12 + hold * (0.4 + 1.0 * extend * r["amp"]), 0.15 + hold * (2.15 - 0.75 * extend),
                azimuth=np.pi / 2 - 0.2)
    return _one(pose, r)


def _kick(t, r):
    pose, (_, bump, _) = rest_pose(t), _envelopes(t, r)
    lift = 1.3 * r["amp"] * bump
    pose["r_thigh"] = np.stack([lift, np.full_like(t, np.pi / 2)], -1)
    pose["r_shin"] = np.stack([lift * (0.3 + 0.7 * bump), np.full_like(t, np.pi / 2)], -1)
    pose["pitch"] -= 0.15 * bump
    for s in "lr":
        pose[s + "_upper"][:, 0] += 0.5 * bump
    return _one(pose, r)


def _squat(t, r):
    pose, (hold, _, _) = rest_pose(t), _envelopes(t, r)
    bend_knees(pose, 1.25 * r["amp"] * hold)
    pose["pitch"] += 0.45 * hold
    for s in "lr":
        set_arm(pose, s, 0.12 + 1.3 * hold, 0.15 + 1.3 * hold)
    return _one(pose, r)


def _jump(t, r):
    pose, (t0, t1) = rest_pose(t), (r["t0"], r["t1"])
    crouch = _bump(t, t0, t0 + 0.3 * (t1 - t0)) + _bump(t, t0 + 0.6 * (t1 - t0), t1)
    air = _bump(t, t0 + 0.2 * (t1 - t0), t0 + 0.7 * (t1 - t0))
    bend_knees(pose, 0.8 * crouch)
    pose["root"][:, 1] += 0.3 * r["amp"] * air
    for s in "lr":
        set_arm(pose, s, 0.12 + 2.5 * air - 0.6 * crouch, 0.15 + 2.6 * air - 0.4 * crouch)
    return _one(pose, r)


def _bow(t, r):
    pose, (hold, _, _) = rest_pose(t), _envelopes(t, r)
    pose["pitch"] += 0.95 * r["amp"] * hold
    pose["root"][:, 2] += 0.08 * hold
    for s in "lr":
        set_arm(pose, s, 0.12 + 0.7 * hold, 0.15 + 0.8 * hold)
    return _one(pose, r)


def _march(t, r):
    pose, (hold, _, osc) = rest_pose(t), _envelopes(t, r)
    for s, sign in (("l", 1.0), ("r", -1.0)):  # each arm swings against the leg of its side
        pose[s + "_thigh"] = np.stack([hold * 1.1 * r["amp"] * np.maximum(sign * osc, 0),
                                       np.full_like(t, np.pi / 2)], -1)
        set_arm(pose, s, 0.12 - hold * 0.6 * sign * osc, 0.15 + hold * (0.3 - 0.6 * sign * osc))
    pose["root"][:, 1] += 0.03 * hold * np.abs(osc)
    return _one(pose, r)


def _handshake(t, r):
    (hold, _, osc), bodies = _envelopes(t, r), (rest_pose(t), rest_pose(t))
    for pose in bodies:  # right hands reach forwards and inwards to meet between the performers
        pose["r_upper"] = np.stack([0.12 + hold * 0.75, np.pi / 2 + 0.3 * hold], -1)
        pose["r_fore"] = np.stack([0.15 + hold * (1.25 + 0.18 * osc), np.pi / 2 + 0.35 * hold], -1)
    return _pair(*bodies, r["gap"] + 0.1)


def _push(t, r):
    pose, other, (t0, t1) = rest_pose(t), rest_pose(t), (r["t0"], r["t1"])
    extend = _hold(t, t0, t0 + 0.6 * (t1 - t0), edge=0.3)
    for s in "lr":
        set_arm(pose, s, 0.12 + 1.3 * extend * r["amp"], 0.15 + 1.4 * extend * r["amp"])
        set_arm(other, s, 0.12 + 0.5 * extend, 0.15 + 0.9 * extend)
    contact = t0 + 0.3 * (t1 - t0)
    shove = np.clip((t - contact) / (0.3 * (t1 - t0)), 0.0, 1.0)
    shove = shove * shove * (3 - 2 * shove)
    pose["root"][:, 2] -= 0.15 * shove  # the pusher steps in, the other is driven back and bends
    other["root"][:, 2] += 0.5 * r["amp"] * shove
    other["pitch"] += 0.3 * _bump(t, contact, contact + 0.5 * (t1 - t0))
    return _pair(pose, other, r["gap"])


MOTIONS = {  # class name -> (t, clip parameters) -> [(pose, scene yaw, scene x) per body]
    "wave left arm": functools.partial(_wave, arm="l"),
    "wave right arm": functools.partial(_wave, arm="r"),
    "raise both arms": _raise_arms,
    "clap": _clap,
    "punch": _punch,
    "kick": _kick,
    "squat": _squat,
    "jump": _jump,
    "bow": _bow,
    "march in place": _march,
    "handshake": _handshake,
    "push": _push,
}
CLASSES = tuple(MOTIONS)  # class k is action A(k+1), label k
TWO_PERSON = ("handshake", "push")



def clip_joints(label, camera, rng, nuisance=0.0, timing=0.0):
    """(T, bodies, 25, 3) camera-space joints of one random clip of class index `label`.

    `nuisance` > 0 makes the set hard: the action's amplitude shrinks, every limb holds its own random
    offset, and the scene is sheared by a random matrix with off-diagonal entries up to `nuisance`.
    `timing` in [0, 1] shortens the action to (1 - timing / 2) of its usual length and lets it start
    anywhere it still fits: at 1 it fills 30-40 % of the clip at a random time, so a classifier has to
    find it instead of reading each frame at a fixed moment of the action.
    """
    T = int(rng.integers(FRAMES[0], FRAMES[1] + 1))
    t0 = rng.uniform(0.0, 0.25)
    length = rng.uniform(0.6, 0.8) * (1 - timing / 2)
    t0 += timing * rng.uniform(0.0, 1.0) * (0.75 - length)
    r = {"t0": t0, "t1": min(1.0, t0 + length), "cycles": rng.uniform(2.0, 4.0),
         "phase": rng.uniform(0, 2 * np.pi), "amp": rng.uniform(0.8, 1.15) / (1 + nuisance),
         "yaw": rng.normal(0, 0.15), "gap": rng.uniform(0.8, 1.0)}
    t = np.linspace(0.0, 1.0, T)
    bodies = []
    for pose, yaw, x in MOTIONS[CLASSES[label]](t, r):
        pose["root"][:, 0] += 0.02 * np.sin(2 * np.pi * 0.4 * t + r["phase"] + x)  # idle sway
        for key in [k for k in pose if k.endswith(("_upper", "_fore", "_thigh", "_shin"))]:
            pose[key] = pose[key] + rng.normal(0, nuisance * 0.5, 2)
        local = forward_kinematics(pose, rng.uniform(0.85, 1.15))
        bodies.append(rotate_yaw(local, yaw) + [x, 0.0, 0.0])
    scene = np.stack(bodies, 1)
    if nuisance:
        shear = np.eye(3) + rng.uniform(-nuisance, nuisance, (3, 3)) * (1 - np.eye(3))
        scene = scene @ shear.T
    view = rotate_yaw(scene, CAMERA_YAW[camera] + rng.normal(0, 0.1))
    offset = [rng.uniform(-0.3, 0.3), rng.uniform(-0.1, 0.25), rng.uniform(2.7, 3.4)]
    return view + offset + rng.normal(0, NOISE, view.shape)


def skeleton_text(joints, body_ids):
    """Text of a `.skeleton` file (docs/method.md §1.1) for (T, B, 25, 3) joints."""
    T, B = joints.shape[:2]
    x, y, z = np.moveaxis(joints, -1, 0)
    columns = [x, y, z, 256 + 365 * x / z, 212 - 365 * y / z, 960 + 1060 * x / z, 540 - 1060 * y / z]
    values = np.stack(columns, -1)  # (T, B, 25, 7), in the order the format string consumes them
    frame = f"{B}\n" + "".join(f"{i} 0 1 1 1 1 0 0 0 2\n25\n" + JOINT_LINE * 25 for i in body_ids)
    return (f"{T}\n" + frame * T) % tuple(values.ravel().tolist())


def _missing_names():
    """Names in the shipped missing-skeleton lists: gendata would drop them, so demo clips avoid them."""
    names = set()
    for path in MISSING_LISTS:
        with open(path) as f:
            names.update(line.strip() for line in f)
    return names


def _class_names(label, seed, missing):
    """Endless distinct names for class `label`: a shuffled setup/camera/performer grid per replication."""
    grid = [(s, c, p) for s in SETUPS for c in CAMERA_YAW for p in PERFORMERS]
    order = np.random.default_rng([seed, label, 1]).permutation(len(grid))
    for replication in itertools.count(1):
        for setup, camera, performer in (grid[k] for k in order):
            name = f"S{setup:03d}C{camera:03d}P{performer:03d}R{replication:03d}A{label + 1:03d}"
            if name not in missing:
                yield name + ".skeleton"


def clip_names(num_files, seed):
    """File names of clips 0..num_files-1; clip i is of class i % K."""
    missing = _missing_names()
    streams = [_class_names(label, seed, missing) for label in range(len(CLASSES))]
    return [next(streams[index % len(CLASSES)]) for index in range(num_files)]


def generate(out_dir, num_files=480, seed=0, nuisance=0.0, timing=0.0):
    """Write `num_files` demo clips into `out_dir`; returns their file names in writing order."""
    if num_files < 1:
        raise ValueError(f"num_files must be >= 1, got {num_files}")
    os.makedirs(out_dir, exist_ok=True)
    names = clip_names(num_files, seed)
    for index, name in enumerate(names):
        camera = int(name[5:8])
        rng = np.random.default_rng([seed, index, 0])
        joints = clip_joints(index % len(CLASSES), camera, rng, nuisance, timing)
        body_ids = 72057594037927936 + rng.integers(0, 10**6, joints.shape[1])
        with open(os.path.join(out_dir, name), "w") as f:
            f.write(skeleton_text(joints, body_ids))
    return names


def main(argv=None):
    """Command line: `--out DIR [--num_files N] [--seed S] [--nuisance X] [--timing X]`."""
    parser = argparse.ArgumentParser(description="write synthetic NTU-format .skeleton files")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num_files", type=int, default=480)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nuisance", type=float, default=0.0, help="see clip_joints")
    parser.add_argument("--timing", type=float, default=0.0, help="see clip_joints")
    args = parser.parse_args(argv)
    try:
        names = generate(args.out, args.num_files, args.seed, args.nuisance, args.timing)
    except (ValueError, OSError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {len(names)} clips of {len(CLASSES)} classes to {args.out}")


if __name__ == "__main__":
    main()
