"""The raw database every dataset converter writes (docs/method.md §1.2): per benchmark and part, a float32 array
`<part>_data.npy` (N, 3, T, V, M) and `<part>_label.pkl` (names, 0-based labels). No torch here."""
import contextlib
import os
import pickle

import numpy as np

from torchlight.io import atomic_path, claim_out_folder

MAX_FLOAT32 = float(np.finfo(np.float32).max)  # a raw coordinate beyond it (or NaN, inf) is a corrupt file
FILES = ("_data.npy", "_label.pkl")  # what write_database puts in each benchmark folder
OVERWRITE_HELP = ("replace the arrays an earlier run left in --out_folder, made with any settings (refused "
                  "without it); its files this run does not write stay")


def claim_database(out_folder, overwrite=False):
    """Lock `out_folder` for a converter's run (use as `with`), refusing it if it holds another run's arrays
    unless `overwrite` (docs/errors.md)."""
    return claim_out_folder(out_folder, FILES, overwrite)


def keep_rows(path, rows):
    """Rewrite the `.npy` at `path` keeping only `rows` (increasing), in chunks: it may not fit in memory."""
    src = np.load(path, mmap_mode="r")
    with atomic_path(path) as tmp:
        dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=(len(rows), *src.shape[1:]))
        for i in range(0, len(rows), 1024):
            dst[i:i + 1024] = src[rows[i:i + 1024]]
        dst.flush()
        del dst
    del src


def write_database(out_folder, parts, clips, shape):
    """Write `<out>/<benchmark>/<part>_data.npy` float32 (N, *shape) and `<part>_label.pkl` (docs/method.md §1.2).

    `parts` maps (benchmark, part) to {clip name: 0-based label}; `clips` yields (name, array) once for
    every named clip, in any order, or (name, None) for a clip left out (an unreadable file). Rows are
    sorted by name; all outputs keep a temporary name until every one is complete. Returns the number
    of clips written per (benchmark, part). The caller holds `claim_database(out_folder, ...)`.
    """
    names = {key: sorted(members) for key, members in parts.items()}
    rows = {}  # clip name -> [(key, row)]
    for key, members in names.items():
        for row, name in enumerate(members):
            rows.setdefault(name, []).append((key, row))
    with contextlib.ExitStack() as stack:
        paths = {key: os.path.join(out_folder, *key) for key in parts}
        tmps = {key: stack.enter_context(atomic_path(paths[key] + "_data.npy")) for key in parts}
        arrays = {key: np.lib.format.open_memmap(tmps[key], mode="w+", dtype=np.float32,
                                                 shape=(len(names[key]), *shape)) for key in parts}
        written, left_out = set(), set()
        for name, x in clips:
            if x is None:
                left_out.add(name)
                continue
            for key, row in rows[name]:
                arrays[key][row] = x
            written.add(name)
        if written | left_out != set(rows):
            raise RuntimeError(f"clips named but never produced: {sorted(set(rows) - written - left_out)[:5]}")
        kept = {key: [n for n in members if n not in left_out] for key, members in names.items()}
        for key in parts:
            arrays.pop(key).flush()  # the memmap closes with its last reference
            if len(kept[key]) < len(names[key]):
                keep_rows(tmps[key], [row for row, n in enumerate(names[key]) if n not in left_out])
            with open(stack.enter_context(atomic_path(paths[key] + "_label.pkl")), "wb") as f:
                pickle.dump((kept[key], [parts[key][n] for n in kept[key]]), f)
    return {key: len(members) for key, members in kept.items()}
