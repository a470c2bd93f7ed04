"""A PYSKL / MMAction2 skeleton annotation -> the training arrays (docs/datasets.md, "Your own data").

    python tools/pose_gendata.py --annotation poses.pkl --out_folder data/mine [--frames 64]

The annotation is a pickle {"split": {name: [frame_dir, ...]}, "annotations": [{"frame_dir", "label",
"keypoint" (M, T, V, C), optional "keypoint_score" (M, T, V), optional "total_frames"}, ...]}: COCO-17
2D keypoints (C = 2 with keypoint_score, or C = 3 as x, y, score) or NTU-25 3D joints (C = 3). Each split
`<benchmark>_train` / `<benchmark>_val` (or plain `train` / `val`, benchmark `.`) becomes
`<out>/<benchmark>/{train,val}_{position,motion}.npy` float32 (N, 3, frames, V, num_person),
`_label.npy`, `_label.pkl` (names, labels) and `manifest.json`, as feeder/preprocess_ntu.py writes them,
by the same preprocessing. 2D clips hold (x, y, score): the score is a channel of its own that no
geometric step uses (`--scores drop` writes zeros there); a keypoint at (0, 0) or with a score below
`--min_score` is missing, stays 0 and never shortens or shifts its clip; x and y are divided by the
larger side of the annotation's `img_shape` (h, w) when it has one; view alignment and the shear's
depth never touch 2D clips (the `coco` layout has dims 2). No torch here.
"""
import argparse
import os
import pickle
import shutil

import numpy as np

from feeder.prepare.database import MAX_FLOAT32, OVERWRITE_HELP
from feeder.prepare.preprocess import OUTPUTS, part_sizes, preprocess_clip, swap_in, write_streams
from net.utils.layouts import get_layout
from torchlight.io import atomic_path, claim_out_folder, safe_pickle_load, temp_name, write_manifest

LAYOUT_OF_JOINTS = {17: "coco", 25: "ntu-rgb+d"}  # keypoints per body -> the layout they are
PARTS = ("train", "val")


def read_annotation(path):
    """(split, {frame_dir: annotation}) of a PYSKL annotation pickle, read without running its code."""
    content = safe_pickle_load(path, "skeleton annotation pickle")
    if not (isinstance(content, dict) and isinstance(content.get("split"), dict)
            and isinstance(content.get("annotations"), list)):
        raise ValueError(f"{path}: expected a dict with 'split' (name -> clip names) and 'annotations' (a list)")
    clips = {}
    for i, ann in enumerate(content["annotations"]):
        if not (isinstance(ann, dict) and {"frame_dir", "label", "keypoint"} <= set(ann)):
            raise ValueError(f"{path}: annotation {i} lacks frame_dir, label or keypoint")
        if ann["frame_dir"] in clips:
            raise ValueError(f"{path}: clip {ann['frame_dir']!r} is annotated twice")
        clips[ann["frame_dir"]] = ann
    return content["split"], clips


def benchmark_parts(split, clips, path):
    """{(benchmark, part): [frame_dir, ...]} from the split names (module doc), and the names left out."""
    parts, skipped = {}, []
    for name, members in split.items():
        bench, _, part = str(name).rpartition("_") if "_" in str(name) else (".", "", str(name))
        if part not in PARTS:
            skipped.append(str(name))
            continue
        missing = [m for m in members if m not in clips]
        if missing:
            raise ValueError(f"{path}: split {name!r} names clip {missing[0]!r}, which has no annotation")
        parts[bench or ".", part] = list(members)
    if not parts:
        raise ValueError(f"{path}: no split named <benchmark>_train, <benchmark>_val, train or val "
                         f"(found: {', '.join(map(str, split)) or 'none'})")
    return parts, skipped


def keypoints(ann, name):
    """(layout name, x float64 (M, T, V, 3), score (M, T, V) or None) of one annotation, checked."""
    x = np.asarray(ann["keypoint"], dtype=np.float64)
    if x.ndim != 4 or x.shape[3] not in (2, 3) or x.shape[2] not in LAYOUT_OF_JOINTS or x.shape[1] < 1:
        raise ValueError(f"clip {name}: keypoint must be (M, T, 17 or 25, 2 or 3), got {x.shape}")
    if not (np.abs(x) <= MAX_FLOAT32).all():
        raise ValueError(f"clip {name}: keypoint holds NaN, inf or a value beyond float32")
    layout = LAYOUT_OF_JOINTS[x.shape[2]]
    score = ann.get("keypoint_score")
    if get_layout(layout).dims == 3:
        if x.shape[3] != 3:
            raise ValueError(f"clip {name}: NTU-25 keypoints must be 3D (M, T, 25, 3), got {x.shape}")
        return layout, x, None
    if x.shape[3] == 3:  # PYSKL's stacked (x, y, score)
        if score is not None:
            raise ValueError(f"clip {name}: keypoint has a third channel and keypoint_score is given too: "
                             "2D keypoints are (x, y) with the score in keypoint_score")
        x, score = x[..., :2], x[..., 2]
    score = np.ones(x.shape[:3]) if score is None else np.asarray(score, dtype=np.float64)
    if score.shape != x.shape[:3] or not np.isfinite(score).all():
        raise ValueError(f"clip {name}: keypoint_score must be finite numbers of shape {x.shape[:3]}, "
                         f"got {score.shape}")
    return layout, np.concatenate([x, score[..., None]], axis=3), score


def raw_clip(ann, name, num_person, min_score, keep_scores):
    """(layout, clip float64 (3, T, V, num_person), frames): the first bodies, missing keypoints zeroed."""
    layout, x, score = keypoints(ann, name)
    x = x[:num_person]
    if score is not None:
        missing = (x[..., :2] == 0).all(axis=3) | (x[..., 2] < min_score)
        x[missing] = 0
        x[..., :2] /= max(ann.get("img_shape") or (1,))  # pixels -> image widths, as PYSKL normalises
        if not keep_scores:
            x[..., 2] = 0
    clip = np.zeros((3, x.shape[1], x.shape[2], num_person))
    clip[..., :len(x)] = x.transpose(3, 1, 2, 0)
    return layout, clip, int(ann.get("total_frames", x.shape[1]))


def class_index(label, name):
    """`label` as a class index (an integer >= 0), else an error naming the clip."""
    if isinstance(label, (bool, float)) or not isinstance(label, (int, np.integer)) or label < 0:
        raise ValueError(f"clip {name}: label {label!r} is not a class index (an integer >= 0)")
    return int(label)


def write_benchmark(folder, parts, clips, settings, convert):
    """Write the arrays and labels of each part of one benchmark folder, then its manifest."""
    os.makedirs(folder, exist_ok=True)
    for part, names in parts.items():
        labels = np.array([class_index(clips[n]["label"], n) for n in names], dtype=np.int64)
        arrays = (convert(n) for n in names)
        shape = (len(names), 3, settings["frames"], get_layout(settings["layout"]).num_joints, settings["bodies"])
        out = os.path.join(folder, part)
        write_streams(out, shape, arrays, os.path.join(os.path.basename(folder), part))
        with atomic_path(out + "_label.npy") as tmp:
            np.save(tmp, labels.reshape(-1, 1))
        with atomic_path(out + "_label.pkl") as tmp, open(tmp, "wb") as f:
            pickle.dump((list(names), labels.tolist()), f)
    write_manifest(folder, dict(settings, parts=part_sizes(folder)))


def gendata(annotation, out_folder, frames=64, num_person=2, min_score=0.1, scores="keep", overwrite=False):
    """Convert `annotation` (module doc) into `out_folder`; returns report lines. The folder is locked for the
    run and refused if it holds another run's arrays, unless `overwrite`."""
    split, clips = read_annotation(annotation)
    parts, skipped = benchmark_parts(split, clips, annotation)
    layouts = {keypoints(clips[n], n)[0] for members in parts.values() for n in members}
    if len(layouts) != 1:
        raise ValueError(f"{annotation}: the clips mix skeleton layouts ({', '.join(sorted(layouts))})")
    layout = layouts.pop()
    settings = dict(frames=frames, layout=layout, bodies=num_person, source="pose_gendata",
                    scores=scores if get_layout(layout).dims == 2 else "none")

    def convert(name):
        _, clip, length = raw_clip(clips[name], name, num_person, min_score, scores == "keep")
        return preprocess_clip(clip, frames, layout, length=min(length, clip.shape[1]))

    report = []
    with claim_out_folder(out_folder, OUTPUTS, overwrite):
        staging = temp_name(os.path.join(out_folder, "staging"))  # swapped in once complete, as preprocessing's
        try:
            for bench in dict.fromkeys(b for b, _ in parts):
                members = {p: names for (b, p), names in parts.items() if b == bench}
                write_benchmark(os.path.normpath(os.path.join(staging, bench)), members, clips, settings, convert)
                report += [f"{os.path.join(bench, p)}: {len(n)} clips" for p, n in members.items()]
            swap_in(staging, out_folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    labels = {class_index(clips[n]["label"], n) for members in parts.values() for n in members}
    report.append(f"layout {layout}, {max(labels) + 1} classes (model_args.num_class), {frames} frames")
    if skipped:
        report.append(f"splits not named *_train or *_val, left out: {', '.join(skipped)}")
    return report


def main(argv=None):
    """Entry point; bad input ends with one `error: ...` line naming the file or clip."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation", required=True, help="PYSKL / MMAction2 skeleton annotation pickle")
    parser.add_argument("--out_folder", required=True)
    parser.add_argument("--frames", type=int, default=64, help="frames per clip after resizing")
    parser.add_argument("--num_person", type=int, default=2, help="bodies kept per clip (the first ones)")
    parser.add_argument("--min_score", type=float, default=0.1,
                        help="2D: a keypoint scored below this is missing (zeroed)")
    parser.add_argument("--scores", choices=("keep", "drop"), default="keep",
                        help="2D: keep the score as the third channel, or write zeros there")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    args = parser.parse_args(argv)
    for key in ("frames", "num_person"):
        if getattr(args, key) < 1:
            raise SystemExit(f"error: --{key} must be >= 1, got {getattr(args, key)}")
    try:
        report = gendata(args.annotation, args.out_folder, args.frames, args.num_person, args.min_score,
                         args.scores, args.overwrite)
    except (ValueError, OSError) as err:
        raise SystemExit(f"error: {err}") from None
    print("\n".join(report))
