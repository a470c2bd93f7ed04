"""PKU-MMD Part I / II skeleton and label files -> per-benchmark arrays and label pickles (docs/method.md §1.2 format).

    python tools/pku_gendata.py --skeleton_path PKU_Skeleton_Renew --label_path Train_Label_PKU_final \\
        --xsub cross-subject.txt --xview cross-view.txt --out_folder ./data/pku1 [--part 2]
    python feeder/preprocess_ntu.py --dataset_path ./data/pku1 --out_folder ./data/pku1_frame64

Skeleton file `<video>.txt`: one frame per line, 150 numbers = 2 bodies x 25 joints x (x, y, z), Kinect v2
joint order as NTU (a missing body is zeros). Label file `<video>.txt` (same name, other folder): one action
per line, `label,start_frame,end_frame,confidence`; labels count from 1 (51 classes in Part I, 41 in
Part II), frames count from 1 (a start of 0 reads as 1) and both ends belong to the action. Every action
becomes one clip named `<video>_<label line, 3 digits>`; frames past `--max_frames` are dropped, as NTU's.
Split file: the official text, a "Training videos:" section and a "Validation videos:" section (any header
word starting with "train", or with "val" or "test", so the official "Validataion" reads), video names
separated by commas or spaces on the header line or the lines after it. No torch here.
"""
import argparse
import os
import re
from collections import Counter

import numpy as np
from tqdm import tqdm

from feeder.prepare.database import MAX_FLOAT32, OVERWRITE_HELP, claim_database, write_database
from torchlight.io import read_text_lines

NUM_CLASSES = {1: 51, 2: 41}
BODIES, JOINTS = 2, 25
FIELDS = BODIES * JOINTS * 3
HEADER = re.compile(r"\s*([A-Za-z]+)[^:,]*:(.*)")


def _section(word):
    """'train' or 'val' for a split-file header word (lenient: 'Validataion' is the official spelling)."""
    word = word.lower()
    return "train" if word.startswith("train") else "val" if word.startswith(("val", "test")) else None


def read_split(path):
    """(train videos, val videos) of an official split file, each a set of names (format: module doc)."""
    parts, current = {"train": set(), "val": set()}, None
    with open(path) as f:
        for i, line in enumerate(f, 1):
            header = HEADER.match(line)
            if header:
                current = _section(header[1])
                if current is None:
                    raise ValueError(f"{path}:{i}: unknown section {header[1]!r} (Training or Validation)")
                line = header[2]
            names = [n for n in re.split(r"[\s,]+", line) if n]
            if names and current is None:
                raise ValueError(f"{path}:{i}: video names before a 'Training videos:' header")
            if names:
                parts[current].update(names)
    both = parts["train"] & parts["val"]
    if both:
        raise ValueError(f"{path}: videos in both training and validation: {', '.join(sorted(both)[:5])}")
    for part, names in parts.items():
        if not names:
            raise ValueError(f"{path}: no {'training' if part == 'train' else 'validation'} videos")
    return parts["train"], parts["val"]


def read_actions(path, num_classes):
    """(label line, 0-based label, first frame, last frame) of every action in a label file."""
    actions = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.strip().rstrip(",").split(",")
            try:
                label, start, end = (int(v) for v in fields[:3])
                float(fields[3])
                ok = len(fields) == 4
            except (ValueError, IndexError):
                ok = False
            if not ok:
                raise ValueError(f"{path}:{i}: expected label,start_frame,end_frame,confidence, "
                                 f"got {line.strip()!r}")
            if not 1 <= label <= num_classes:
                raise ValueError(f"{path}:{i}: label {label} outside 1..{num_classes}")
            if not 0 <= start <= end:
                raise ValueError(f"{path}:{i}: bad frame interval {start}..{end}")
            actions.append((i, label - 1, max(start, 1), end))
    return actions


def _bad_line(path, lines):
    """ValueError naming the first line that is not FIELDS finite numbers."""
    for i, line in enumerate(lines, 1):
        tokens = line.split()
        if len(tokens) != FIELDS:
            return ValueError(f"{path}:{i}: expected {FIELDS} numbers, got {len(tokens)}")
        for token in tokens:
            try:
                ok = abs(float(token)) <= MAX_FLOAT32  # false for nan and inf
            except ValueError:
                ok = False
            if not ok:
                return ValueError(f"{path}:{i}: bad number {token!r}")
    return ValueError(f"{path}: unreadable skeleton file")


def read_video(path):
    """The whole skeleton file as float32 (3, T, 25, 2) (C, T, V, M), errors naming file and line."""
    lines = read_text_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"{path}:1: expected {FIELDS} numbers per line, the file is empty")
    try:  # fast path; on any problem the line-by-line scan names the bad line
        rows = np.loadtxt(lines, dtype=np.float64, ndmin=2, comments=None)
        ok = rows.shape == (len(lines), FIELDS) and (np.abs(rows) <= MAX_FLOAT32).all()
    except ValueError:
        ok = False
    if not ok:
        raise _bad_line(path, lines)
    return rows.reshape(len(rows), BODIES, JOINTS, 3).transpose(3, 0, 2, 1).astype(np.float32)


def cut(video, first, last, max_frames):
    """Frames first..last (1-based, inclusive) of a video (3, T, 25, 2), zero-padded to max_frames."""
    x = np.zeros((3, max_frames, JOINTS, BODIES), np.float32)
    clip = video[:, first - 1:min(last, first - 1 + max_frames)]
    x[:, :clip.shape[1]] = clip
    return x


def plan(skeleton_path, label_path, splits, num_classes):
    """Videos that have both files, their actions, and {(benchmark, part): {clip name: label}}."""
    for folder in (skeleton_path, label_path):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder} is not a directory")
    if not splits:
        raise ValueError("give at least one split file (--xsub or --xview)")
    members = {benchmark: read_split(path) for benchmark, path in splits.items()}
    listed = sorted(set().union(*(train | val for train, val in members.values())))
    found = [v for v in listed if os.path.isfile(os.path.join(skeleton_path, v + ".txt"))
             and os.path.isfile(os.path.join(label_path, v + ".txt"))]
    actions = {v: read_actions(os.path.join(label_path, v + ".txt"), num_classes) for v in found}
    parts = {}
    for benchmark, (train, val) in members.items():
        for part, videos in (("train", train), ("val", val)):
            parts[benchmark, part] = {f"{v}_{line:03d}": label for v in sorted(videos.intersection(found))
                                      for line, label, _, _ in actions[v]}
            if not parts[benchmark, part]:
                raise ValueError(f"{splits[benchmark]}: no {part} video has actions in both {skeleton_path} "
                                 f"and {label_path}")
    return found, actions, parts, sorted(set(listed) - set(found))


def gendata(skeleton_path, label_path, out_folder, splits, part=1, max_frames=300, overwrite=False):
    """Cut every labelled action of the split videos into a clip and write each benchmark (module doc).

    `splits` maps a benchmark name (xsub, xview) to its split file. `out_folder` is locked for the run and
    refused if it holds another run's arrays, unless `overwrite`. Returns a list of report lines.
    """
    if part not in NUM_CLASSES:
        raise ValueError(f"PKU-MMD part must be 1 or 2, got {part!r}")
    found, actions, parts, missing = plan(skeleton_path, label_path, splits, NUM_CLASSES[part])
    counts = Counter()

    def clips():
        for video in tqdm(found, desc="pku_gendata", unit="video"):
            x = read_video(os.path.join(skeleton_path, video + ".txt"))
            length = x.shape[1]
            for line, _, first, last in actions[video]:
                if first > length:
                    raise ValueError(f"{os.path.join(label_path, video)}.txt:{line}: the action starts at "
                                     f"frame {first}, the skeleton file has {length} frames")
                counts["cut at the end of their skeleton file"] += last > length
                counts[f"truncated to {max_frames} frames"] += min(last, length) - first >= max_frames
                yield f"{video}_{line:03d}", cut(x, first, last, max_frames)

    with claim_database(out_folder, overwrite):
        sizes = write_database(out_folder, parts, clips(), (3, max_frames, JOINTS, BODIES))
    report = [f"{benchmark}/{name}: {n} clips" for (benchmark, name), n in sizes.items()]
    if missing:
        report.append(f"skipped {len(missing)} videos of the split files without skeleton or label file: "
                      f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    return report + [f"{n} actions {what}" for what, n in counts.items() if n]


def main(argv=None):
    """Entry point; bad input ends with one `error: ...` line naming file and line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skeleton_path", required=True, help="folder of <video>.txt skeleton files")
    parser.add_argument("--label_path", required=True, help="folder of <video>.txt label files")
    parser.add_argument("--out_folder", required=True)
    parser.add_argument("--xsub", help="official cross-subject split file")
    parser.add_argument("--xview", help="official cross-view split file")
    parser.add_argument("--part", type=int, choices=sorted(NUM_CLASSES), default=1, help="PKU-MMD part")
    parser.add_argument("--max_frames", type=int, default=300)
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    args = parser.parse_args(argv)
    if args.max_frames < 1:
        raise SystemExit(f"error: --max_frames must be >= 1, got {args.max_frames}")
    splits = {b: getattr(args, b) for b in ("xsub", "xview") if getattr(args, b)}
    try:
        report = gendata(args.skeleton_path, args.label_path, args.out_folder, splits, args.part,
                         args.max_frames, args.overwrite)
    except (ValueError, OSError) as err:
        raise SystemExit(f"error: {err}") from None
    print("\n".join(report))


if __name__ == "__main__":
    main()
