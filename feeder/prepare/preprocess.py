"""Build the fixed-length training arrays of docs/method.md §1.3 from a converter's raw database.

    python feeder/preprocess_ntu.py --dataset_path <gendata out_folder> --out_folder <dir> [--frames 64]

For every folder under the dataset path holding `<part>_data.npy` and `<part>_label.pkl`, writes
`<out>/<same relative folder>/<part>_{position,motion}.npy` float32 (N, 3, frames, V, 2),
`<part>_label.npy` int64 (N, 1), a copy of `<part>_label.pkl` and, once every part is written,
`manifest.json` with the settings (frames, layout) and each part's clip count, which readers check. An
out_folder holding another run's arrays is refused unless --overwrite, whatever that run's settings
(docs/errors.md); the new arrays are built beside the old and swapped in once complete. A clip holding NaN
or inf stops the run naming file and clip. Libraries call `preprocess`; the command line (docs/method.md §6) is
feeder/preprocess_ntu.py.
"""
import argparse
import os
import shutil

import numpy as np
from tqdm import tqdm

from feeder.augment import temporal_resize
from feeder.feeder import read_labels
from feeder.prepare.database import OVERWRITE_HELP
from feeder.streams import motion as motion_stream
from net.utils.layouts import DEFAULT_LAYOUT, get_layout
from torchlight.io import MANIFEST, atomic_path, claim_out_folder, load_npy, temp_name, write_manifest

DATA_SUFFIX = "_data.npy"
OUTPUTS = ("_position.npy", "_motion.npy", "_label.npy", MANIFEST)  # an earlier run's, when found in out_folder


def align_view(x, shoulders):
    """Rotate each body and frame about y so the shoulder line lies along x (docs/method.md §1.3 step 5)."""
    left, right = shoulders
    v = x[:, :, right - 1] - x[:, :, left - 1]            # (C, T, M)
    v[1] = 0
    angle = np.arccos(v[0] / (np.linalg.norm(v, axis=0) + 1e-4))
    # docs/method.md §1.3: the sign comes from the sum over the whole clip (per body), not from each frame.
    angle = np.where(v[2].sum(axis=0) >= 0, -angle, angle)
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]  # (T, 1, M) broadcast over joints
    out = x.copy()
    out[0] = cos * x[0] - sin * x[2]
    out[2] = sin * x[0] + cos * x[2]
    return out


def clip_length(x, layout):
    """Frames of a zero-padded raw clip (C, T, V, M). 3D: the release's count of frames where body 1's first
    joint is not zero. 2D: up to the last frame holding any keypoint, so a keypoint missing in some frames
    ((0, 0): a pose estimator's missing point) neither shortens nor shifts the clip."""
    if layout.dims == 3:
        return int((x[:, :, 0, 0] != 0).any(axis=0).sum())
    frames = np.flatnonzero(x[:2].any(axis=(0, 2, 3)))
    return int(frames[-1]) + 1 if len(frames) else 0


def nearest_present(points, present):
    """`points` (2, T) with every frame where `present` (T,) is false copied from the nearest present frame."""
    ok = np.flatnonzero(present)
    t = np.arange(len(present))
    after = np.clip(np.searchsorted(ok, t), 0, len(ok) - 1)
    before = np.clip(after - 1, 0, len(ok) - 1)
    nearest = np.where(np.abs(ok[before] - t) <= np.abs(ok[after] - t), ok[before], ok[after])
    return points[:, nearest]


def planar_position(x, layout):
    """2D (x, y, score) clip (C, T, V, M) centred on the layout's centre joint in x and y only (the score is no
    coordinate). Missing keypoints ((0, 0)) stay at 0 instead of becoming minus the centre; a frame whose
    centre joint is missing takes the centre of the nearest frame that has it, and a body that never shows
    it the mean of its keypoints."""
    present = x[:2].any(axis=0)                        # (T, V, M)
    centre = np.zeros((2, x.shape[1], x.shape[3]))
    for m in range(x.shape[3]):
        if present[:, layout.center - 1, m].any():
            centre[:, :, m] = nearest_present(x[:2, :, layout.center - 1, m], present[:, layout.center - 1, m])
        elif present[..., m].any():
            centre[:, :, m] = x[:2, :, :, m][:, present[..., m]].mean(axis=1)[:, None]
    out = x.copy()
    out[:2] = np.where(present, x[:2] - centre[:, :, None], 0)
    return out


def planar_motion(x, layout):
    """The motion stream of a 2D clip: zero where a keypoint is missing in either frame, the score kept."""
    present = x[:2].any(axis=0)
    out = motion_stream(x, layout)
    out[:2, :-1] *= present[:-1] & present[1:]
    return out


def preprocess_clip(x, frames=64, layout=DEFAULT_LAYOUT, length=None):
    """(position, motion) float32 (C, frames, V, M) of one raw clip (C, T, V, M), steps 1-5 of docs/method.md §1.3.

    `length`: the clip's frames when the caller knows them (a pose annotation), else `clip_length`. A 2D
    layout's clips are centred in x and y only and never view-aligned (docs/datasets.md, "Your own data")."""
    layout = get_layout(layout)
    x = np.asarray(x, dtype=np.float64)
    c, _, v, m = x.shape
    length = clip_length(x, layout) if length is None else length
    if length == 0:
        zeros = np.zeros((c, frames, v, m), dtype=np.float32)
        return zeros, zeros.copy()
    if layout.dims == 2:
        position, motion = planar_position(x, layout), planar_motion(x, layout)
    else:
        motion = motion_stream(x)
        position = x - x[:, :, layout.center - 1:layout.center]
    position = temporal_resize(position[:, :length], frames)
    motion = temporal_resize(motion[:, :length], frames)
    if layout.dims == 3 and x[2].any():  # 2D keypoints (z = 0) have no depth to align; 1e-4 would turn them
        position = align_view(position, layout.shoulders)
    return position.astype(np.float32), motion.astype(np.float32)


def find_parts(dataset_path):
    """(relative folder, part) of every `<part>_data.npy` under `dataset_path`, sorted."""
    if not os.path.isdir(dataset_path):
        raise FileNotFoundError(f"dataset path {dataset_path} is not a directory")
    parts = []
    for root, dirs, files in os.walk(dataset_path):
        dirs.sort()
        rel = os.path.relpath(root, dataset_path)
        parts += [(rel, f[:-len(DATA_SUFFIX)]) for f in sorted(files) if f.endswith(DATA_SUFFIX)]
    if not parts:
        raise FileNotFoundError(f"no *{DATA_SUFFIX} found under {dataset_path}")
    return parts


def load_part(folder, part, layout):
    """The raw array (memory-mapped) and the (names, labels) pickle of one part, validated."""
    data_file = os.path.join(folder, part + DATA_SUFFIX)
    label_file = os.path.join(folder, part + "_label.pkl")
    data = load_npy(data_file)
    if data.ndim != 5 or data.shape[1] != 3 or data.shape[3] != layout.num_joints:
        raise ValueError(f"{data_file}: expected shape (N, 3, T, {layout.num_joints}, M), got {data.shape}")
    if not os.path.isfile(label_file):
        raise FileNotFoundError(f"label file {label_file} not found (needed beside {data_file})")
    names, labels = read_labels(label_file)
    if len(labels) != len(data):
        raise ValueError(f"{label_file}: {len(labels)} labels for {len(data)} clips in {data_file}")
    return data, label_file, names, labels.reshape(-1, 1)


def write_streams(out, shape, clips, desc):
    """Write `<out>_position.npy` and `<out>_motion.npy` float32 `shape` (N, C, frames, V, M) from `clips`, which
    yields the N (position, motion) pairs in order; both keep a temporary name until complete."""
    with atomic_path(out + "_position.npy") as pos_tmp, atomic_path(out + "_motion.npy") as mot_tmp:
        position = np.lib.format.open_memmap(pos_tmp, mode="w+", dtype=np.float32, shape=shape)
        motion = np.lib.format.open_memmap(mot_tmp, mode="w+", dtype=np.float32, shape=shape)
        for i, pair in enumerate(tqdm(clips, desc=desc, total=shape[0], dynamic_ncols=True)):
            position[i], motion[i] = pair
        position.flush()
        motion.flush()
        del position, motion


def process_part(folder, part, out_folder, frames, layout):
    """Write the position, motion and label arrays of one part (docs/method.md §1.3 outputs)."""
    data, label_file, names, labels = load_part(folder, part, layout)
    n, c, _, v, m = data.shape

    def clips():
        for i in range(n):
            if not np.isfinite(data[i]).all():
                raise ValueError(f"{os.path.join(folder, part + DATA_SUFFIX)}: clip {i} ({names[i]}) holds NaN or inf")
            yield preprocess_clip(data[i], frames, layout)

    out = os.path.join(out_folder, part)
    write_streams(out, (n, c, frames, v, m), clips(), os.path.join(folder, part))
    with atomic_path(out + "_label.npy") as tmp:
        np.save(tmp, labels)
    with atomic_path(out + "_label.pkl") as tmp:
        shutil.copyfile(label_file, tmp)


def swap_in(staging, out_folder):
    """Move every file built under `staging` to the same place under `out_folder`, each by one atomic rename,
    the manifests last: until then the old manifests stand, and a reader meeting a part of another run
    refuses it (feeder.feeder.check_manifest)."""
    moves = []
    for root, _, files in os.walk(staging):
        rel = os.path.relpath(root, staging)
        moves += [(os.path.join(root, f), os.path.normpath(os.path.join(out_folder, rel, f))) for f in files]
    for src, dst in sorted(moves, key=lambda move: os.path.basename(move[0]) == MANIFEST):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)


def preprocess(dataset_path, out_folder, frames=64, layout=DEFAULT_LAYOUT, overwrite=False):
    """Preprocess every benchmark folder found under `dataset_path` into the same folders under `out_folder`.

    `out_folder` is locked for the run; arrays or a manifest of another run in it are refused before anything
    is written unless `overwrite`. Everything is built in a hidden staging folder inside `out_folder` and swapped
    in once complete (`swap_in`): a run that stops midway leaves the old arrays and manifests as they were.
    """
    if frames < 1:
        raise ValueError(f"frames must be a positive integer, got {frames}")
    layout = get_layout(layout)
    parts = find_parts(dataset_path)
    with claim_out_folder(out_folder, OUTPUTS, overwrite):
        staging = temp_name(os.path.join(out_folder, "staging"))
        try:
            for rel, part in parts:
                process_part(os.path.join(dataset_path, rel), part, os.path.normpath(os.path.join(staging, rel)),
                             frames, layout)
            for rel in dict.fromkeys(rel for rel, _ in parts):
                folder = os.path.normpath(os.path.join(staging, rel))
                write_manifest(folder, dict(frames=frames, layout=layout.name, parts=part_sizes(folder)))
            swap_in(staging, out_folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def part_sizes(folder):
    """{part: clips} of the `<part>_position.npy` arrays in `folder` (a manifest's `parts`)."""
    return {f.removesuffix("_position.npy"): len(np.load(os.path.join(folder, f), mmap_mode="r"))
            for f in sorted(os.listdir(folder)) if f.endswith("_position.npy")}


def main(argv=None):
    """Command line of docs/method.md §6; bad input ends with one `error: ...` line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_path", required=True, help="out_folder of tools/ntu_gendata.py")
    parser.add_argument("--out_folder", required=True)
    parser.add_argument("--frames", type=int, default=64, help="frames per clip after resizing")
    parser.add_argument("--layout", default=DEFAULT_LAYOUT, help="skeleton layout of the arrays")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    args = parser.parse_args(argv)
    try:
        preprocess(args.dataset_path, args.out_folder, args.frames, args.layout, args.overwrite)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
