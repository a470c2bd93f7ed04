"""Raw NTU RGB+D `.skeleton` files -> per-benchmark float32 arrays and label pickles (docs/method.md §1.1, §1.2, §6).

    python tools/ntu_gendata.py --data_path <dir of .skeleton> --out_folder <dir> [--dataset ntu120]

Every file is parsed once and written into each benchmark/part array it belongs to (feeder/prepare/database.py);
outputs appear under their final names only when the whole run succeeds. The converter lives here, below
the command line (tools/ntu_gendata.py) and the demo, which both import it. No torch here.
"""
import argparse
import os
import re
from collections import namedtuple

import numpy as np
from tqdm import tqdm

from feeder.prepare.database import MAX_FLOAT32, OVERWRITE_HELP, claim_database, write_database
from torchlight.io import atomic_path, read_text_lines

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# NTU 120 cross-subject training performers; those up to 40 are exactly the NTU 60 list.
TRAIN_PERFORMERS = frozenset((
    1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38, 45, 46, 47, 49, 50, 52,
    53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91, 92, 93, 94, 95, 97, 98,
    100, 103,
))
Clip = namedtuple("Clip", "setup camera performer replication action")
SPLITS = {  # benchmark -> is this clip in the training part
    "xsub": lambda clip: clip.performer in TRAIN_PERFORMERS,
    "xview": lambda clip: clip.camera in (2, 3),
    "xset": lambda clip: clip.setup % 2 == 0,
}
DATASETS = {  # name -> (number of actions, default benchmarks, missing-skeleton list)
    "ntu60": (60, ("xsub", "xview"), "resource/NTU_RGBD60_samples_with_missing_skeletons.txt"),
    "ntu120": (120, ("xsub", "xset"), "resource/NTU_RGBD120_samples_with_missing_skeletons.txt"),
}
# Clips of each official split after the missing-skeleton lists (the papers' counts; each pair sums to
# 56,578 = 56,880 - 302 for NTU 60 and 113,945 = 114,480 - 535 for NTU 120).
OFFICIAL_CLIPS = {
    ("ntu60", "xsub"): dict(train=40091, val=16487),
    ("ntu60", "xview"): dict(train=37646, val=18932),
    ("ntu120", "xsub"): dict(train=63026, val=50919),
    ("ntu120", "xset"): dict(train=54468, val=59477),
}
COUNT_TOLERANCE = 0.05  # a split this far from its official size is reported: files missing or extra
NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
JOINT_FIELDS = 12


def parse_name(name):
    """`SsssCcccPpppRrrrAaaa[.skeleton]` -> Clip of ints (docs/method.md §1.1)."""
    match = NAME.fullmatch(os.path.basename(name).removesuffix(".skeleton"))
    if match is None:
        raise ValueError(f"{name}: file name does not match SsssCcccPpppRrrrAaaa.skeleton")
    return Clip(*map(int, match.groups()))


def _check_benchmark(benchmark):
    if benchmark not in SPLITS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(SPLITS)}")


def is_training(name, benchmark):
    """True when clip `name` belongs to the training part of `benchmark` (docs/method.md §1.2)."""
    _check_benchmark(benchmark)
    return SPLITS[benchmark](parse_name(name))


class EmptySkeletonError(ValueError):
    """A `.skeleton` file with no frame holding a body: skipped and listed, never converted."""


EMPTY_LIST = "empty_files.txt"  # beside the arrays: the files skipped for having no frames


def _count(lines, i, path, what):
    """The non-negative integer on line index `i`, or a ValueError naming file and line."""
    if i >= len(lines):
        raise ValueError(f"{path}:{i + 1}: expected {what}, file ends")
    try:
        n = int(lines[i])
    except ValueError:
        raise ValueError(f"{path}:{i + 1}: bad {what} {lines[i].strip()!r}") from None
    if n < 0:
        raise ValueError(f"{path}:{i + 1}: negative {what} {n}")
    return n


def _bad_number(path, rows, fields):
    """ValueError for the first x/y/z token that is not a finite float32."""
    for k, tokens in zip(rows, fields):
        for token in tokens[:3]:
            try:
                ok = abs(float(token)) <= MAX_FLOAT32
            except ValueError:
                ok = False
            if not ok:
                return ValueError(f"{path}:{k + 1}: bad number {token!r}")
    return ValueError(f"{path}: bad number")


def _joint_blocks(lines, path, max_frames, num_joints, max_bodies):
    """Check the record counts of a whole file; (frame, body, first joint line, joints) of kept bodies."""
    blocks = []
    num_frames = _count(lines, 0, path, "frame count")
    i = 1
    for t in range(num_frames):
        num_bodies = _count(lines, i, path, "body count")
        i += 1
        for m in range(num_bodies):  # line i: 10 numbers of body info; i + 1: joint count
            if i >= len(lines):
                raise ValueError(f"{path}:{i + 1}: expected body info, file ends")
            n = _count(lines, i + 1, path, "joint count")
            if i + 2 + n > len(lines):
                raise ValueError(f"{path}:{i + 2}: expected {n} joint lines, file ends after "
                                 f"{len(lines) - i - 2}")
            if t < max_frames and m < max_bodies:
                blocks.append((t, m, i + 2, min(n, num_joints)))
            i += 2 + n
    if i < len(lines):
        raise ValueError(f"{path}:{i + 1}: unexpected content after the {num_frames} frames")
    return blocks


def read_skeleton(path, max_frames=300, num_joints=25, max_bodies=2):
    """x, y, z of the first bodies/joints/frames of one `.skeleton` file, float32 (3, T, V, M) (docs/method.md §1.1)."""
    lines = read_text_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    blocks = _joint_blocks(lines, path, max_frames, num_joints, max_bodies)
    if not blocks:  # never an all-zero clip: it would train as a real one
        raise EmptySkeletonError(f"{path}: no frames with a body")
    data = np.zeros((3, max_frames, num_joints, max_bodies), np.float32)
    frame, body, start, count = (np.array(column) for column in zip(*blocks))
    joint = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    rows = (np.repeat(start, count) + joint).tolist()
    fields = [lines[k].split() for k in rows]
    for k, tokens in zip(rows, fields):
        if len(tokens) != JOINT_FIELDS:
            raise ValueError(f"{path}:{k + 1}: expected {JOINT_FIELDS} numbers, got {len(tokens)}")
    try:
        xyz = np.array([tokens[:3] for tokens in fields], dtype=np.float64)
    except ValueError:
        raise _bad_number(path, rows, fields) from None
    if not (np.abs(xyz) <= MAX_FLOAT32).all():
        raise _bad_number(path, rows, fields)
    data[:, np.repeat(frame, count), joint, np.repeat(body, count)] = xyz.T
    return data


def select_samples(data_path, dataset, ignored_sample_path, bad):
    """Sorted `.skeleton` names of `dataset` not in the missing-skeleton list (docs/method.md §1.2).

    Badly named files raise, or are appended to `bad` as (name, message) when it is a list.
    """
    if not os.path.isdir(data_path):
        raise FileNotFoundError(f"--data_path {data_path!r} is not a directory")
    names = sorted(n for n in os.listdir(data_path) if n.endswith(".skeleton"))
    if not names:
        raise ValueError(f"no .skeleton files in {data_path}")
    ignored = set()
    if ignored_sample_path:
        with open(ignored_sample_path) as f:
            ignored = {line.strip().removesuffix(".skeleton") for line in f if line.strip()}
    num_actions = DATASETS[dataset][0]
    kept = []
    for name in names:
        try:
            clip = parse_name(name)
        except ValueError as err:
            if bad is None:
                raise
            bad.append((name, str(err)))
            continue
        if clip.action <= num_actions and name.removesuffix(".skeleton") not in ignored:
            kept.append(name)
    if not kept:
        raise ValueError(f"no {dataset} clips left in {data_path} after the missing-skeleton list "
                         f"{ignored_sample_path} and the action range A001-A{num_actions:03d}")
    return kept


def count_warnings(dataset, sizes):
    """One line for each split of `sizes` ({(benchmark, part): clips}) more than COUNT_TOLERANCE from its
    official size: a partial download or a wrong --dataset shows here, not in a lower accuracy."""
    lines = []
    for (benchmark, part), n in sizes.items():
        official = OFFICIAL_CLIPS.get((dataset, benchmark), {}).get(part)
        if official and abs(n - official) > COUNT_TOLERANCE * official:
            lines.append(f"warning: {benchmark}/{part} holds {n:,} clips, {abs(n - official) / official:.0%} off the "
                         f"{official:,} of the official {dataset} {benchmark} split (files missing or extra?)")
    return lines


def _read_clips(data_path, names, max_frames, num_joints, num_person, empty, bad):
    """Yield (name, array or None) for every file in `names`, None for a file left out of the database.

    Files with no frames go to `empty`; with `bad` a list, unreadable files go there instead of raising.
    """
    readable = 0
    for name in tqdm(names, desc="gendata", unit="file"):
        try:
            x = read_skeleton(os.path.join(data_path, name), max_frames, num_joints, num_person)
        except EmptySkeletonError:
            empty.append(name)
            x = None
        except ValueError as err:
            if bad is None:
                raise
            bad.append((name, str(err)))
            x = None  # left out of the database
        readable += x is not None
        yield name, x
    if not readable:  # raised inside the writer: nothing is written
        first = bad[0][1] if bad else f"{empty[0]} has no frames"
        raise ValueError(f"no readable clips in {data_path}; first bad file: {first}")


def gendata(data_path, out_folder, dataset="ntu60", benchmarks=None, ignored_sample_path=None,
            skip_bad=False, max_frames=300, num_joints=25, num_person=2, overwrite=False):
    """Write `<out>/<benchmark>/<part>_data.npy` and `<part>_label.pkl` for every benchmark (docs/method.md §1.2).

    `out_folder` is locked for the run and refused if it holds another run's arrays, unless `overwrite`.
    Returns the clips per (benchmark, part) and the (name, message) list of skipped bad files (always empty
    unless `skip_bad`).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    benchmarks = list(dict.fromkeys(benchmarks or DATASETS[dataset][1]))
    for benchmark in benchmarks:
        _check_benchmark(benchmark)
    if ignored_sample_path is None:
        ignored_sample_path = os.path.join(REPO, DATASETS[dataset][2])
    bad = [] if skip_bad else None
    names = select_samples(data_path, dataset, ignored_sample_path, bad)
    parts = {(b, p): {} for b in benchmarks for p in ("train", "val")}
    for name in names:
        for b in benchmarks:
            parts[b, "train" if is_training(name, b) else "val"][name] = parse_name(name).action - 1

    empty = []
    with claim_database(out_folder, overwrite):
        clips = _read_clips(data_path, names, max_frames, num_joints, num_person, empty, bad)
        sizes = write_database(out_folder, parts, clips, (3, max_frames, num_joints, num_person))
        if empty:
            with atomic_path(os.path.join(out_folder, EMPTY_LIST)) as tmp, open(tmp, "w") as f:
                f.write("\n".join(empty) + "\n")
            print(f"warning: skipped {len(empty)} files with no frames, listed in "
                  f"{os.path.join(out_folder, EMPTY_LIST)}")
    for (benchmark, part), n in sizes.items():
        print(f"{benchmark}/{part}: {n} clips")
    return sizes, bad or []


def parse_args(argv=None):
    """Command line of docs/method.md §6."""
    parser = argparse.ArgumentParser(description="NTU RGB+D .skeleton files -> arrays (docs/method.md §1.1-1.2)")
    parser.add_argument("--data_path", required=True, help="directory of .skeleton files")
    parser.add_argument("--out_folder", required=True)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="ntu60")
    parser.add_argument("--benchmark", nargs="+", choices=sorted(SPLITS), default=None,
                        help="default: xsub xview (ntu60), xsub xset (ntu120)")
    parser.add_argument("--ignored_sample_path", default=None,
                        help="missing-skeleton list (default: the resource/ copy; '' for none)")
    parser.add_argument("--skip_bad", action="store_true", help="skip unreadable files and list them")
    parser.add_argument("--max_frames", type=int, default=300)
    parser.add_argument("--num_person", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return parser.parse_args(argv)


def main(argv=None):
    """Entry point; bad input ends with one `error: ...` line instead of a traceback."""
    args = parse_args(argv)
    for flag in ("max_frames", "num_person"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"error: --{flag} must be >= 1, got {getattr(args, flag)}")
    try:
        sizes, bad = gendata(args.data_path, args.out_folder, args.dataset, args.benchmark,
                             args.ignored_sample_path, args.skip_bad, args.max_frames, 25, args.num_person,
                             args.overwrite)
    except (ValueError, OSError) as err:
        raise SystemExit(f"error: {err}") from None
    if bad:
        print(f"skipped {len(bad)} bad files:")
        for name, message in bad:
            print(f"  {name}: {message}")
    for line in count_warnings(args.dataset, sizes):
        print(line)

