"""NW-UCLA per-clip JSON files -> cross-view arrays and label pickles in the NTU database format (docs/method.md §1.2).

    python tools/ucla_gendata.py --data_path ./nwucla --out_folder ./data/ucla [--layout ntu-rgb+d]
    python feeder/preprocess_ntu.py --dataset_path ./data/ucla --out_folder ./data/ucla_frame64 \\
        --layout kinect-v1

One file per clip, `aAA_sSS_eEE_vVV.json` = {"file_name": "aAA_sSS_eEE_vVV", "skeletons": T x 20 x 3
(metres, Kinect v1 joint order), "label": 1..10}; actions a01-a06, a08, a09, a11, a12 are labels 1..10.
Cross-view benchmark `xview`: views 1 and 2 train, view 3 is val. Its validation benchmark `xview_val`, for
choosing settings without view 3: subjects 1-8 of views 1 and 2 train (829 clips), subjects 9 and 10 val (191,
about a fifth). Clips shorter than 2 frames are skipped
and listed. Output `<out>/xview/<part>_data.npy` float32 (N, 3, max_frames, V, M) with the clip as body 1
and zeros as body 2 (M = 2, as NTU), and `<part>_label.pkl` = (names, 0-based labels). `--layout ntu-rgb+d`
writes 25 NTU joints instead (joint_map: joints Kinect v1 lacks copy their parent) so that encoders
pretrained on NTU transfer; then preprocess with `--layout ntu-rgb+d`. No torch here.
"""
import argparse
import json
import os
import re

import numpy as np
from tqdm import tqdm

from feeder.prepare.database import MAX_FLOAT32, OVERWRITE_HELP, claim_database, write_database
from net.utils.layouts import joint_map
from torchlight.io import read_text_lines

ACTIONS = (1, 2, 3, 4, 5, 6, 8, 9, 11, 12)  # action number of label 1..10
TRAIN_VIEWS = (1, 2)
VALIDATION_SUBJECTS = (9, 10)  # xview_val: held out of the training views
NAME = re.compile(r"a(\d\d)_s(\d\d)_e(\d\d)_v(\d\d)")
JOINTS = 20
MIN_FRAMES = 2


def parse_name(path):
    """(action, subject, environment, view) numbers of a clip file name."""
    name = os.path.basename(path).removesuffix(".json")
    match = NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"{path}: file name does not match aAA_sSS_eEE_vVV.json")
    return tuple(map(int, match.groups()))


def read_clip(path):
    """(0-based label, joints float32 (T, 20, 3)) of one clip file, checked against its name."""
    action = parse_name(path)[0]
    if action not in ACTIONS:
        raise ValueError(f"{path}: a{action:02d} is not an NW-UCLA action (a01-a06, a08, a09, a11, a12)")
    try:
        content = json.loads("\n".join(read_text_lines(path)))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not JSON ({err.msg})") from None
    if not isinstance(content, dict) or not {"skeletons", "label"} <= set(content):
        raise ValueError(f"{path}: expected an object with 'skeletons' and 'label'")
    name, label = os.path.basename(path).removesuffix(".json"), ACTIONS.index(action) + 1
    if content.get("file_name", name) != name:
        raise ValueError(f"{path}: file_name {content['file_name']!r} differs from the file's name")
    if content["label"] != label:
        raise ValueError(f"{path}: label {content['label']!r}, but action a{action:02d} is label {label}")
    frames = content["skeletons"]
    if not isinstance(frames, list):
        raise ValueError(f"{path}: skeletons must be a list of frames, got {type(frames).__name__}")
    for t, frame in enumerate(frames):
        if not (isinstance(frame, list) and len(frame) == JOINTS
                and all(isinstance(j, list) and len(j) == 3 for j in frame)):
            raise ValueError(f"{path}: skeletons frame {t + 1} is not {JOINTS} joints x 3 numbers")
    try:
        joints = np.array(frames, dtype=np.float64).reshape(-1, JOINTS, 3)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: skeletons hold a value that is not a number") from None
    if not (np.abs(joints) <= MAX_FLOAT32).all():
        raise ValueError(f"{path}: skeletons hold a value that is not a finite float32")
    return label - 1, joints.astype(np.float32)


def to_array(joints, shape):
    """(T, V, 3) joints -> float32 `shape` (3, max_frames, V, M): body 1, later frames and bodies zero."""
    x = np.zeros(shape, np.float32)
    clip = joints[:shape[1]]
    x[:, :len(clip), :, 0] = clip.transpose(2, 0, 1)
    return x


def gendata(data_path, out_folder, layout="kinect-v1", max_frames=300, num_person=2, overwrite=False):
    """Write the `xview` benchmark (module doc); returns report lines, the skipped short clips included.

    `out_folder` is locked for the run and refused if it holds another run's arrays, unless `overwrite`."""
    if not os.path.isdir(data_path):
        raise FileNotFoundError(f"--data_path {data_path!r} is not a directory")
    files = sorted(f for f in os.listdir(data_path) if f.endswith(".json"))
    if not files:
        raise ValueError(f"no .json files in {data_path}")
    clips, short = {}, []
    parts = {(benchmark, part): {} for benchmark in ("xview", "xview_val") for part in ("train", "val")}
    with claim_database(out_folder, overwrite):
        for file in tqdm(files, desc="ucla_gendata", unit="file"):
            path = os.path.join(data_path, file)
            label, joints = read_clip(path)
            name = file.removesuffix(".json")
            if len(joints) < MIN_FRAMES:
                short.append(f"{name} ({len(joints)} frames)")
                continue
            _, subject, _, view = parse_name(path)
            parts["xview", "train" if view in TRAIN_VIEWS else "val"][name] = label
            if view in TRAIN_VIEWS:
                parts["xview_val", "val" if subject in VALIDATION_SUBJECTS else "train"][name] = label
            clips[name] = joints
        for part in ("train", "val"):
            if not parts["xview", part]:
                raise ValueError(f"no {part} clips in {data_path} (views {TRAIN_VIEWS} train, the others val)")
        if not (parts["xview_val", "train"] and parts["xview_val", "val"]):  # a subset without both subject groups
            del parts["xview_val", "train"], parts["xview_val", "val"]
        index = joint_map("kinect-v1", layout)  # Kinect v1 joints, or the NTU joints made of them
        shape = (3, max_frames, len(index), num_person)
        arrays = ((name, to_array(joints[:, index], shape)) for name, joints in clips.items())
        sizes = write_database(out_folder, parts, arrays, shape)
    report = [f"{b}/{p}: {n} clips" for (b, p), n in sizes.items()]
    long = sum(len(j) > max_frames for j in clips.values())
    if long:
        report.append(f"{long} clips truncated to {max_frames} frames")
    if short:
        report.append(f"skipped {len(short)} clips shorter than {MIN_FRAMES} frames: {', '.join(short)}")
    return report


def main(argv=None):
    """Entry point; bad input ends with one `error: ...` line naming the file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", required=True, help="folder of aAA_sSS_eEE_vVV.json clip files")
    parser.add_argument("--out_folder", required=True)
    parser.add_argument("--layout", choices=("kinect-v1", "ntu-rgb+d"), default="kinect-v1",
                        help="joints of the output: Kinect v1's 20, or mapped onto NTU's 25 for transfer")
    parser.add_argument("--max_frames", type=int, default=300)
    parser.add_argument("--num_person", type=int, choices=(1, 2), default=2,
                        help="bodies per clip; the second is zeros (2 = the NTU shape)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    args = parser.parse_args(argv)
    if args.max_frames < 1:
        raise SystemExit(f"error: --max_frames must be >= 1, got {args.max_frames}")
    try:
        report = gendata(args.data_path, args.out_folder, args.layout, args.max_frames, args.num_person,
                         args.overwrite)
    except (ValueError, OSError) as err:
        raise SystemExit(f"error: {err}") from None
    print("\n".join(report))


if __name__ == "__main__":
    main()
